#!/usr/bin/env python3
"""Stores a model folder's CLIP token embedding in float8 (E4M3) to fit the 25 MB budget.

    tools/pack_builtin.py MODEL_DIR

The token embedding (49408 x width, a third of the built-in text encoder) is the largest tensor
that only looks values up: each row is one token's vector. float8 E4M3 keeps 3 mantissa bits; the
loader widens it to the compute dtype (`load/store.rs`, test `float8_tensors_load_widened`), and
so does transformers' `from_pretrained`. Measured on the 32-96-192 UNet's model (2026-11-28):
the same eval figures as the f16 copy to the third decimal. Everything else stays f16.
The file is rewritten through a temporary file and a rename. Needs torch and safetensors.
"""
import os
import sys

import torch
from safetensors.torch import load_file, save_file

KEY = "text_model.embeddings.token_embedding.weight"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    path = os.path.join(sys.argv[1], "text_encoder", "model.safetensors")
    tensors = load_file(path)
    if KEY not in tensors:
        sys.exit(f"{path} has no {KEY}")
    before = os.path.getsize(path)
    tensors[KEY] = tensors[KEY].to(torch.float8_e4m3fn)
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)
    print(f"{path}: {before / 1e6:.2f} -> {os.path.getsize(path) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
