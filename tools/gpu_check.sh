#!/bin/sh
# The GPU check of the speed issue, unattended, start to finish: the CUDA build's edit against the
# CPU result (same seeded noise, euler), then timings against diffusers on the same GPU.
#
# Run where a CUDA GPU, its driver and PyTorch (with diffusers) are present. It does not build:
# BIN must be a binary built with `--features cuda` (README, "On a GPU"; `tools/gpu_check.sh
# build` does that here with the toolkit from PyPI). BIN_CUDNN, when it names a binary built with
# `--features cudnn`, is checked and timed too. Writes everything under OUT (default ./gpu-check).
#
#   tools/gpu_check.sh build [cuda|cudnn] # here: a stripped binary in .dev/instructdiffusion[-cudnn]
#   BIN=.dev/instructdiffusion OUT=/tmp/gpu tools/gpu_check.sh
#
# TRAIN_STEPS (default 300) sizes the last check, `train edit --device cuda`.
# CASES picks the timing rows (default "512-f16 512-f32 256-f16"; resolution-dtype), for a short run
# on a GPU lent for minutes.
#
# Parity rows compare 8-bit results: `max` and `mean` absolute difference in levels of 255.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)

if [ "${1:-}" = build ]; then
    features=${2:-cuda}
    name=instructdiffusion
    [ "$features" = cuda ] || name=instructdiffusion-$features
    # The CUDA 13.0 compiler, runtime and headers from PyPI (no system toolkit needed to build).
    tk=${CUDA_TOOLKIT:-$here/.dev/cuda}
    if [ ! -x "$tk/nvidia/cu13/bin/nvcc" ]; then
        mkdir -p "$tk/wheels"
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$tk/wheels" \
            "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" \
            "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*" || exit 1
        for w in "$tk"/wheels/*.whl; do unzip -q -o "$w" -d "$tk" || exit 1; done
        ln -sf libcudart.so.13 "$tk/nvidia/cu13/lib/libcudart.so"
    fi
    cu=$tk/nvidia/cu13
    cd "$here" && PATH=$cu/bin:$PATH CUDA_HOME=$cu CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} \
        LIBRARY_PATH=$cu/lib CUDARC_CUDA_VERSION=13000 cargo build --release --features "$features" || exit 1
    mkdir -p .dev && strip -o ".dev/$name" target/release/instructdiffusion || exit 1
    ls -la ".dev/$name"
    exit 0
fi

BIN=${BIN:-$here/.dev/instructdiffusion}
BIN_CUDNN=${BIN_CUDNN:-}
OUT=${OUT:-$here/gpu-check}
mkdir -p "$OUT"
cd "$here" || exit 1
log() { echo "== $*"; }

. "$here/tools/cuda_libs.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" | tee -a "$OUT/gpu.txt"

# Peak GPU memory of one command: nvidia-smi sampled every 50 ms, minus what was in use before.
gpu_used() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; }
with_memory() {
    name=$1; shift
    base=$(gpu_used)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$OUT/mem-$name.txt" &
    sampler=$!
    "$@"; rc=$?
    kill $sampler 2>/dev/null; wait $sampler 2>/dev/null
    peak=$(sort -n "$OUT/mem-$name.txt" | tail -1)
    echo "$name: peak GPU memory $((${peak:-0} - base)) MiB over the $base MiB in use before" | tee -a "$OUT/memory.txt"
    return $rc
}

compare() { # compare NAME A.png B.png
    python3 - "$@" <<'EOF' | tee -a "$OUT/parity.txt"
import sys
import numpy as np
from PIL import Image
name, a, b = sys.argv[1:4]
x = np.asarray(Image.open(a).convert("RGB"), dtype=np.int16)
y = np.asarray(Image.open(b).convert("RGB"), dtype=np.int16)
d = np.abs(x - y)
mse = float((d.astype(np.float64) ** 2).mean())
psnr = float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)
print(f"{name}: {x.shape[1]}x{x.shape[0]} max {d.max()} mean {d.mean():.3f} levels, "
      f"{(d > 2).mean() * 100:.2f}% of values off by more than 2, PSNR {psnr:.1f} dB")
EOF
}

scene=assets/scenes/scene-circles.png
log "parity: the built-in model, 20 euler steps, seed 1, cpu vs cuda f32"
for dev in cpu cuda; do
    "$BIN" edit --model builtin --device $dev --image $scene --prompt "mark the cyan circle with a blue mask" \
        --sampler euler --steps 20 --seed 1 --keep-model-resolution --out "$OUT/builtin-$dev.png" \
        --report "$OUT/builtin-$dev.json" 2>&1 | tail -2
done
compare "built-in, 20 steps" "$OUT/builtin-cpu.png" "$OUT/builtin-cuda.png"

log "parity: SD 1.5-size random weights, 256 px, 4 euler steps, cpu vs cuda f32 (and cuda f16)"
"$BIN" bench --random sd15 --device cpu --resolution 256 --repeats 1 --edit-steps 4 \
    --save-edit "$OUT/sd15-cpu.png" 2>&1 | tail -1
"$BIN" bench --random sd15 --device cuda --resolution 256 --repeats 1 --edit-steps 4 \
    --save-edit "$OUT/sd15-cuda.png" 2>&1 | tail -1
"$BIN" bench --random sd15 --device cuda --dtype f16 --resolution 256 --repeats 1 --edit-steps 4 \
    --save-edit "$OUT/sd15-cuda-f16.png" 2>&1 | tail -1
compare "sd15 256 px, cuda f32" "$OUT/sd15-cpu.png" "$OUT/sd15-cuda.png"
compare "sd15 256 px, cuda f16" "$OUT/sd15-cpu.png" "$OUT/sd15-cuda-f16.png"
if [ -x "$BIN_CUDNN" ]; then
    "$BIN_CUDNN" bench --random sd15 --device cuda --resolution 256 --repeats 1 --edit-steps 4 \
        --save-edit "$OUT/sd15-cudnn.png" 2>&1 | tail -1
    compare "sd15 256 px, cuDNN f32" "$OUT/sd15-cpu.png" "$OUT/sd15-cudnn.png"
fi

for case in ${CASES:-512-f16 512-f32 256-f16}; do
    res=${case%-*} dt=${case#*-}
    log "timing: SD 1.5 $res px $dt, ours then diffusers (20-step edit, 5 repeats)"
    with_memory "ours-$case" "$BIN" bench --random sd15 --device cuda --dtype $dt --resolution $res \
        --repeats 5 --edit-steps 20 --json "$OUT/ours-$case.json" 2>&1 | tail -8
    with_memory "diffusers-$case" python3 tools/bench/pytorch_bench.py --device cuda --dtype $dt \
        --resolution $res --repeats 5 --edit-steps 20 --ours "$OUT/ours-$case.json" 2>&1 |
        tee "$OUT/ratio-$case.txt" | tail -8
    if [ -x "$BIN_CUDNN" ]; then
        log "timing: the same with cuDNN convolutions (against the diffusers rows above)"
        with_memory "cudnn-$case" "$BIN_CUDNN" bench --random sd15 --device cuda --dtype $dt \
            --resolution $res --repeats 5 --edit-steps 20 --json "$OUT/cudnn-$case.json" 2>&1 | tail -8
    fi
done

log "timing: the built-in model on cuda f32"
"$BIN" bench --model builtin --device cuda --resolution 128 --repeats 5 --edit-steps 20 2>&1 | tail -8
log "training on cuda: the built-in model fine-tuned ${TRAIN_STEPS:=300} steps (batch 32, a pool of 512)"
# The trainer's generic layers (gradient-checked on the CPU in f64) on the GPU: steps/s, a finite
# loss, the instruction probe near the built-in model's (ratio ~4.1, from pure noise ~0.64).
rm -rf "$OUT/train-cuda"
"$BIN" train edit --device cuda --out "$OUT/train-cuda" --base models/builtin --pool 512 --batch 32 \
    --lr 1e-4 --steps "$TRAIN_STEPS" --checkpoint-every "$TRAIN_STEPS" --log-every 50 2>&1 |
    tee "$OUT/train-cuda.txt" | grep -v "^sample pool" | tail -8
log done
