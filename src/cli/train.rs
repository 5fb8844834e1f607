//! `instructdiffusion train vae | edit`: the built-in model's two phases, fine-tunes and LoRA.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::parse_task_weights;

#[derive(Subcommand)]
pub enum TrainCommand {
    /// Phase 1: the autoencoder.
    Vae(TrainArgs),
    /// Phase 2: the UNet and the text encoder, with the phase-1 VAE frozen.
    Edit(TrainArgs),
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Run folder: checkpoint/, and vae/ or model/ (a loadable diffusers folder).
    #[arg(long)]
    pub out: PathBuf,
    /// The trained VAE folder (phase `edit`; default: BASE/vae with --base, else OUT/../vae/vae).
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// Phase `edit`: fine-tune this diffusers folder (its UNet and text encoder) instead of
    /// training the built-in architecture from scratch.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Phase `edit` with --base: train LoRA adapters of this rank on the UNet's attention
    /// (everything else frozen; the merged model and the adapters alone are written).
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// Phase `edit` with --base: the base folder's unet/config.json describes a grown
    /// architecture (e.g. a DownBlock2D made a CrossAttnDownBlock2D): take the weights the base
    /// has, start the new attention blocks as the identity, and train it all.
    #[arg(long)]
    pub grow: bool,
    /// Phase `edit` from scratch: the UNet's architecture, a diffusers UNet2DConditionModel
    /// config.json (default: the built-in model's). It takes the noisy and the source latents
    /// (in_channels twice the VAE's latent channels); a run keeps the architecture it started with.
    #[arg(long, value_name = "CONFIG_JSON", conflicts_with = "base")]
    pub unet_config: Option<PathBuf>,
    /// Phase `edit` from scratch: the text encoder's architecture, a transformers CLIPTextModel
    /// config.json (default: the built-in model's; its hidden_size is the UNet's
    /// cross_attention_dim).
    #[arg(long, value_name = "CONFIG_JSON", conflicts_with = "base")]
    pub text_encoder_config: Option<PathBuf>,
    /// Phase `edit` from scratch: start the text encoder from this diffusers folder's trained
    /// one (its weights and config; e.g. `models/builtin`) and the UNet from scratch, so a new
    /// UNet (--unet-config) learns to read an encoder that already tells instructions apart.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["base", "text_encoder_config"])]
    pub text_encoder_from: Option<PathBuf>,
    /// Phase `edit`: what the UNet predicts, `epsilon` or `v` (default: v from scratch, the
    /// base's with --base; a run resumes only with the one it started with).
    #[arg(long)]
    pub prediction: Option<String>,
    /// Phase `edit`: train on this dataset folder (metadata.jsonl, InstructPix2Pix format)
    /// instead of the generator.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Total optimizer steps (a resumed run continues to this).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub batch: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    /// Cosine learning-rate decay from this step to 0 at --steps (default: none, constant
    /// after the warmup). A resumed run may add it to finish a long run.
    #[arg(long)]
    pub lr_decay_from: Option<usize>,
    /// Steps between checkpoints.
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Phase `vae`: train on random square crops of this many pixels (0: whole images).
    #[arg(long)]
    pub crop: Option<u32>,
    /// Phase `vae`: freeze the encoder (as the checkpoint has it) and train the decoder only,
    /// so latents encoded before stay valid.
    #[arg(long)]
    pub decoder_only: bool,
    /// Phase `edit`: generate and encode this many samples once (OUT/pool/) and draw from them
    /// (0: fresh samples at every step).
    #[arg(long)]
    pub pool: Option<usize>,
    /// Print a progress line every this many steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: usize,
    /// cpu, cuda or metal (a build with that cargo feature): where the networks train.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Phase `edit`: rescale the noise schedule to zero terminal SNR (diffusers'
    /// `rescale_betas_zero_snr`): the last timestep trains on pure noise, which is what
    /// sampling's first step sees (use with --min-snr-gamma 0, which gives that timestep its
    /// weight). Default: the base model's setting with --base, else off; a run keeps it.
    #[arg(long)]
    pub zero_terminal_snr: bool,
    /// Phase `edit`: min-SNR loss weighting's gamma (default 5): each timestep's loss weighted
    /// as min(SNR, gamma) on the clean latent, which all but ignores the noisiest timesteps;
    /// 0 trains on the prediction type's plain loss (for v-prediction, every timestep's
    /// clean-latent error weighted by at least 1). A resumed run may change it.
    #[arg(long)]
    pub min_snr_gamma: Option<f64>,
    /// Phase `edit`: extra loss weight on the latent cells the edit changes (default 4: those
    /// cells count 5 times). 0 trains on the plain loss, whose optimum is the true mean of the
    /// answers: a weight that depends on the target biases the model towards painting an edit
    /// on every candidate it is unsure of. A resumed run may change it.
    #[arg(long)]
    pub change_weight: Option<f64>,
    /// Phase `edit`: the text encoder's learning rate (default: --lr, as the UNet's), under
    /// the same warmup and decay; kohya's `--text_encoder_lr`. Give it again when resuming.
    #[arg(long)]
    pub text_encoder_lr: Option<f64>,
    /// Phase `edit` on the generator: draw only these task families, comma-separated, each
    /// `name` or `name=weight` (e.g. referring_segmentation=2,keypoints); default: all, with
    /// the built-in recipe's weights. A new set needs a new run folder (its pool differs).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Phase `edit`: time each step's phases (batch, forward and backward, update), waiting
    /// for the device between them, and print their means with the progress lines.
    #[arg(long)]
    pub timing: bool,
}

