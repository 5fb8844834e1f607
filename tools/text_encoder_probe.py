#!/usr/bin/env python3
"""How far a text encoder's output moves when one word of an instruction changes.

For an instruction and variants of it that swap one word (the named object's colour or kind,
the overlay's colour, a position word, the task), prints the change of the final hidden state
at each token (causal attention: only the swapped token and those after it can move), and the
cosine similarity of the end-of-text and a padding state with the original's, next to the
token embeddings' norms and distances. A UNet reads the words through cross-attention on these
states: a swap that barely moves them is one the UNet can barely tell apart.

    tools/text_encoder_probe.py models/builtin

Needs PyTorch and transformers (e.g. /work/ref/venv).
"""
import argparse
import os

import torch
import torch.nn.functional as F
from transformers import CLIPTextModel, CLIPTokenizerFast
from transformers import logging

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("model", help="a diffusers folder (e.g. models/builtin)")
p.add_argument("--instruction", default="apply a blue semi-transparent mask to the red circle")
args = p.parse_args()
logging.set_verbosity_error()

te = CLIPTextModel.from_pretrained(f"{args.model}/text_encoder").eval()
tok_dir = f"{args.model}/tokenizer"
if not os.path.exists(f"{tok_dir}/vocab.json"):
    tok_dir = os.path.join(os.path.dirname(__file__), "..", "models", "builtin", "tokenizer")
tok = CLIPTokenizerFast.from_pretrained(tok_dir)
length = te.config.max_position_embeddings
base = args.instruction
swaps = {
    "object colour": ("red", "green"),
    "object kind": ("circle", "star"),
    "overlay colour": ("blue", "yellow"),
    "position word": ("red", "leftmost"),
}


@torch.no_grad()
def states(text):
    ids = tok([text], padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return te(ids.input_ids)[0][0]


s0 = states(base)
tokens = tok.convert_ids_to_tokens(tok(base).input_ids)
n = len(tokens)
print(f"'{base}': {n} tokens, final states' mean norm {s0[:n].norm(dim=-1).mean():.2f}")
print("  " + " ".join(t.replace("</w>", "") for t in tokens))
for name, (a, b) in swaps.items():
    if f" {a}" not in f" {base}":
        continue
    s = states(f" {base} ".replace(f" {a} ", f" {b} ").strip())
    moved = (s - s0).norm(dim=-1)
    eos, pad = F.cosine_similarity(s[n - 1], s0[n - 1], dim=0), F.cosine_similarity(s[-1], s0[-1], dim=0)
    print(f"{name:15s} {a} -> {b}: moved per token " + " ".join(f"{x:.1f}" for x in moved[:n]))
    print(f"{'':15s} cosine with the original at end-of-text {eos:.2f}, at the last padding {pad:.2f}")
emb = te.get_input_embeddings().weight


def row(w):
    return emb[tok(w, add_special_tokens=False).input_ids[0]]


positions = next(v for k, v in te.state_dict().items() if k.endswith("position_embedding.weight"))
print(f"token embeddings: norm of 'red' {row('red').norm():.2f}, of an untrained word ('zebra') "
      f"{row('zebra').norm():.2f}; position embeddings' mean norm {positions.norm(dim=-1).mean():.2f}")
for a, b in [("red", "green"), ("circle", "star"), ("circle", "heart"), ("leftmost", "rightmost")]:
    print(f"  '{a}' vs '{b}': distance {(row(a) - row(b)).norm():.2f}")
