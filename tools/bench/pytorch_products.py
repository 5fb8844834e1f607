#!/usr/bin/env python3
"""PyTorch's bf16 `linear`, `conv2d` and `scaled_dot_product_attention` on the shapes of `instructdiffusion bench --products`
(SD 1.5's UNet at 256 px, a guided batch of three), inputs and weights in bf16 as in PyTorch's
bf16 model: best time and GFLOP/s of each, and ours / PyTorch where `--ours` gives that
command's `--json` report.

    instructdiffusion bench --products --repeats 5 --json ours.json
    python3 tools/bench/pytorch_products.py --repeats 5 --ours ours.json
"""
import argparse
import json
import time

import torch

LINEAR = [(3072, 320, 320), (3072, 320, 2560), (3072, 1280, 320), (768, 640, 5120), (192, 1280, 10240)]
CONV = [(320, 32), (640, 16), (1280, 8), (1280, 4)]
# (batch x heads, query tokens, key tokens, head width)
ATTENTION = [(24, 1024, 1024, 40), (24, 1024, 77, 40), (24, 4096, 4096, 40), (1, 4096, 4096, 512)]


def best(f, repeats):
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ours", help="the JSON report of `bench --products --json`")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ours = json.load(open(args.ours))["rows"] if args.ours else None
    rows = []
    with torch.no_grad():
        for m, k, n in LINEAR:
            x, w, b = torch.randn(m, k).bfloat16(), torch.randn(n, k).bfloat16(), torch.randn(n).bfloat16()
            s = best(lambda: torch.nn.functional.linear(x, w, b), args.repeats)
            rows.append((f"linear {m}x{k} -> {n}", 2.0 * m * k * n, s))
        for c, side in CONV:
            x = torch.randn(3, c, side, side).bfloat16()
            w, b = torch.randn(c, c, 3, 3).bfloat16(), torch.randn(c).bfloat16()
            s = best(lambda: torch.nn.functional.conv2d(x, w, b, padding=1), args.repeats)
            rows.append((f"conv 3x3 {c} -> {c}, 3 x {side}x{side}", 2.0 * 3 * c * 9 * c * side * side, s))
        for bh, sq, sk, dh in ATTENTION:
            q = torch.randn(1, bh, sq, dh).bfloat16()
            k, v = torch.randn(1, bh, sk, dh).bfloat16(), torch.randn(1, bh, sk, dh).bfloat16()
            s = best(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), args.repeats)
            rows.append((f"attention {bh} x {sq}x{sk}x{dh}", 4.0 * bh * sq * sk * dh, s))
    print(f"pytorch {torch.__version__}, {args.threads} threads, bf16 products")
    print(f"{'layer':<40} {'best ms':>9} {'GFLOP/s':>8}" + (f" {'ours GF/s':>10} {'ours/pt':>8}" if ours else ""))
    for i, (name, flops, s) in enumerate(rows):
        line = f"{name:<40} {s * 1e3:>9.2f} {flops / s / 1e9:>8.0f}"
        if ours:
            line += f" {ours[i]['gflops']:>10.0f} {ours[i]['best_s'] / s:>8.2f}"
        print(line)


if __name__ == "__main__":
    main()
