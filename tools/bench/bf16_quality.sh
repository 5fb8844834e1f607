#!/usr/bin/env bash
# bf16 against f32 on this machine, same seeds: the table "bf16 against f32" of docs/speed.md.
# Usage: tools/bench/bf16_quality.sh SD15_DIR OUT_DIR   (SD15_DIR from `bench --random sd15
# --save-random SD15_DIR`; BIN overrides the binary, default target/release/instructdiffusion).
# Prints one line per edit: the largest and mean difference in levels of 255, the PSNR, and how
# many pixels differ by more than 8 levels.
set -euo pipefail
sd15=${1:?SD 1.5-size diffusers folder}
out=${2:?output folder}
bin=${BIN:-target/release/instructdiffusion}
mkdir -p "$out"
for dtype in f32 bf16; do
    "$bin" bench --model "$sd15" --dtype "$dtype" --resolution 256 --repeats 1 --edit-steps 2 \
        --save-edit "$out/sd15-$dtype.png" > /dev/null 2>&1
done
pairs=("sd15-f32.png sd15-bf16.png sd15 random 256px 2 euler steps")
prompts=("make it snow" "make the image sharper" "turn it into a watercolor painting")
for i in "${!prompts[@]}"; do
    for seed in 3 4; do
        for dtype in f32 bf16; do
            "$bin" edit --dtype "$dtype" --image assets/samples/astronaut.png --resolution 512 \
                --steps 20 --seed "$seed" --prompt "${prompts[$i]}" \
                --out "$out/builtin-$i-$seed-$dtype.png" > /dev/null 2>&1
        done
        pairs+=("builtin-$i-$seed-f32.png builtin-$i-$seed-bf16.png builtin astronaut 512px 20 steps '${prompts[$i]}' seed $seed")
    done
done
for p in "${pairs[@]}"; do
    read -r a b label <<< "$p"
    python3 - "$out/$a" "$out/$b" "$label" <<'PY'
import sys
import numpy as np
from PIL import Image
a = np.asarray(Image.open(sys.argv[1]).convert("RGB"), dtype=np.float64)
b = np.asarray(Image.open(sys.argv[2]).convert("RGB"), dtype=np.float64)
d = np.abs(a - b)
mse = (d ** 2).mean()
psnr = float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)
over = int((d.max(axis=2) > 8).sum())
print(f"{sys.argv[3]}: max {d.max():.0f} mean {d.mean():.3f} psnr {psnr:.1f} dB, "
      f"{over} of {d.shape[0] * d.shape[1]} pixels over 8 levels")
PY
done
