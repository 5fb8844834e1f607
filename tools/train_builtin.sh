#!/bin/sh
# The recipe of the built-in model (models/builtin), as it was run on a 2-core CPU.
# Every phase resumes from its last checkpoint when run again, so this script can be
# killed and restarted at any time. RUNS defaults to ./runs.
#
#   tools/train_builtin.sh            # train (or resume) every phase
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
ZSNR_SWITCH=${ZSNR_SWITCH:-2000}   # zero-terminal-SNR fine-tune: its pool grows here
ZSNR_DECAY_FROM=${ZSNR_DECAY_FROM:-9000}
ZSNR_STEPS=${ZSNR_STEPS:-12000}

if [ "${1:-}" = ship ]; then
    # The model folder (EMA weights, f16) with the tokenizer files and the model card kept.
    rm -rf models/builtin.new
    cp -r "$RUNS/zsnr/model" models/builtin.new
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

# Phase 5: a fine-tune of that model on the noise schedule rescaled to zero terminal SNR (its
# last timestep trains on noise alone, as sampling's first step sees), with the plain v loss
# (min-SNR gives that timestep no weight): 2,000 steps on a fresh pool of 4096 version-2 samples,
# then the pool grown to 16384 (the first 4096 kept), the rate decaying to 0 from step 9000.
for phase in "$POOL $ZSNR_SWITCH" "$POOL_LATER $ZSNR_STEPS"; do
    set -- $phase
    decay=""
    [ "$2" = "$ZSNR_STEPS" ] && decay="--lr-decay-from $ZSNR_DECAY_FROM"
    CANDLE_NUM_THREADS=2 "$BIN" train edit --device "$DEVICE" --out "$RUNS/zsnr" --base "$RUNS/edit/model" \
        --zero-terminal-snr --min-snr-gamma 0 --pool "$1" --batch 8 --lr 1.5e-4 --steps "$2" $decay \
        --checkpoint-every 500 --log-every 50
done
