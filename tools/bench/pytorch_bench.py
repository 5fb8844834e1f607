#!/usr/bin/env python3
"""The PyTorch + diffusers side of `instructdiffusion bench`: the same stages on random weights of
the same architecture, timed the same way (one warm-up, then REPEATS runs, median/min/max).
With `--ours report.json` (from `instructdiffusion bench --json`) it prints ours / PyTorch per row.

    venv/bin/python tools/bench/pytorch_bench.py --arch sd15 --resolution 256 --ours ours.json
    python3 tools/bench/pytorch_bench.py --device cuda --dtype f16 --resolution 512 --ours ours.json
    python3 tools/bench/pytorch_bench.py --dtype bf16 --ours ours-bf16.json   # `bench --dtype bf16 --json ours-bf16.json`
    python3 tools/bench/pytorch_bench.py --load DIR --ours load.json   # `bench --model DIR --load-only --json load.json`

PyTorch is the anchor of the comparison, not a dependency of the product or of CI.
"""
import argparse
import json
import pathlib
import statistics
import sys
import time

import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "reference"))
import kdiffusion_ref as K  # noqa: E402
import make_fixtures as F  # noqa: E402

from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

TINY = (
    dict(sample_size=32, in_channels=16, out_channels=8, block_out_channels=(32, 64, 128), layers_per_block=1,
         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
         up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
         cross_attention_dim=64, attention_head_dim=4, norm_num_groups=8),
    dict(in_channels=3, out_channels=3, block_out_channels=(32, 64, 64), layers_per_block=1,
         down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
         latent_channels=8, norm_num_groups=8, scaling_factor=1.0),
    dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
         max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407),
)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(name, repeats, fn):
    fn()
    sync()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        runs.append(time.perf_counter() - t0)
    return {"name": name, "runs_s": runs, "median_s": statistics.median(runs), "min_s": min(runs), "max_s": max(runs)}


@torch.enable_grad()
def train_step(tok, latent, batch, repeats):
    """`bench`'s training row: the tiny UNet and text encoder, forward, backward, AdamW with
    gradient clipping and an EMA of the weights, on random latents (the 4x VAE: 128 px -> 32)."""
    unet = UNet2DConditionModel(**TINY[0]).train()
    clip = CLIPTextModel(CLIPTextConfig(**TINY[2])).train()
    params = list(unet.parameters()) + list(clip.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    ema = [p.detach().clone() for p in params]
    prompts = ["paint the red circle blue", "remove the star", "mark the left knee"]
    ids = torch.cat([F.tokenize(tok, prompts[i % len(prompts)]) for i in range(batch)])
    c = TINY[0]["out_channels"]
    noisy, source, target = (torch.randn(batch, c, latent, latent) for _ in range(3))
    t = torch.tensor([i * 997 % 1000 for i in range(batch)], dtype=torch.float32)

    def step():
        text = clip(ids).last_hidden_state
        pred = unet(torch.cat([noisy, source], 1), t, encoder_hidden_states=text).sample
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1 - 0.9999)

    return timed(f"train step, batch {batch} (unet + text encoder)", repeats, step)


class Cast:
    """The UNet in its own dtype, its output back in float32 for the sampler's arithmetic."""

    def __init__(self, inner, dtype):
        self.inner, self.dtype = inner, dtype

    def __call__(self, x, t, cond):
        cast = {k: [v[0].to(self.dtype)] for k, v in cond.items()}
        return self.inner(x.to(self.dtype), t, cast).float()