/// `--lr-decay-from FROM` as the optimizer's `[from, to]`, checked against the run's length.
fn decay_until(from: Option<usize>, steps: usize) -> anyhow::Result<Option<[usize; 2]>> {
    match from {
        Some(from) if from >= steps => anyhow::bail!(
            "--lr-decay-from {from} is not before --steps {steps}: the decay runs from that step to the last"
        ),
        other => Ok(other.map(|from| [from, steps])),
    }
}

pub(super) fn run_train(cmd: &TrainCommand) -> anyhow::Result<()> {
    use crate::train::{edit, vae, TrainEvent};
    let args = match cmd {
        TrainCommand::Vae(a) | TrainCommand::Edit(a) => a,
    };
    // The two phases share their flags; one meant for the other phase would do nothing.
    let (phase, other, foreign) = match cmd {
        TrainCommand::Vae(a) => (
            "vae",
            "edit",
            vec![
                ("--vae", a.vae.is_some()),
                ("--base", a.base.is_some()),
                ("--lora-rank", a.lora_rank.is_some()),
                ("--grow", a.grow),
                ("--unet-config", a.unet_config.is_some()),
                ("--text-encoder-config", a.text_encoder_config.is_some()),
                ("--text-encoder-from", a.text_encoder_from.is_some()),
                ("--prediction", a.prediction.is_some()),
                ("--data", a.data.is_some()),
                ("--pool", a.pool.is_some()),
                ("--tasks", !a.tasks.is_empty()),
                ("--min-snr-gamma", a.min_snr_gamma.is_some()),
                ("--change-weight", a.change_weight.is_some()),
                ("--text-encoder-lr", a.text_encoder_lr.is_some()),
                ("--zero-terminal-snr", a.zero_terminal_snr),
                ("--timing", a.timing),
            ],
        ),
        TrainCommand::Edit(a) => (
            "edit",
            "vae",
            vec![
                ("--crop", a.crop.is_some()),
                ("--decoder-only", a.decoder_only),
            ],
        ),
    };
    if let Some((flag, _)) = foreign.iter().find(|(_, given)| *given) {
        anyhow::bail!("{flag} is for `train {other}`, not `train {phase}`");
    }
    let device = crate::support::parse_device(&args.device)?;
    let log_every = args.log_every.max(1);
    let mut on_event = |e: &TrainEvent| match e {
        TrainEvent::Step {
            step,
            total,
            loss,
            grad_norm,
            lr,
            steps_per_s,
            eta_s,
        } => {
            if step % log_every == 0 || step == total {
                eprintln!(
                    "step {step}/{total} loss {loss:.5} grad-norm {grad_norm:.3} lr {lr:.2e} {steps_per_s:.2} steps/s eta {:.0} min",
                    eta_s / 60.0
                );
            }
        }
        TrainEvent::Checkpoint { step, dir } => {
            eprintln!("checkpoint at step {step} in '{}'", dir.display())
        }
        TrainEvent::Instructions { step, probe } => eprintln!(
            "instruction probe at step {step}: changed-cell error {:.4} with the \
             sample's own instruction, {:.4} with another's (ratio {:.2}); from pure noise \
             {:.3} of no edit's, spill {:.2}",
            probe.matched,
            probe.mismatched,
            probe.mismatched / probe.matched.max(1e-12),
            probe.from_noise,
            probe.spill
        ),
        TrainEvent::Samples { step, path } => {
            eprintln!("samples at step {step}: '{}'", path.display())
        }
        TrainEvent::Skipped { count, first } => {
            eprintln!("warning: {count} dataset line(s) left out, the first: {first}")
        }
        TrainEvent::Stopped { step } => eprintln!("stopped at step {step} (run again to resume)"),
        TrainEvent::Phases {
            step,
            steps,
            batch_s,
            passes_s,
            update_s,
        } => {
            if step % log_every == 0 {
                eprintln!(
                    "  mean step time over {steps} steps: batch {:.1} ms, forward and backward \
                     {:.1} ms, update {:.1} ms",
                    batch_s * 1e3,
                    passes_s * 1e3,
                    update_s * 1e3
                )
            }
        }
        TrainEvent::Pool { done, total } => {
            eprintln!(
                "sample pool: {done}/{total} chunks of {} samples ready",
                crate::train::pool::CHUNK
            )
        }
    };
    let result = match cmd {
        TrainCommand::Vae(a) => {
            let mut plan = vae::default_plan(a.out.clone());
            if let Some(c) = a.crop {
                plan.crop = (c > 0).then_some(c);
            }
            plan.decoder_only = a.decoder_only;
            plan.steps = a.steps.unwrap_or(plan.steps);
            plan.batch = a.batch.unwrap_or(plan.batch);
            plan.optim.lr = a.lr.unwrap_or(plan.optim.lr);
            plan.optim.decay = decay_until(a.lr_decay_from, plan.steps)?;
            plan.checkpoint_every = a.checkpoint_every.unwrap_or(plan.checkpoint_every).max(1);
            vae::train(&plan, &device, &mut on_event)
        }
        TrainCommand::Edit(a) => {
            let vae_dir = a.vae.clone().unwrap_or_else(|| match &a.base {
                Some(base) => base.join("vae"),
                None => a.out.join("../vae/vae"),
            });
            let mut plan = edit::default_plan(a.out.clone(), vae_dir);
            if let Some(base) = &a.base {
                let sched = edit::base_scheduler(base);
                plan.prediction = sched.prediction_type;
                plan.zero_terminal_snr = sched.rescale_betas_zero_snr;
            }
            plan.zero_terminal_snr |= a.zero_terminal_snr;
            if let Some(p) = &a.prediction {
                plan.prediction = match p.as_str() {
                    "epsilon" | "eps" => crate::settings::PredictionType::Epsilon,
                    "v" | "v_prediction" => crate::settings::PredictionType::VPrediction,
                    other => anyhow::bail!("--prediction is epsilon or v, not '{other}'"),
                };
            }
            plan.base = a.base.clone();
            if a.grow && (a.base.is_none() || a.lora_rank.is_some()) {
                anyhow::bail!(
                    "--grow fine-tunes a base model in full: pass --base, without --lora-rank"
                );
            }
            plan.grow = a.grow;
            plan.text_encoder_from = a.text_encoder_from.clone();
            plan.timing = a.timing;
            plan.data = a.data.clone();
            plan.lora_rank = a.lora_rank.unwrap_or(0);
            plan.steps = a.steps.unwrap_or(plan.steps);
            plan.batch = a.batch.unwrap_or(plan.batch);
            plan.pool = a.pool.unwrap_or(plan.pool);
            plan.min_snr_gamma = match a.min_snr_gamma {
                Some(g) if !g.is_finite() || g < 0.0 => {
                    anyhow::bail!("--min-snr-gamma is 0 (off) or a positive number, not {g}")
                }
                g => g.unwrap_or(plan.min_snr_gamma),
            };
            plan.change_weight = match a.change_weight {
                Some(w) if !w.is_finite() || w < 0.0 => {
                    anyhow::bail!("--change-weight is 0 (plain loss) or a positive number, not {w}")
                }
                w => w.unwrap_or(plan.change_weight),
            };
            if !a.tasks.is_empty() {
                plan.tasks = parse_task_weights(&a.tasks)?;
            }
            plan.optim.lr = a.lr.unwrap_or(plan.optim.lr);
            if let Some(lr) = a.text_encoder_lr {
                if !lr.is_finite() || lr < 0.0 {
                    anyhow::bail!("--text-encoder-lr is 0 (frozen) or a positive rate, not {lr}");
                }
                if plan.optim.lr <= 0.0 {
                    anyhow::bail!("--text-encoder-lr is relative to a positive --lr");
                }
                plan.optim.lr_scales = vec![("text_encoder.".into(), lr / plan.optim.lr)];
            }
            if a.base.is_some() {
                // A fine-tune's few hundred steps reach the rate asked for (as in the Training
                // window), not 500 steps of warmup.
                plan.optim.warmup_steps = plan.optim.warmup_steps.min(plan.steps / 10);
            }
            plan.optim.decay = decay_until(a.lr_decay_from, plan.steps)?;
            plan.checkpoint_every = a.checkpoint_every.unwrap_or(plan.checkpoint_every).max(1);
            let (unet, clip) = match &a.base {
                Some(base) => edit::base_configs(base)?,
                None => {
                    let from = a.text_encoder_from.as_ref();
                    let clip_config = from.map(|dir| dir.join("text_encoder/config.json"));
                    edit::scratch_configs(
                        &a.out,
                        a.unet_config.as_deref(),
                        a.text_encoder_config.as_deref().or(clip_config.as_deref()),
                    )?
                }
            };
            let never = std::sync::atomic::AtomicBool::new(false);
            edit::train(&plan, &unet, &clip, &device, &never, &mut on_event)
        }
    };
    result.map_err(|e| anyhow::anyhow!(e))
}
