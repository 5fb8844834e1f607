#!/bin/sh
# The workbench screenshot (docs/annotation.md, README): the real editor under Xvfb on a folder of
# generated scenes drafted by the built-in model with one instruction (`annotate`, the same
# state the editor keeps), two drafts accepted from the keyboard.
# Needs what tools/screenshot.sh needs.
#
#   tools/screenshot_workbench.sh [OUT.png]
set -eu
OUT=${1:-assets/workbench.png}
BIN=${BIN:-target/release/instructdiffusion}
PROMPT=${PROMPT:-Mark the pixels of circle in blue and keep the rest unchanged.}
WORK=$(mktemp -d)
"$BIN" data synth --out "$WORK/synth" --count 14 --size 256 --first-seed 900 \
    --tasks referring_segmentation,semantic_segmentation >/dev/null
mkdir "$WORK/photos"
for f in "$WORK"/synth/images/*_source.png; do
    cp "$f" "$WORK/photos/$(basename "$f" _source.png).png"
done
"$BIN" annotate --model builtin --images "$WORK/photos" --coco "$WORK/drafts.json" \
    --prompt "$PROMPT" --seed 1 >/dev/null 2>&1
export DISPLAY=:99
Xvfb :99 -screen 0 1280x800x24 >/dev/null 2>&1 &
XVFB=$!
sleep 2
HOME="$WORK/home" "$BIN" "$WORK/photos" --model builtin --prompt "$PROMPT" &
APP=$!
trap 'kill $APP $XVFB 2>/dev/null || true; rm -rf "$WORK"' EXIT
sleep "${LOAD_WAIT:-15}"
xdotool search --name instructdiffusion windowfocus
# Accept the first two drafts (Enter), then step down one image.
xdotool key Return
sleep 1
xdotool key Return
sleep 1
xdotool key Down
sleep 3
xwd -root -silent > "$WORK/screen.xwd"
python3 "$(dirname "$0")/xwd2png.py" "$WORK/screen.xwd" "$OUT"
echo "wrote $OUT"
