#!/usr/bin/env python3
"""How well a model predicts the clean target at each noise level, on the cells the edit changes.

An instructional edit is (almost) determined by the source image and the instruction, so a model
that has learnt it predicts the edited latent as well from pure noise (t = 999) as from a lightly
noised target. A model that has not learnt which object the words pick out predicts it only once
the noisy latent already shows it (t <= 700 or so); sampling then commits to a guess in its first
steps. This prints, per timestep, the error of the predicted clean latent over the changed cells
relative to the error of "no edit" (the source latent) there, and the error with another sample's
instruction relative to the sample's own (1.0: the instruction is ignored). The first row,
"999 pure", takes the noise alone as input, as sampling's first step does: on SD's schedule a
training sample at t = 999 still holds sqrt(acp) = 7% of the target, which a model can lean on.
A model whose scheduler config has `rescale_betas_zero_snr` is probed on that schedule.

    instructdiffusion data synth --out /tmp/probe --count 240 --first-seed 1099516627776
    tools/timestep_probe.py models/builtin /tmp/probe [--tasks keypoints,referring_segmentation]

Needs PyTorch, diffusers and transformers (e.g. /work/ref/venv); loads the model with diffusers
itself. The default seeds above are held out from training (>= 2^40).
"""
import argparse
import json
import os

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizerFast

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("model", help="a diffusers folder (e.g. models/builtin)")
p.add_argument("data", help="a dataset folder from `instructdiffusion data synth`")
p.add_argument("--tasks", default="", help="comma-separated task families (default: each apart)")
p.add_argument("--samples", type=int, default=48, help="samples per family")
args = p.parse_args()
torch.set_num_threads(1)
logging = __import__("transformers").logging
logging.set_verbosity_error()

m = args.model
unet = UNet2DConditionModel.from_pretrained(f"{m}/unet", torch_dtype=torch.float32).eval()
vae = AutoencoderKL.from_pretrained(f"{m}/vae", torch_dtype=torch.float32).eval()
te = CLIPTextModel.from_pretrained(f"{m}/text_encoder", torch_dtype=torch.float32).eval()
# A trainer's run folder holds tokenizer.json alone; the built-in model's folder has the rest.
tok_dir = f"{m}/tokenizer"
if not os.path.exists(f"{tok_dir}/vocab.json"):
    tok_dir = os.path.join(os.path.dirname(__file__), "..", "models", "builtin", "tokenizer")
tok = CLIPTokenizerFast.from_pretrained(tok_dir)
sched = json.load(open(f"{m}/scheduler/scheduler_config.json"))
v_pred = sched.get("prediction_type", "epsilon") == "v_prediction"
betas = torch.linspace(sched["beta_start"] ** 0.5, sched["beta_end"] ** 0.5, sched["num_train_timesteps"]) ** 2
acp = torch.cumprod(1 - betas, 0)
if sched.get("rescale_betas_zero_snr", False):
    # Zero terminal SNR (diffusers' rescale_zero_terminal_snr), with the Euler schedulers'
    # stand-in for the last, zero value.
    root = acp.sqrt()
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    acp = root ** 2
    acp[-1] = 2.0 ** -24

rows = [json.loads(l) for l in open(f"{args.data}/metadata.jsonl")]
families = args.tasks.split(",") if args.tasks else sorted({r["task"] for r in rows})


def image(path):
    a = np.asarray(Image.open(f"{args.data}/{path}").convert("RGB"), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(a).permute(2, 0, 1)


@torch.no_grad()
def probe(family):
    rs = [r for r in rows if r["task"] == family][: args.samples]
    if len(rs) < 2:
        return
    src = torch.stack([image(r["input_image_file_name"]) for r in rs])
    tgt = torch.stack([image(r["edited_image_file_name"]) for r in rs])
    sf = vae.config.scaling_factor
    zs = vae.encode(src).latent_dist.mean
    zt = vae.encode(tgt).latent_dist.mean * sf
    f = src.shape[-1] // zs.shape[-1]
    changed = ((tgt - src).abs().amax(1, keepdim=True) > 0.08).float()
    changed = torch.nn.functional.max_pool2d(changed, f)
    ids = tok([r["edit_prompt"] for r in rs], padding="max_length",
              max_length=te.config.max_position_embeddings, truncation=True, return_tensors="pt").input_ids
    own = te(ids)[0]
    other = torch.roll(own, 1, 0)
    eps = torch.randn(zt.shape, generator=torch.Generator().manual_seed(0))
    err = lambda x: ((x - zt) ** 2 * changed).sum() / changed.sum().clamp(min=1)
    none = err(zs * sf)
    # The change painted where the target keeps the source, as a share of the edit's own change
    # (summed over cells, not averaged): a model that hedges between the candidates the words
    # might name paints several, and this grows while "own / no-edit" can still look good.
    kept = 1 - changed
    edit_energy = ((zs * sf - zt) ** 2 * changed).sum()
    spill = lambda x: ((x - zt) ** 2 * kept).sum() / edit_energy
    print(f"{family}: {len(rs)} samples")
    print("         t      SNR  own / no-edit  other / own  spill")
    # "999 pure": what sampling's first step sees, noise alone (training's t = 999 still holds
    # sqrt(acp) = 0.07 of the target; a model that leans on that leak fails here).
    for t in ["999 pure", 999, 950, 900, 800, 700, 500, 300, 100]:
        pure = t == "999 pure"
        t = 999 if pure else t
        a, b = acp[t].sqrt(), (1 - acp[t]).sqrt()
        noisy = b * eps if pure else a * zt + b * eps
        inp = torch.cat([noisy, zs], 1)
        tt = torch.full((len(rs),), t)

        def x0(text):
            out = unet(inp, tt, encoder_hidden_states=text).sample
            return a * noisy - b * out if v_pred else (noisy - b * out) / a

        x_own = x0(own)
        e_own, e_other = err(x_own), err(x0(other))
        snr = acp[t] / (1 - acp[t])
        label = "999 pure" if pure else f"{t:8d}"
        print(f"  {label}  {snr:7.4f}  {e_own / none:13.3f}  {e_other / e_own:11.2f}  {spill(x_own):5.2f}")


for fam in families:
    probe(fam)
