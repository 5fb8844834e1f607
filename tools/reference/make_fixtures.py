#!/usr/bin/env python3
"""Writes the parity fixtures: random-weight models in the real layouts and golden outputs of
the reference algorithm (diffusers networks + the official k-diffusion sampling + the
InstructDiffusion / InstructPix2Pix guidance), for `tests/parity.rs` and `tests/load.rs`.

Run by hand, never in CI (PyTorch from PyPI is ~3 GB):

    python3 -m venv venv && venv/bin/pip install torch diffusers transformers safetensors pillow
    venv/bin/python tools/reference/make_fixtures.py            # tests/fixtures (small, committed)
    venv/bin/python tools/reference/make_fixtures.py --full DIR # SD 1.5-size, for the ignored test
    venv/bin/python tools/reference/make_fixtures.py --only-cross # just tests/fixtures/only-cross

Written with torch 2.15, diffusers 0.42.1, transformers 5.24.

Every parameter is perturbed away from its initial value (norm weights are no longer 1, biases
no longer 0), so a dropped or mis-mapped tensor cannot match. Weights are rounded to float16
and stored that way (the fixtures stay small); the goldens are computed in float32 from the
rounded weights, so both sides see identical numbers.
"""
import argparse
import json
import pathlib
import shutil
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import kdiffusion_ref as K  # noqa: E402

ROOT = HERE.parent.parent
SHARED = ROOT.parent / "shared"

from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

PROMPT = "turn the cat into a tiger"
STEPS = 10
SCALES = {"instructdiffusion": (5.0, 1.25), "pix2pix": (7.5, 1.5)}
SAMPLERS = {
    "euler": K.sample_euler,
    "euler-a": K.sample_euler_ancestral,
    "heun": K.sample_heun,
    "dpmpp-2m": K.sample_dpmpp_2m,
}

TINY_UNET = dict(
    sample_size=8, in_channels=8, out_channels=4, block_out_channels=(16, 32, 32),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=8, attention_head_dim=2, norm_num_groups=8,
)
TINY_VAE = dict(
    in_channels=3, out_channels=3, block_out_channels=(8, 16, 16, 16), layers_per_block=2,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    latent_channels=4, norm_num_groups=4, sample_size=64,
)
TINY_CLIP = dict(
    vocab_size=49408, hidden_size=8, intermediate_size=37, num_hidden_layers=2,
    num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
    bos_token_id=49406, eos_token_id=49407,
)
SD15_UNET = dict(
    sample_size=64, in_channels=8, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    latent_channels=4, sample_size=512,
)
SD15_CLIP = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
    bos_token_id=49406, eos_token_id=49407,
)


def perturb_and_round(model, gen, scale=0.05):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
            p.copy_(p.half().float())
    return model.eval()


# ---------------------------------------------------------------- diffusers -> LDM key maps
# Written from the original conversion script's tables (diffusers
# scripts/convert_diffusers_to_original_stable_diffusion.py), then checked below against
# diffusers' own LDM -> diffusers converter, so the LDM files are what real checkpoints hold.

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
          ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
          ("conv_shortcut", "skip_connection")]


def unet_to_ldm(sd, cfg):
    lpb, n = cfg["layers_per_block"], len(cfg["block_out_channels"])
    per = lpb + 1
    prefixes = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
                ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2.")]
    for i in range(n):
        for j in range(lpb):
            prefixes.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{per * i + j + 1}.0."))
            prefixes.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{per * i + j + 1}.1."))
        for j in range(per):
            prefixes.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{per * i + j}.0."))
            prefixes.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{per * i + j}.1."))
        if i < n - 1:
            prefixes.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{per * (i + 1)}.0.op."))
            has_attn = cfg["up_block_types"][i].startswith("CrossAttn")
            prefixes.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{per * i + lpb}.{2 if has_attn else 1}."))
    prefixes.append(("mid_block.attentions.0.", "middle_block.1."))
    for j in range(2):
        prefixes.append((f"mid_block.resnets.{j}.", f"middle_block.{2 * j}."))
    out = {}
    for k, v in sd.items():
        new = None
        for d, l in prefixes:
            if k.startswith(d):
                rest = k[len(d):]
                if ".resnets." in d:
                    for a, b in RESNET:
                        if rest.startswith(a + "."):
                            rest = b + rest[len(a):]
                new = l + rest
                break
        assert new is not None, k
        out["model.diffusion_model." + new] = v
    return out


