#!/bin/sh
# A `train edit` run on a GPU lent for minutes, sized to end inside a time budget, unattended.
#
# A first stretch of FIRST steps builds the sample pool and measures the pace (from the log's
# timestamps, past the kernels' first-use compile); the run then resumes from that checkpoint with
# --steps set so that it ends, cosine decay to 0 over its last quarter included, inside BUDGET_S
# seconds from the start. The trained model comes back as parts of a tar under the device tool's
# 16 MiB file limit:
#
#   BIN=.dev/instructdiffusion OUT=/tmp/gt BUDGET_S=480 tools/gpu_train.sh \
#       --unet-config tools/arch/unet-deepmid.json --text-encoder-from models/builtin ...
#   cat OUT/model.tar.part-* | tar -x -C DIR   # here, afterwards: DIR/model is the diffusers
#                                              # folder, less the VAE and tokenizer it trained with
#                                              # (copy them in, e.g. from models/builtin)
#
# The arguments go to `train edit` as they are (architecture, schedule, batch, lr, pool); --steps,
# --lr-decay-from, --checkpoint-every and --log-every are this script's (DEVICE, default cuda,
# picks the device).
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$here/.dev/instructdiffusion}
OUT=${OUT:-$here/gpu-train}
RUN=${RUN:-/tmp/gpu-train-run}
BUDGET_S=${BUDGET_S:-480}
FIRST=${FIRST:-100}
DEVICE=${DEVICE:-cuda}
start=$(date +%s)
mkdir -p "$OUT"
cd "$here" || exit 1
. "$here/tools/cuda_libs.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"

# Each log line with the seconds since the start in front.
stamp() { python3 -u -c "
import sys, time
t0 = $start
for line in sys.stdin:
    print(f'{time.time() - t0:7.1f} {line}', end='', flush=True)
"; }
train() { # train SECONDS ARGS... (0 seconds: no limit)
    limit=$1
    shift
    timeout "$limit" "$BIN" train edit --device "$DEVICE" --out "$RUN" "$@" 2>&1 | stamp |
        tee -a "$OUT/train.log"
}

echo "== first stretch: $FIRST steps (the pool, the kernels' first use, the pace)"
train 0 "$@" --steps "$FIRST" --checkpoint-every "$FIRST" --log-every $((FIRST > 4 ? FIRST / 5 : 1)) \
    --timing
# The pace between the first and the last progress line that report a step.
steps=$(python3 - "$OUT/train.log" "$start" "$BUDGET_S" "$FIRST" <<'EOF'
import re, sys, time
log, start, budget, first = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
points = [(float(l.split()[0]), int(m.group(1))) for l in open(log)
          if (m := re.search(r" step (\d+)/", l))]
if len(points) < 2 or points[-1][1] == points[0][1]:
    print(0)
    sys.exit()
(t0, s0), (t1, s1) = points[0], points[-1]
rate = (s1 - s0) / (t1 - t0)
# What is left, less the resume (pool and checkpoint load) and the last checkpoint and packing.
left = budget - (time.time() - start) - 45
print(first + max(0, int(rate * left * 0.92)))
print(f"pace {rate:.2f} steps/s, {left:.0f} s left", file=sys.stderr)
EOF
)
echo "== the run: to step $steps"
if [ "$steps" -gt "$FIRST" ]; then
    decay=$((FIRST + (steps - FIRST) * 3 / 4))
    every=$(((steps - FIRST) / 6 + 1))
    train $((BUDGET_S - $(date +%s) + start - 15)) "$@" --steps "$steps" \
        --lr-decay-from "$decay" --checkpoint-every "$every" --log-every 100
fi
echo "== packing $RUN/model"
tar -C "$RUN" --exclude model/vae --exclude model/tokenizer -cf - model |
    split -b 15M - "$OUT/model.tar.part-"
ls -la "$OUT"
