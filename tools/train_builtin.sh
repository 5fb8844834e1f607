#!/bin/sh
# The recipe of the built-in model (models/builtin), as it was run on a 2-core CPU.
# Every phase resumes from its last checkpoint when run again, so this script can be
# killed and restarted at any time. RUNS defaults to ./runs.
#
#   tools/train_builtin.sh            # train (or resume) both phases
#   tools/train_builtin.sh ship       # copy the trained model into models/builtin
#
# After shipping, measure and record this model's guidance per task family (its card's table):
#   instructdiffusion eval --model builtin --per-task 20 --seed 1 \
#       --grid 1:1.25,2.5:1.25,5:1.25,7.5:1.5,6:0.5 --save-guidance
set -eu
RUNS=${RUNS:-runs}
BIN=${BIN:-target/release/instructdiffusion}
DEVICE=${DEVICE:-cpu}              # cuda with a binary built with --features cuda
VAE_STEPS=${VAE_STEPS:-1500}       # encoder and decoder
DECODER_STEPS=${DECODER_STEPS:-6000} # then the decoder alone (total step count)
DECAY_FROM=${DECAY_FROM:-38000}   # the edit step at which the learning rate starts to decay
EDIT_STEPS=${EDIT_STEPS:-42000}   # ... to 0 here
POOL=${POOL:-4096}
POOL_LATER=${POOL_LATER:-16384}
POOL_SWITCH=${POOL_SWITCH:-10250}  # the edit step at which the pool grew

if [ "${1:-}" = ship ]; then
    # The model folder (EMA weights, f16) with the tokenizer files and the model card kept.
    rm -rf models/builtin.new
    cp -r "$RUNS/edit/model" models/builtin.new
    cp models/builtin/tokenizer/* models/builtin.new/tokenizer/
    cp models/builtin/README.md models/builtin.new/ 2>/dev/null || true
    mv models/builtin models/builtin.old
    mv models/builtin.new models/builtin
    rm -rf models/builtin.old
    du -sh models/builtin
    exit 0
fi

# Phase 1: the autoencoder (one thread is fastest for its small tensors).
CANDLE_NUM_THREADS=1 "$BIN" train vae --device "$DEVICE" --out "$RUNS/vae" --batch 8 --crop 64 \
    --steps "$VAE_STEPS" --checkpoint-every 100 --log-every 20

# Phase 2, on the two cores at once: the decoder alone goes on sharpening (the encoder is frozen,
# so the latents stay valid), while the UNet + text encoder train on a pool of generated samples
# encoded once (v-prediction, min-SNR weighting: the trainer's defaults). Each edit checkpoint
# copies the VAE as it is then.
CANDLE_NUM_THREADS=1 "$BIN" train vae --device "$DEVICE" --out "$RUNS/vae" --batch 8 --crop 64 --decoder-only \
    --steps "$DECODER_STEPS" --checkpoint-every 100 --log-every 20 &
CANDLE_NUM_THREADS=1 "$BIN" train edit --device "$DEVICE" --out "$RUNS/edit" --vae "$RUNS/vae/vae" \
    --pool "$POOL" --batch 8 --lr 3e-4 --steps "$POOL_SWITCH" --checkpoint-every 250 --log-every 20
wait

# Phase 3 (from step 10250): the pool grown to 16384 samples (the first 4096 are kept: the same
# seeds), with both cores on the edit phase: the trainer runs one share of each batch per thread
# on this narrow model (~1.6 -> 2.95 steps/s; the run had one thread until step 11750).
CANDLE_NUM_THREADS=2 "$BIN" train edit --device "$DEVICE" --out "$RUNS/edit" --vae "$RUNS/vae/vae" \
    --pool "$POOL_LATER" --batch 8 --lr 3e-4 --steps "$DECAY_FROM" --checkpoint-every 250 --log-every 20

# Phase 4: the learning rate decays (cosine) to 0 over the last steps.
CANDLE_NUM_THREADS=2 "$BIN" train edit --device "$DEVICE" --out "$RUNS/edit" --vae "$RUNS/vae/vae" \
    --pool "$POOL_LATER" --batch 8 --lr 3e-4 --steps "$EDIT_STEPS" --lr-decay-from "$DECAY_FROM" \
    --checkpoint-every 250 --log-every 20
