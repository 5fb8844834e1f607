#!/usr/bin/env python3
"""Golden values of a zero-terminal-SNR schedule from diffusers itself, for the parity test in
src/sample/schedule.rs (run by hand, not in CI; PyTorch + diffusers from PyPI):

    /work/ref/venv/bin/python tools/reference/zero_snr_fixture.py > tests/fixtures/schedule/zero_snr.json

SD 1.x's betas (scaled_linear, 0.00085-0.012, 1000 steps) with `rescale_betas_zero_snr=True`:
`alphas_cumprod` from `rescale_zero_terminal_snr` (before the Euler scheduler's stand-in for the
last, zero value) and the training sigmas `sqrt((1 - acp) / acp)` the Euler scheduler builds with
its stand-in `alphas_cumprod[-1] = 2**-24`.
"""
import json

import diffusers
import torch
from diffusers import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_euler_discrete import rescale_zero_terminal_snr

betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
acp = torch.cumprod(1.0 - rescale_zero_terminal_snr(betas), dim=0)
s = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                           rescale_betas_zero_snr=True, prediction_type="v_prediction")
sigmas = ((1 - s.alphas_cumprod) / s.alphas_cumprod) ** 0.5
at = [0, 1, 10, 100, 250, 500, 750, 900, 990, 998, 999]
print(json.dumps({
    "diffusers": diffusers.__version__,
    "timesteps": at,
    "alphas_cumprod": [float(acp[t]) for t in at],
    "sigmas": [float(sigmas[t]) for t in at],
}, indent=2))
