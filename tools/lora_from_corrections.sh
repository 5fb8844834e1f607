#!/usr/bin/env bash
# How much a short fine-tune on an annotator's corrected images improves the built-in model's
# drafts (issue #28, docs/annotation.md): for each family (referring segmentation, keypoints) and
# N = 20, 50 corrected images, the built-in model is fine-tuned on N procedural scenes with their
# true answers drawn the way the model draws answers (what an annotator's corrections become
# through the workbench's "Training set..."), then the drafts of 50 held-out scenes of that
# family are scored (cIoU / PCK, fixed seed) before and after.
#
# METHOD=lora (default: rank-4 LoRA, the Training window's default) or METHOD=full (UNet and
# text encoder in full); STEPS (200), PER_TASK (50).
# Resumable: each step's output is kept under $OUT and skipped when present.
# Usage: [METHOD=full] tools/lora_from_corrections.sh [OUT]   (release build of the binary first)
set -euo pipefail
BIN=${BIN:-target/release/instructdiffusion}
OUT=${1:-runs/lora-corrections}
STEPS=${STEPS:-200}
PER_TASK=${PER_TASK:-50}
METHOD=${METHOD:-lora}
case "$METHOD" in
  lora) how=(--lora-rank 4); tag="" ;;
  full) how=(); tag="-full" ;;
  *) echo "METHOD is lora or full" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
score() { # model family json
  if [ ! -s "$3" ]; then
    # The built-in model's guidance rescale for every model, so that before and after sample
    # alike (fine-tunes inherit it since 2026-12-06; this also covers older runs).
    "$BIN" eval --model "$1" --tasks "$2" --per-task "$PER_TASK" --seed 1 \
      --guidance-rescale 0.7 --json "$3.tmp"
    mv "$3.tmp" "$3"
  fi
}
for family in referring_segmentation keypoints; do
  score builtin "$family" "$OUT/$family-before.json"
  for n in 20 50; do
    data="$OUT/$family-$n-data"
    run="$OUT/$family-$n$tag-run"
    if [ ! -s "$data/metadata.jsonl" ]; then
      # Seeds far from the trainer's pool and from eval's held-out scenes.
      "$BIN" data synth --out "$data" --count "$n" --first-seed 7000000000 --tasks "$family"
    fi
    if [ ! -d "$run/model" ]; then
      /usr/bin/time -f "%e s" -o "$OUT/$family-$n$tag-train-time.txt" \
        "$BIN" train edit --base models/builtin --data "$data" "${how[@]}" \
        --steps "$STEPS" --batch 8 --out "$run" --log-every 50
    fi
    score "$run/model" "$family" "$OUT/$family-$n$tag-after.json"
  done
done
python3 - "$OUT" "$tag" <<'PY'
import json, sys, pathlib
out, tag = pathlib.Path(sys.argv[1]), sys.argv[2]
def headline(path, family):
    row = next(t for t in json.loads(path.read_text())["rows"] if t["task"] == family)
    return ", ".join(f"{k} {v:.3f}" for k, v in row["metrics"])
for family in ["referring_segmentation", "keypoints"]:
    print(family, "before:", headline(out / f"{family}-before.json", family))
    for n in [20, 50]:
        p = out / f"{family}-{n}{tag}-after.json"
        if p.exists():
            print(family, f"N={n}{tag} after:", headline(p, family), "| train", (out / f"{family}-{n}{tag}-train-time.txt").read_text().strip())
PY
