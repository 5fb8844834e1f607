#!/bin/sh
# The README screenshot: the real editor window under Xvfb (Mesa software rendering), on a
# 512-px sample scene, after a real edit on the built-in model (which runs at 128 px: the answer
# is redrawn on the scene at its own size), with the decoded overlay on.
# Needs (Debian): xvfb mesa-vulkan-drivers libvulkan1 x11-apps xdotool; python3.
#
#   tools/screenshot.sh [OUT.png]
#   TARGET="red square" tools/screenshot.sh    # the instruction written by the task picker
set -eu
OUT=${1:-assets/screenshot.png}
BIN=${BIN:-target/release/instructdiffusion}
IMAGE=${IMAGE:-assets/scenes/scene-512.png}
PROMPT=${PROMPT:-Apply a blue semi-transparent mask to the red square.}
export DISPLAY=:99
Xvfb :99 -screen 0 1280x800x24 >/dev/null 2>&1 &
XVFB=$!
sleep 2
# A session folder of its own, so the screenshot never restores or touches the user's.
HOME=$(mktemp -d) "$BIN" "$IMAGE" --model builtin --prompt "$PROMPT" &
APP=$!
trap 'kill $APP $XVFB 2>/dev/null || true' EXIT
sleep "${LOAD_WAIT:-20}"
# With TARGET set: the task picker writes the instruction (Segment, blue; the model's guidance
# for segmentation) from that target, typed into its field.
if [ -n "${TARGET:-}" ]; then
    # No window manager runs: give the window the keyboard focus by hand.
    xdotool search --name instructdiffusion windowfocus
    xdotool mousemove ${TARGET_AT:-200 485} click 1
    sleep 1
    xdotool type --delay 50 "$TARGET"
    sleep 1
    xdotool mousemove ${WRITE_AT:-64 531} click 1
    sleep 2
fi
# Click Run (its place in the 1280x800 layout; RUN_AT overrides).
xdotool mousemove ${RUN_AT:-1119 710} click 1
sleep "${EDIT_WAIT:-30}"
xwd -root -silent > /tmp/instructdiffusion-screen.xwd
python3 "$(dirname "$0")/xwd2png.py" /tmp/instructdiffusion-screen.xwd "$OUT"
echo "wrote $OUT"
