#!/usr/bin/env python3
"""Golden values of the guidance rescale (Lin et al., 2024) from diffusers' own
`rescale_noise_cfg`, for the parity test in src/sample/guidance.rs (run by hand, not in CI;
PyTorch + diffusers from PyPI):

    /work/ref/venv/bin/python tools/reference/guidance_rescale_fixture.py > tests/fixtures/guidance/rescale.json

diffusers guides and rescales the UNet's outputs (epsilon or v) as its pipelines do: the three
outputs combined by the guidance formula, then `rescale_noise_cfg(guided, fully_conditioned,
phi)`. Our sampler works on clean-latent predictions (k-diffusion's denoisers), so each case
stores the three outputs turned into x0 with k-diffusion's scalings (`DiscreteEpsDDPMDenoiser`,
`DiscreteVDDPMDenoiser`, sigma_data = 1) and the expected x0 of the rescaled output.
"""
import json

import diffusers
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg


def scalings(prediction, sigma):
    """k-diffusion's (c_skip, c_out): x0 = c_skip * x + c_out * out."""
    if prediction == "epsilon":
        return 1.0, -sigma
    return 1.0 / (sigma**2 + 1.0), -sigma / (sigma**2 + 1.0) ** 0.5


def combine(formula, c, i, third, sT, sI):
    if formula == "instructdiffusion":
        return 0.5 * (i + third) + sT * (c - i) + sI * (c - third)
    return third + sT * (c - i) + sI * (i - third)


gen = torch.Generator().manual_seed(20261128)
shape = (2, 3, 2, 2)
cases = []
for prediction in ["epsilon", "v_prediction"]:
    for sigma in [0.5, 14.6, 4096.0]:
        for formula, (sT, sI) in [("instructdiffusion", (5.0, 1.25)), ("pix2pix", (7.5, 1.5))]:
            for phi in [0.7, 1.0]:
                x = torch.randn(shape, generator=gen, dtype=torch.float64) * (sigma**2 + 1) ** 0.5
                # Outputs of different spread per sample, as guidance makes them.
                outs = [torch.randn(shape, generator=gen, dtype=torch.float64) * s for s in (1.0, 0.8, 1.3)]
                guided = combine(formula, *outs, sT, sI)
                rescaled = rescale_noise_cfg(guided, outs[0], guidance_rescale=phi)
                skip, cout = scalings(prediction, sigma)
                to_x0 = lambda o: (skip * x + cout * o).float()
                cases.append({
                    "prediction": prediction, "sigma": sigma, "formula": formula,
                    "text_cfg": sT, "image_cfg": sI, "phi": phi, "shape": list(shape),
                    "x": x.float().flatten().tolist(),
                    "x0": [to_x0(o).flatten().tolist() for o in outs],
                    "expected": to_x0(rescaled).flatten().tolist(),
                })
print(json.dumps({"diffusers": diffusers.__version__, "cases": cases}))