def load(folder, ours, repeats):
    """Loading a diffusers folder's UNet, VAE and text encoder as diffusers does (its defaults:
    `low_cpu_mem_usage`, safetensors memory-mapped), each run in a fresh process: seconds and
    the process's peak memory. With `ours` (`bench --model DIR --load-only --json`), the ratio."""
    import subprocess

    code = f"""
import resource, time
t0 = time.perf_counter()
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel
t1 = time.perf_counter()
UNet2DConditionModel.from_pretrained({str(folder)!r}, subfolder="unet")
AutoencoderKL.from_pretrained({str(folder)!r}, subfolder="vae")
CLIPTextModel.from_pretrained({str(folder)!r}, subfolder="text_encoder")
print(time.perf_counter() - t1, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
"""
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        runs.append(tuple(float(v) for v in out.stdout.split()[-2:]))
    times = sorted(t for t, _ in runs)
    peak = max(m for _, m in runs)
    print(f"pytorch {torch.__version__}, diffusers load of {folder}: {len(runs)} fresh processes")
    print(f"load s  median {statistics.median(times):.2f} (min {times[0]:.2f}, max {times[-1]:.2f}); peak memory {peak:.2f} GiB")
    if ours:
        o = json.loads(ours.read_text())
        mine = o["peak_memory_bytes"] / 2**30
        print(f"ours    {o['load_s']:.2f} s, peak {mine:.2f} GiB: load ours/pt {o['load_s'] / statistics.median(times):.2f}, "
              f"peak ours/pt {mine / peak:.2f}")


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=["sd15", "tiny"], default="sd15")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--edit-steps", type=int, default=4)
    ap.add_argument("--ours", type=pathlib.Path)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32",
                    help="weights and activations (f16 for GPUs; bf16 runs oneDNN's bf16 kernels on CPUs with AVX512-BF16)")
    ap.add_argument("--load", type=pathlib.Path, help="instead: time loading this diffusers folder (see load())")
    a = ap.parse_args()
    if a.load:
        return load(a.load, a.ours, a.repeats)
    dev = torch.device(a.device)
    dt = {"f16": torch.float16, "bf16": torch.bfloat16}.get(a.dtype, torch.float32)
    cfgs = (F.SD15_UNET, F.SD15_VAE, F.SD15_CLIP) if a.arch == "sd15" else TINY
    unet = UNet2DConditionModel(**cfgs[0]).eval().to(dev, dt)
    vae = AutoencoderKL(**cfgs[1]).eval().to(dev, dt)
    clip = CLIPTextModel(CLIPTextConfig(**cfgs[2])).eval().to(dev, dt)
    tok = CLIPTokenizer.from_pretrained(F.SHARED / "tokenizers/clip-vit-large-patch14")
    ids = lambda text: F.tokenize(tok, text).to(dev)  # noqa: E731
    prompt = "turn the cat into a tiger"
    n = a.resolution
    px = (torch.rand((1, 3, n, n)) * 2 - 1).to(dev, dt)
    rows = []
    rows.append(timed("text encode (2 prompts)", a.repeats, lambda: (clip(ids(prompt)), clip(ids("")))))
    rows.append(timed("vae encode", a.repeats, lambda: vae.encode(px).latent_dist.mode()))
    c_text = clip(ids(prompt)).last_hidden_state
    u_text = clip(ids("")).last_hidden_state
    mean = vae.encode(px).latent_dist.mode()
    # The schedule's sigmas are float32 buffers; the UNet sees its own dtype (as diffusers casts).
    den = K.DiscreteEpsDDPMDenoiser(Cast(F.CompVisLike(unet), dt), F.alphas_cumprod(), quantize=False).to(dev)
    wrap = F.CFGInstructDiffusion(den)
    cond = {"c_crossattn": [c_text], "c_concat": [mean]}
    uncond = {"c_crossattn": [u_text], "c_concat": [torch.zeros_like(mean)]}
    x = torch.randn(mean.shape, device=dev, dtype=dt)
    extra = dict(cond=cond, uncond=uncond, text_cfg_scale=5.0, image_cfg_scale=1.25)
    sigma = torch.tensor([1.5], device=dev)
    rows.append(timed("unet step, 3-way guidance (batch 3)", a.repeats, lambda: wrap(x, sigma, **extra)))
    scale = vae.config.scaling_factor
    rows.append(timed("vae decode", a.repeats, lambda: vae.decode(x / scale).sample))

    def whole_edit():
        c = clip(ids(prompt)).last_hidden_state
        u = clip(ids("")).last_hidden_state
        m = vae.encode(px).latent_dist.mode()
        sig = den.get_sigmas(a.edit_steps)
        z = K.sample_euler(wrap, torch.randn(m.shape, device=dev) * sig[0], sig, extra_args=dict(
            cond={"c_crossattn": [c], "c_concat": [m]}, uncond={"c_crossattn": [u], "c_concat": [torch.zeros_like(m)]},
            text_cfg_scale=5.0, image_cfg_scale=1.25))
        vae.decode((z / scale).to(dt))

    rows.append(timed(f"whole edit, {a.edit_steps} euler steps", a.repeats, whole_edit))
    if a.arch == "tiny":
        rows.append(train_step(tok, n // 4, 8, a.repeats))
    import resource  # Linux: ru_maxrss in KiB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    where = f"{torch.get_num_threads()} threads, {a.dtype}"
    if dev.type == "cuda":
        gpu = torch.cuda.max_memory_allocated() / 2**30
        where = f"{torch.cuda.get_device_name()}, {a.dtype}, peak GPU memory allocated {gpu:.2f} GiB"
    print(f"pytorch {torch.__version__}, {where}, {a.arch}, {n}x{n} px, peak memory {peak:.2f} GiB")
    ours = {r["name"]: r for r in json.loads(a.ours.read_text())["rows"]} if a.ours else {}
    print(f"{'stage':<40} {'pytorch s':>10} {'ours s':>10} {'ours/pt':>8}")
    for r in rows:
        o = ours.get(r["name"])
        ratio = f"{o['median_s'] / r['median_s']:8.2f}" if o else ""
        ours_s = f"{o['median_s']:10.3f}" if o else ""
        print(f"{r['name']:<40} {r['median_s']:10.3f} {ours_s:>10} {ratio}")


if __name__ == "__main__":
    main()