def vae_to_ldm(sd, cfg):
    n, lpb = len(cfg["block_out_channels"]), cfg["layers_per_block"]
    prefixes = [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for i in range(n):
        for j in range(lpb):
            prefixes.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
        if i < n - 1:
            prefixes.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
            prefixes.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
        for j in range(lpb + 1):
            prefixes.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}."))
    for side in ("encoder", "decoder"):
        for j in range(2):
            prefixes.append((f"{side}.mid_block.resnets.{j}.", f"{side}.mid.block_{j + 1}."))
        for d, l in [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]:
            prefixes.append((f"{side}.mid_block.attentions.0.{d}", f"{side}.mid.attn_1.{l}"))
    out = {}
    for k, v in sd.items():
        new = k
        for d, l in prefixes:
            if k.startswith(d):
                new = l + k[len(d):]
                break
        new = new.replace("conv_shortcut.", "nin_shortcut.")
        if ".mid.attn_1." in new and new.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]  # LDM stores these projections as 1x1 convolutions
        out["first_stage_model." + new] = v
    return out


def check_roundtrip(ldm, unet_sd, unet_cfg, vae_sd, vae_cfg):
    back = convert_ldm_unet_checkpoint(ldm, unet_cfg)
    assert set(back) == set(unet_sd), set(back) ^ set(unet_sd)
    assert all(torch.equal(back[k], unet_sd[k]) for k in back)
    back = convert_ldm_vae_checkpoint({k: v for k, v in ldm.items() if k.startswith("first_stage_model.")}, vae_cfg)
    assert set(back) == set(vae_sd), set(back) ^ set(vae_sd)
    for k in back:
        assert torch.equal(back[k].reshape(vae_sd[k].shape), vae_sd[k]), k


# ---------------------------------------------------------------- the official algorithm

# Its first attention block (and the mirrored last one) attends to the text twice.
ONLY_CROSS_UNET = dict(TINY_UNET, only_cross_attention=[True, False, False])


def build(unet_cfg, vae_cfg, clip_cfg, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    unet = perturb_and_round(UNet2DConditionModel(**unet_cfg), gen)
    vae = perturb_and_round(AutoencoderKL(**vae_cfg), gen)
    clip = perturb_and_round(CLIPTextModel(CLIPTextConfig(**clip_cfg)), gen)
    return unet, vae, clip


def alphas_cumprod():
    # LDM `make_beta_schedule("linear", 1000, 0.00085, 0.012)`, registered as a float32 buffer.
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.tensor(np.cumprod(1.0 - betas.numpy()), dtype=torch.float32)


class CompVisLike:
    """LDM's `apply_model` for the hybrid conditioning: `cat([x, c_concat], 1)` into the UNet."""

    def __init__(self, unet):
        self.unet = unet

    def __call__(self, x, t, cond):
        xc = torch.cat([x, cond["c_concat"][0]], dim=1)
        return self.unet(xc, t, encoder_hidden_states=cond["c_crossattn"][0]).sample


class CFGInstructDiffusion(torch.nn.Module):
    """InstructDiffusion `edit_cli.py` `CFGDenoiser` (einops.repeat written as Tensor.repeat)."""

    def __init__(self, model):
        super().__init__()
        self.inner_model = model

    def forward(self, z, sigma, cond, uncond, text_cfg_scale, image_cfg_scale):
        cfg_z = z.repeat(3, 1, 1, 1)
        cfg_sigma = sigma.repeat(3)
        cfg_cond = {
            "c_crossattn": [torch.cat([cond["c_crossattn"][0], uncond["c_crossattn"][0], cond["c_crossattn"][0]])],
            "c_concat": [torch.cat([cond["c_concat"][0], cond["c_concat"][0], uncond["c_concat"][0]])],
        }
        out_cond, out_img_cond, out_txt_cond = self.inner_model(cfg_z, cfg_sigma, cond=cfg_cond).chunk(3)
        return 0.5 * (out_img_cond + out_txt_cond) + text_cfg_scale * (out_cond - out_img_cond) + image_cfg_scale * (out_cond - out_txt_cond)


class CFGPix2Pix(torch.nn.Module):
    """InstructPix2Pix `edit_cli.py` `CFGDenoiser`."""

    def __init__(self, model):
        super().__init__()
        self.inner_model = model

    def forward(self, z, sigma, cond, uncond, text_cfg_scale, image_cfg_scale):
        cfg_z = z.repeat(3, 1, 1, 1)
        cfg_sigma = sigma.repeat(3)
        cfg_cond = {
            "c_crossattn": [torch.cat([cond["c_crossattn"][0], uncond["c_crossattn"][0], uncond["c_crossattn"][0]])],
            "c_concat": [torch.cat([cond["c_concat"][0], cond["c_concat"][0], uncond["c_concat"][0]])],
        }
        out_cond, out_img_cond, out_uncond = self.inner_model(cfg_z, cfg_sigma, cond=cfg_cond).chunk(3)
        return out_uncond + text_cfg_scale * (out_cond - out_img_cond) + image_cfg_scale * (out_img_cond - out_uncond)


def tokenize(tok, text):
    return tok(text, truncation=True, max_length=77, padding="max_length", return_tensors="pt").input_ids


@torch.no_grad()
def goldens(unet, vae, clip, tok, image, gen, steps, samplers):
    g = {}
    ids_p, ids_e = tokenize(tok, PROMPT), tokenize(tok, "")
    g["clip.ids.prompt"], g["clip.ids.empty"] = ids_p, ids_e
    c_text = clip(ids_p).last_hidden_state
    u_text = clip(ids_e).last_hidden_state
    g["clip.out.prompt"], g["clip.out.empty"] = c_text, u_text

    px = torch.tensor(np.array(image), dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1
    g["vae.input"] = px
    mean = vae.encode(px).latent_dist.mode()
    g["vae.mean"] = mean
    lat = torch.randn(mean.shape, generator=gen)
    g["vae.decode.latent"] = lat
    g["vae.decode.out"] = vae.decode(lat).sample

    b, (h, w) = 3, mean.shape[2:]
    sample = torch.randn((b, 8, h, w), generator=gen)
    t = torch.tensor([999.0, 500.5, 1.25])
    ctx = torch.randn((b, 77, c_text.shape[-1]), generator=gen)
    g["unet.sample"], g["unet.t"], g["unet.context"] = sample, t, ctx
    g["unet.out"] = unet(sample, t, encoder_hidden_states=ctx).sample

    den = K.DiscreteEpsDDPMDenoiser(CompVisLike(unet), alphas_cumprod(), quantize=False)
    sigmas = den.get_sigmas(steps)
    g[f"sigmas.{steps}"] = sigmas
    noise = torch.randn(mean.shape, generator=gen)
    anc = torch.randn((steps - 1,) + tuple(mean.shape), generator=gen)
    g["edit.noise"], g["edit.ancestral_noise"] = noise, anc
    cond = {"c_crossattn": [c_text], "c_concat": [mean]}
    uncond = {"c_crossattn": [u_text], "c_concat": [torch.zeros_like(mean)]}
    for gname, cls in [("instructdiffusion", CFGInstructDiffusion), ("pix2pix", CFGPix2Pix)]:
        sT, sI = SCALES[gname]
        wrap = cls(den)
        for sname in samplers:
            fn = SAMPLERS[sname]
            extra = dict(cond=cond, uncond=uncond, text_cfg_scale=sT, image_cfg_scale=sI)
            z = noise * sigmas[0]
            if sname == "euler-a":
                it = iter(anc)
                z = fn(wrap, z, sigmas, extra_args=extra, noise_sampler=lambda s, sn: next(it))
            else:
                z = fn(wrap, z, sigmas, extra_args=extra)
            g[f"edit.{sname}.{gname}.latent"] = z
            x = vae.decode(z / 0.18215).sample
            x = torch.clamp((x + 1.0) / 2.0, min=0.0, max=1.0)
            g[f"edit.{sname}.{gname}.image"] = (255.0 * x[0].permute(1, 2, 0)).type(torch.uint8)
    return {k: v.contiguous() for k, v in g.items()}


# ---------------------------------------------------------------- writers

def write_diffusers(dir, unet, vae, clip, pipeline_class):
    dir.mkdir(parents=True, exist_ok=True)
    for sub, m in [("unet", unet), ("vae", vae), ("text_encoder", clip)]:
        shutil.rmtree(dir / sub, ignore_errors=True)
        m.half().save_pretrained(dir / sub, safe_serialization=True)
        m.float()
    (dir / "scheduler").mkdir(exist_ok=True)
    (dir / "scheduler/scheduler_config.json").write_text(json.dumps({
        "_class_name": "EulerAncestralDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon"}, indent=2))
    (dir / "model_index.json").write_text(json.dumps({
        "_class_name": pipeline_class, "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"]}, indent=2))


def ldm_state_dict(unet, vae, clip, unet_cfg, vae_cfg):
    unet_sd = {k: v.half() for k, v in unet.state_dict().items()}
    vae_sd = {k: v.half() for k, v in vae.state_dict().items()}
    ldm = unet_to_ldm(unet_sd, unet_cfg)
    ldm.update(vae_to_ldm(vae_sd, vae_cfg))
    check_roundtrip(ldm, unet_sd, unet_cfg, vae_sd, vae_cfg)
    for k, v in clip.state_dict().items():
        if "position_ids" in k:
            continue
        k = k if k.startswith("text_model.") else "text_model." + k
        ldm["cond_stage_model.transformer." + k] = v.half()
    return ldm


def test_image(size):
    img = Image.open(SHARED / "photos/chelsea.png").convert("RGB")
    w, h = img.size
    s = min(w, h)
    return img.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2)).resize((size, size), Image.LANCZOS)


def tiny(out):
    out.mkdir(parents=True, exist_ok=True)
    unet, vae, clip = build(TINY_UNET, TINY_VAE, TINY_CLIP, seed=0)
    tok = CLIPTokenizer.from_pretrained(SHARED / "tokenizers/clip-vit-large-patch14")
    image = test_image(64)
    image.save(out / "input.png")
    gen = torch.Generator().manual_seed(1)
    g = goldens(unet, vae, clip, tok, image, gen, STEPS, list(SAMPLERS))
    save_file(g, str(out / "goldens.safetensors"))

    write_diffusers(out / "diffusers", unet, vae, clip, "StableDiffusionInstructPix2PixPipeline")
    ldm = ldm_state_dict(unet, vae, clip, dict(unet.config), dict(vae.config))
    save_file(ldm, str(out / "ldm.safetensors"))

    # An InstructPix2Pix-style pickle: the live UNet weights are decoys, the EMA copy is real.
    ema = {}
    decoy = torch.Generator().manual_seed(99)
    for k, v in list(ldm.items()):
        if k.startswith("model.diffusion_model."):
            name = k[len("model."):].replace(".", "")
            ema["model_ema." + name] = v
            ldm[k] = (v.float() + torch.randn(v.shape, generator=decoy)).half()
    ldm.update(ema)
    ldm["model_ema.decay"] = torch.tensor(0.9999)
    ldm["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    torch.save({"state_dict": ldm, "global_step": 1000}, out / "ldm-ema.ckpt")

    bad = out.parent / "bad"
    bad.mkdir(exist_ok=True)
    small = {"state_dict": {"x": torch.zeros(2)}}
    torch.save(small, bad / "protocol4.ckpt", pickle_protocol=4)
    torch.save(small, bad / "legacy.ckpt", _use_new_zipfile_serialization=False)

    images = out.parent / "images"
    images.mkdir(exist_ok=True)
    photo = test_image(64).resize((48, 32))
    photo.convert("CMYK").save(images / "cmyk.jpg", quality=95)
    Image.open(images / "cmyk.jpg").convert("RGB").save(images / "cmyk_as_pil_sees_it.png")
    # EXIF orientation 6 (rotate 90 clockwise to display): stored 48x32, shown 32x48.
    half = Image.new("RGB", (48, 32), (255, 0, 0))
    half.paste((0, 0, 255), (24, 0, 48, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    half.save(images / "exif_rotate_90.jpg", exif=exif, quality=95)
    for p in sorted(out.parent.rglob("*")):
        if p.is_file():
            print(f"{p.stat().st_size:>10}  {p.relative_to(ROOT)}")


def only_cross(out):
    """A UNet with diffusers' `only_cross_attention` in its first down block (and so the last up
    block): its first attention attends to the text, not to the image. The UNet folder and the
    golden output of one call; the test puts the folder in a copy of the tiny model."""
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    unet = perturb_and_round(UNet2DConditionModel(**ONLY_CROSS_UNET), gen)
    b = 3
    sample = torch.randn((b, 8, 8, 8), generator=gen)
    t = torch.tensor([999.0, 500.5, 1.25])
    ctx = torch.randn((b, 77, ONLY_CROSS_UNET["cross_attention_dim"]), generator=gen)
    g = {"unet.sample": sample, "unet.t": t, "unet.context": ctx,
         "unet.out": unet(sample, t, encoder_hidden_states=ctx).sample}
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "unet", ignore_errors=True)
    unet.half().save_pretrained(out / "unet", safe_serialization=True)
    save_file({k: v.contiguous() for k, v in g.items()}, str(out / "goldens.safetensors"))
    for p in sorted(out.rglob("*")):
        if p.is_file():
            print(f"{p.stat().st_size:>10}  {p.relative_to(ROOT)}")


def full(dir):
    """SD 1.5-size random models (a diffusers folder) and goldens at 256 px, for the ignored
    test `full_size_parity` (point INSTRUCTDIFFUSION_FULL_FIXTURES at DIR)."""
    dir.mkdir(parents=True, exist_ok=True)
    unet, vae, clip = build(SD15_UNET, SD15_VAE, SD15_CLIP, seed=0)
    tok = CLIPTokenizer.from_pretrained(SHARED / "tokenizers/clip-vit-large-patch14")
    image = test_image(256)
    image.save(dir / "input.png")
    g = goldens(unet, vae, clip, tok, image, torch.Generator().manual_seed(1), 4, ["euler"])
    save_file(g, str(dir / "goldens.safetensors"))
    import time
    times = []
    with torch.no_grad():
        for _ in range(3):
            t0 = time.perf_counter()
            unet(g["unet.sample"], g["unet.t"], encoder_hidden_states=g["unet.context"])
            times.append(time.perf_counter() - t0)
    print(f"pytorch {torch.__version__}, {torch.get_num_threads()} threads: SD1.5 UNet batch 3 at "
          f"{tuple(g['unet.sample'].shape)}: median {sorted(times)[1]:.3f} s (runs {[round(t, 3) for t in times]})")
    write_diffusers(dir / "diffusers", unet, vae, clip, "StableDiffusionInstructPix2PixPipeline")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "tests/fixtures/tiny")
    ap.add_argument("--full", type=pathlib.Path)
    ap.add_argument("--only-cross", action="store_true",
                    help="write only tests/fixtures/only-cross (the only_cross_attention UNet)")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    if a.full:
        full(a.full)
    elif a.only_cross:
        only_cross(a.out.parent / "only-cross")
    else:
        tiny(a.out)
        only_cross(a.out.parent / "only-cross")
