//! Phase 2 of the built-in model, and fine-tuning: the UNet and the text encoder trained
//! together on (source, instruction, target) triples with a frozen VAE, as InstructDiffusion
//! trains: epsilon prediction at a random timestep per sample, the source latent (posterior
//! mean, unscaled) concatenated to the noisy target latent, and conditioning dropout (7.5% of
//! samples lose the text, 7.5% the image, never both).
//!
//! The loss can weight the latent cells where the target differs from the source more, since
//! an instruction's signal is often a few percent of the pixels.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpoint;
use super::optim::AdamWConfig;
use super::pool::{build_or_load, change_map, Pool, PoolSource, PoolSpec};
use super::{images_to_tensor, sample_seed, step_seed, Missing, Run, TrainError, TrainEvent};
use crate::data::sample::{generate, TaskWeights};
use crate::model::clip::{ClipConfig, ClipTextModel, ClipTokenizer};
use crate::model::lora::LoraSpec;
use crate::model::unet::{UNet2DConditionModel, UNetConfig};
use crate::model::vae::AutoencoderKL;
use crate::sample::noise::{NoiseSource, SeededNoise};
use crate::sample::schedule::alphas_cumprod;
use crate::settings::{PredictionType, SchedulerConfig};

mod base;
mod probe;

pub use base::{base_configs, base_scheduler, check_fit, export_model, scratch_configs};
use base::{base_weights, exported_weights, text_encoder_weights};
pub use probe::ProbeResult;
use probe::{write_sample_edits, Probe};

/// An edit-model training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditPlan {
    pub out: PathBuf,
    /// The trained VAE folder (phase 1's `vae/`, or a base model's `vae/`).
    pub vae: PathBuf,
    /// A diffusers folder whose UNet and text encoder are fine-tuned (`None`: trained from
    /// scratch). Its configs replace the ones passed to [`train`].
    #[serde(default)]
    pub base: Option<PathBuf>,
    /// With `base`: the architecture may add to the base's (its `unet/config.json` edited, e.g.
    /// a `DownBlock2D` made a `CrossAttnDownBlock2D`). Weights the base has are taken, new ones
    /// keep their initialisation, and the new transformer blocks' output projections start at
    /// zero, so the grown model first computes exactly what the base did.
    #[serde(default)]
    pub grow: bool,
    /// From scratch (no `base`): the text encoder starts from this diffusers folder's trained
    /// one (weights and config), the UNet from its initialisation, e.g. a new UNet
    /// architecture learning to read an encoder that already tells instructions apart.
    #[serde(default)]
    pub text_encoder_from: Option<PathBuf>,
    /// A dataset folder (`metadata.jsonl`) to train on instead of the generator.
    #[serde(default)]
    pub data: Option<PathBuf>,
    pub steps: usize,
    pub batch: usize,
    pub size: u32,
    pub seed: u64,
    pub optim: AdamWConfig,
    pub checkpoint_every: usize,
    /// Held-out samples edited with the saved model at each checkpoint (0 disables).
    #[serde(default)]
    pub sample_edits: usize,
    /// Extra loss weight on latent cells the edit changes (0 = plain MSE).
    pub change_weight: f64,
    /// What the UNet predicts: epsilon (SD 1.x, InstructDiffusion) or v (better conditioned
    /// at high noise, where an epsilon error is multiplied by sigma in the clean estimate).
    /// Written into the exported scheduler config; a run keeps the one it started with.
    #[serde(default = "epsilon")]
    pub prediction: PredictionType,
    /// The noise schedule rescaled to zero terminal SNR ([`SchedulerConfig`]'s
    /// `rescale_betas_zero_snr`): the last timestep trains on pure noise, as sampling's first
    /// step sees, instead of noise holding 7% of the target. Written into the exported
    /// scheduler config; a run keeps the one it started with. Min-SNR weighting gives that
    /// timestep no weight (its SNR is 0): use it with `min_snr_gamma` 0.
    #[serde(default)]
    pub zero_terminal_snr: bool,
    /// Min-SNR loss weighting (Hang et al., 2023): each timestep's loss weighted by
    /// `min(SNR, gamma) / SNR` (epsilon) or `/ (SNR + 1)` (v); 0 disables.
    #[serde(default)]
    pub min_snr_gamma: f64,
    /// LoRA rank on the UNet's attention projections, with everything else frozen (0: a full
    /// fine-tune of the UNet and text encoder). Needs `base`.
    #[serde(default)]
    pub lora_rank: usize,
    /// Samples generated and encoded once into `OUT/pool/` and drawn from at random (0: a
    /// fresh sample for every draw, encoded at every step).
    #[serde(default)]
    pub pool: usize,
    pub text_dropout: f64,
    pub image_dropout: f64,
    pub tasks: TaskWeights,
    /// Time each step's phases, waiting for the device between them, and report their means
    /// ([`TrainEvent::Phases`]): where a GPU step's time goes, without a profiler.
    #[serde(default)]
    pub timing: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    step: usize,
    plan: EditPlan,
}

fn epsilon() -> PredictionType {
    PredictionType::Epsilon
}

impl EditPlan {
    /// The training noise schedule: SD 1.x's, with this plan's prediction type and terminal SNR.
    pub fn scheduler(&self) -> SchedulerConfig {
        SchedulerConfig {
            prediction_type: self.prediction,
            rescale_betas_zero_snr: self.zero_terminal_snr,
            ..SchedulerConfig::default()
        }
    }
}

/// The seed of the trainer's sample stream: its pool is
/// [`super::sample_seed`]`(DEFAULT_SEED, 0, 1, k)` for k in 0..pool.
pub const DEFAULT_SEED: u64 = 2;

/// The default plan for the built-in model.
pub fn default_plan(out: PathBuf, vae: PathBuf) -> EditPlan {
    EditPlan {
        out,
        vae,
        base: None,
        grow: false,
        text_encoder_from: None,
        data: None,
        steps: 40_000,
        batch: 8,
        size: 128,
        seed: DEFAULT_SEED,
        optim: AdamWConfig {
            lr: 2e-4,
            warmup_steps: 500,
            ema_decay: 0.999,
            ..Default::default()
        },
        checkpoint_every: 250,
        sample_edits: 4,
        change_weight: 4.0,
        prediction: PredictionType::VPrediction,
        zero_terminal_snr: false,
        min_snr_gamma: 5.0,
        lora_rank: 0,
        pool: 20_000,
        text_dropout: 0.075,
        image_dropout: 0.075,
        tasks: TaskWeights::default(),
        timing: false,
    }
}

/// One step's training pairs.
struct Batch {
    source: Tensor,
    target: Tensor,
    changed: Tensor,
    prompts: Vec<String>,
}

/// `n` samples of the pool, drawn with replacement.
fn draw(pool: &Pool, n: usize, rng: &mut ChaCha8Rng, device: &Device) -> anyhow::Result<Batch> {
    let idx: Vec<u32> = (0..n)
        .map(|_| rng.random_range(0..pool.len()) as u32)
        .collect();
    let ids = Tensor::new(idx.as_slice(), device)?;
    Ok(Batch {
        source: pool.source.index_select(&ids, 0)?,
        target: pool.target.index_select(&ids, 0)?,
        changed: pool.changed.index_select(&ids, 0)?,
        prompts: idx
            .iter()
            .map(|&i| pool.prompts[i as usize].clone())
            .collect(),
    })
}

/// `plan.batch` freshly generated samples of step `step`, encoded now.
fn fresh(
    plan: &EditPlan,
    step: usize,
    vae: &AutoencoderKL,
    device: &Device,
) -> anyhow::Result<Batch> {
    let samples: Vec<_> = (0..plan.batch)
        .map(|i| {
            generate(
                sample_seed(plan.seed, step, plan.batch, i),
                plan.size,
                &plan.tasks,
            )
        })
        .collect();
    let src = images_to_tensor(
        &samples.iter().map(|s| &s.input).collect::<Vec<_>>(),
        device,
    )?;
    let tgt = images_to_tensor(
        &samples.iter().map(|s| &s.target).collect::<Vec<_>>(),
        device,
    )?;
    let f = vae.config.downscale();
    Ok(Batch {
        changed: change_map(&src, &tgt, f)?,
        source: vae.encode_mean(&src)?.detach(),
        target: (vae.encode_mean(&tgt)? * vae.config.scaling_factor)?.detach(),
        prompts: samples.into_iter().map(|s| s.instruction).collect(),
    })
}

/// The min-SNR weight of a timestep with cumulative alpha `acp` (1 when `gamma` is 0).
fn min_snr_weight(acp: f64, gamma: f64, prediction: PredictionType) -> f64 {
    if gamma <= 0.0 {
        return 1.0;
    }
    let snr = acp / (1.0 - acp).max(1e-12);
    match prediction {
        PredictionType::Epsilon => snr.min(gamma) / snr,
        PredictionType::VPrediction => snr.min(gamma) / (snr + 1.0),
    }
}

/// Trains (or resumes) the UNet and text encoder of `plan`. Setting `stop` ends the run after
/// the current step with a checkpoint (and a [`TrainEvent::Stopped`]); running the same plan
/// again resumes it.
pub fn train(
    plan: &EditPlan,
    unet_cfg: &UNetConfig,
    clip_cfg: &ClipConfig,
    device: &Device,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<(), TrainError> {
    let vae = super::vae::load_frozen(&plan.vae, device)?;
    check_fit(unet_cfg, clip_cfg, vae.config.latent_channels)?;
    let latent_rgb = super::vae::preview_factors(&vae, plan.size, device)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let ckpt = Checkpoint::new(&plan.out.join("checkpoint"));
    let (unet, clip, frozen) = if plan.lora_rank > 0 {
        // Base weights frozen (plain tensors, no gradients); only the adapters are variables.
        let Some(dir) = &plan.base else {
            return Err(anyhow::anyhow!("a LoRA fine-tunes a base model: pass --base").into());
        };
        let frozen = base_weights(dir, device)?;
        let fvb = VarBuilder::from_tensors(frozen.clone(), DType::F32, device);
        let spec = LoraSpec {
            rank: plan.lora_rank,
            alpha: plan.lora_rank as f64,
            vb: vb.clone(),
        };
        let unet = UNet2DConditionModel::with_lora(unet_cfg, None, Some(spec), fvb.pp("unet"))?;
        let clip = ClipTextModel::new(clip_cfg, fvb.pp("text_encoder").pp("text_model"))?;
        (unet, clip, Some(frozen))
    } else {
        let unet = UNet2DConditionModel::new(unet_cfg, None, vb.pp("unet"))?;
        let clip = ClipTextModel::new(clip_cfg, vb.pp("text_encoder").pp("text_model"))?;
        (unet, clip, None)
    };
    let tokenizer = ClipTokenizer::bundled(clip_cfg.max_position_embeddings);
    let (base, missing) = match (&plan.base, &plan.text_encoder_from) {
        (Some(dir), _) if frozen.is_none() && !ckpt.exists() => {
            let missing = if plan.grow {
                Missing::Grow
            } else {
                Missing::Refuse
            };
            (Some(base_weights(dir, device)?), missing)
        }
        (None, Some(dir)) if !ckpt.exists() => {
            (Some(text_encoder_weights(dir, device)?), Missing::Fresh)
        }
        _ => (None, Missing::Refuse),
    };
    if let Some(meta) = ckpt.exists().then(|| ckpt.meta::<Meta>()).transpose()? {
        if meta.plan.prediction != plan.prediction {
            return Err(anyhow::anyhow!(
                "the run in '{}' predicts {:?}; resume it with the same prediction type or start a new run folder",
                plan.out.display(),
                meta.plan.prediction
            )
            .into());
        }
        if meta.plan.zero_terminal_snr != plan.zero_terminal_snr {
            return Err(anyhow::anyhow!(
                "the run in '{}' trains with zero terminal SNR {}; resume it the same way \
                 (--zero-terminal-snr) or start a new run folder",
                plan.out.display(),
                if meta.plan.zero_terminal_snr {
                    "on"
                } else {
                    "off"
                }
            )
            .into());
        }
    }
    let mut opt = super::start(
        &varmap,
        plan.seed,
        &plan.optim,
        &ckpt,
        base.as_ref(),
        missing,
    )?;
    drop(base);
    let acp: Vec<f64> = alphas_cumprod(&plan.scheduler());
    let spec = |source| PoolSpec {
        dir: plan.out.join("pool"),
        source,
        size: plan.size,
        vae_dir: &plan.vae,
    };
    let source = match (&plan.data, plan.pool) {
        (Some(dir), _) => Some(PoolSource::Dataset(dir)),
        (None, 0) => None,
        (None, samples) => Some(PoolSource::Generator {
            seed: plan.seed,
            samples,
            tasks: &plan.tasks,
        }),
    };
    let pool = match source {
        None => None,
        Some(source) => {
            let pool = build_or_load(&spec(source), &vae, device, &mut |done, total| {
                on_event(&TrainEvent::Pool { done, total })
            })?;
            if !pool.skipped.is_empty() {
                on_event(&TrainEvent::Skipped {
                    count: pool.skipped.len(),
                    first: pool.skipped[0].clone(),
                });
            }
            Some(pool)
        }
    };
    let probe = Probe::new(plan, &vae, device)?;
    // One share per CPU thread for a narrow network; a GPU takes the batch whole.
    let split =
        crate::model::kernels::splits_batches(&unet_cfg.block_out_channels) && device.is_cpu();
    let mut run = Run::new(opt.step);
    let mut phases = super::Phases::new(plan.timing);
    while opt.step < plan.steps {
        let step = opt.step;
        let started = std::time::Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(step_seed(plan.seed, step));
        let batch = match &pool {
            Some(pool) => draw(pool, plan.batch, &mut rng, device)?,
            None => fresh(plan, step, &vae, device)?,
        };
        let (src_lat, tgt_lat) = (batch.source, batch.target);
        let mut keep_image = Vec::with_capacity(plan.batch);
        let mut ids = Vec::with_capacity(plan.batch * clip_cfg.max_position_embeddings);
        let mut ts = Vec::with_capacity(plan.batch);
        let mut a = Vec::with_capacity(plan.batch);
        let mut b = Vec::with_capacity(plan.batch);
        let mut snr_w = Vec::with_capacity(plan.batch);
        for prompt in &batch.prompts {
            let r: f64 = rng.random();
            let drop_text = r < plan.text_dropout;
            let drop_image = !drop_text && r < plan.text_dropout + plan.image_dropout;
            keep_image.push(if drop_image { 0f32 } else { 1.0 });
            let prompt = if drop_text { "" } else { prompt.as_str() };
            ids.extend(tokenizer.encode(prompt).map_err(anyhow::Error::msg)?);
            let t = rng.random_range(0..acp.len());
            ts.push(t as f32);
            a.push(acp[t].sqrt() as f32);
            b.push((1.0 - acp[t]).sqrt() as f32);
            snr_w.push(min_snr_weight(acp[t], plan.min_snr_gamma, plan.prediction) as f32);
        }
        let n = plan.batch;
        let col = |v: Vec<f32>| Tensor::from_vec(v, (n, 1, 1, 1), device);
        let src_lat = src_lat.broadcast_mul(&col(keep_image)?)?;
        let eps = SeededNoise::new(rng.random()).sample(tgt_lat.shape(), device)?;
        let (a, b) = (col(a)?, col(b)?);
        let noisy = (tgt_lat.broadcast_mul(&a)? + eps.broadcast_mul(&b)?)?;
        let target = match plan.prediction {
            PredictionType::Epsilon => eps,
            // v = sqrt(acp) eps - sqrt(1 - acp) x0 (diffusers' get_velocity).
            PredictionType::VPrediction => (eps.broadcast_mul(&a)? - tgt_lat.broadcast_mul(&b)?)?,
        };
        let ids = Tensor::from_vec(ids, (n, clip_cfg.max_position_embeddings), device)?;
        let t = Tensor::from_vec(ts, n, device)?;
        let input = Tensor::cat(&[&noisy, &src_lat], 1)?;
        let snr_w = col(snr_w)?;
        let weight = match plan.change_weight > 0.0 {
            true => Some(((batch.changed * plan.change_weight)? + 1.0)?),
            false => None,
        };
        // The loss is the weighted mean of the squared errors over the batch; each share of the
        // batch divides its sum by the whole batch's normaliser, so the shares add up to it.
        let norm = target.elem_count() as f64
            * match &weight {
                Some(w) => w.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?,
                None => 1.0,
            };
        let batch_ready = phases.mark(device)?;
        let (loss, grads) = super::backward_in_shares(n, split, |r| {
            let share = |x: &Tensor| x.narrow(0, r.start, r.len());
            let text = clip.forward(&share(&ids)?)?;
            let pred = unet.forward(&share(&input)?, &share(&t)?, &text)?;
            let err = (pred - share(&target)?)?
                .sqr()?
                .broadcast_mul(&share(&snr_w)?)?;
            let err = match &weight {
                Some(w) => err.broadcast_mul(&share(w)?)?,
                None => err,
            };
            err.sum_all()? / norm
        })?;
        let passes_done = phases.mark(device)?;
        run.optimize(&mut opt, loss, &grads, plan.steps, &ckpt.dir, on_event)?;
        if let Some(event) = phases.add(opt.step, started, batch_ready, passes_done, device)? {
            on_event(&event);
        }
        let stopping = stop.load(Ordering::SeqCst);
        if stopping || opt.step % plan.checkpoint_every == 0 || opt.step == plan.steps {
            ckpt.save(
                &opt.state()?,
                &Meta {
                    step: opt.step,
                    plan: plan.clone(),
                },
            )?;
            let weights = exported_weights(&opt, frozen.as_ref(), plan)?;
            export_model(
                &plan.out.join("model"),
                plan,
                (unet_cfg, clip_cfg),
                &weights,
                &latent_rgb,
            )?;
            run.kept = opt.step;
            on_event(&TrainEvent::Checkpoint {
                step: opt.step,
                dir: ckpt.dir.clone(),
            });
            if stopping {
                on_event(&TrainEvent::Stopped { step: opt.step });
                return Ok(());
            }
            if let Some(probe) = &probe {
                // The exported (EMA) weights: the model a user gets, steadier than the live ones.
                let vb = VarBuilder::from_tensors(weights, DType::F32, device);
                let probe = probe.measure(
                    &UNet2DConditionModel::new(unet_cfg, None, vb.pp("unet"))?,
                    &ClipTextModel::new(clip_cfg, vb.pp("text_encoder").pp("text_model"))?,
                    &tokenizer,
                    plan.prediction,
                )?;
                on_event(&TrainEvent::Instructions {
                    step: opt.step,
                    probe,
                });
            }
            if plan.sample_edits > 0 {
                let path = write_sample_edits(plan, opt.step)?;
                on_event(&TrainEvent::Samples {
                    step: opt.step,
                    path,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::probe::changed_error;
    use super::*;
    use crate::sample::schedule::ZERO_SNR_STAND_IN;

    #[test]
    fn min_snr_weights() {
        use PredictionType::*;
        // SNR = acp / (1 - acp): acp 10/11 -> SNR 10, acp 1/2 -> SNR 1.
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(min_snr_weight(10.0 / 11.0, 5.0, Epsilon), 0.5));
        assert!(close(min_snr_weight(0.5, 5.0, Epsilon), 1.0));
        assert!(close(
            min_snr_weight(10.0 / 11.0, 5.0, VPrediction),
            5.0 / 11.0
        ));
        assert!(close(min_snr_weight(0.5, 5.0, VPrediction), 0.5));
        assert_eq!(min_snr_weight(0.3, 0.0, VPrediction), 1.0);
    }

    /// A probe on random latents with a small random model: the two errors differ while the
    /// model reads the text, and are equal once its text embeddings carry nothing.
    #[test]
    fn instruction_probe_compares_own_and_other_instructions() {
        let dev = Device::Cpu;
        let mut varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let (ucfg, ccfg) = (UNetConfig::tiny(), ClipConfig::tiny());
        let unet = UNet2DConditionModel::new(&ucfg, None, vb.pp("unet")).unwrap();
        let clip = ClipTextModel::new(&ccfg, vb.pp("clip")).unwrap();
        crate::train::init_weights(&varmap, 3).unwrap();
        let n = 3;
        let noise = |seed| {
            SeededNoise::new(seed)
                .sample(&(n, 8, 8, 8).into(), &dev)
                .unwrap()
        };
        let col = |v: [f32; 3]| Tensor::from_vec(v.to_vec(), (n, 1, 1, 1), &dev).unwrap();
        // The edits change the left half of each latent.
        let left: Vec<f32> = (0..n * 64).map(|i| (i % 8 < 4) as u8 as f32).collect();
        let probe_at = |a: [f32; 3], b: [f32; 3], t: [f32; 3]| Probe {
            source: noise(1),
            target: noise(2),
            changed: Tensor::from_vec(left.clone(), (n, 1, 8, 8), &dev).unwrap(),
            eps: noise(3),
            a: col(a),
            b: col(b),
            t: Tensor::new(&t, &dev).unwrap(),
            no_edit: 2.0,
            change: 3.0,
            last_acp: alphas_cumprod(&SchedulerConfig::default())[999],
            timesteps: 1000,
            prompts: vec![
                "paint the red circle blue".into(),
                "remove the star".into(),
                "place a green dot on the left knee".into(),
            ],
        };
        let probe = probe_at([0.9, 0.6, 0.3], [0.43, 0.8, 0.95], [100., 500., 900.]);
        let tok = ClipTokenizer::bundled(77);
        let r = probe
            .measure(&unet, &clip, &tok, PredictionType::VPrediction)
            .unwrap();
        let (own, other) = (r.matched, r.mismatched);
        assert!(own.is_finite() && own > 0.0 && other > 0.0);
        assert!((own - other).abs() > 1e-6 * own, "{own} vs {other}");
        // From pure noise, on a zero-terminal-SNR schedule (the stand-in acp 2^-24): the input
        // is the noise alone and a v-prediction's clean estimate is -v there, so the reading is
        // the error of -v against the target over the error of no edit.
        let probe = Probe {
            last_acp: ZERO_SNR_STAND_IN,
            ..probe_at([0.9, 0.6, 0.3], [0.43, 0.8, 0.95], [100., 500., 900.])
        };
        let r = probe
            .measure(&unet, &clip, &tok, PredictionType::VPrediction)
            .unwrap();
        let mut ids = Vec::new();
        for p in &probe.prompts {
            ids.extend(tok.encode(p).unwrap());
        }
        let text = clip
            .forward(&Tensor::from_vec(ids, (n, 77), &dev).unwrap())
            .unwrap();
        let input = Tensor::cat(&[&probe.eps, &probe.source], 1).unwrap();
        let v = unet
            .forward(&input, &Tensor::new(&[999f32; 3], &dev).unwrap(), &text)
            .unwrap();
        let expected = changed_error(&v.neg().unwrap(), &probe.target, &probe.changed).unwrap()
            / probe.no_edit;
        assert!(
            (r.from_noise - expected).abs() < 1e-3 * expected,
            "{} vs {expected}",
            r.from_noise
        );
        // The spill: the same estimate's squared error over the right half, over the change.
        let right = (v.neg().unwrap() - &probe.target)
            .unwrap()
            .sqr()
            .unwrap()
            .narrow(3, 4, 4)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!(r.spill > 0.0);
        assert!(
            (r.spill - right / 3.0).abs() < 1e-3 * r.spill,
            "{} vs {}",
            r.spill,
            right / 3.0
        );
        // Text embeddings of zeros, whatever the prompt: nothing to tell the prompts apart.
        for part in ["weight", "bias"] {
            let name = format!("clip.final_layer_norm.{part}");
            let zeros = varmap.data().lock().unwrap()[&name].zeros_like().unwrap();
            varmap.set_one(&name, zeros).unwrap();
        }
        let r = probe
            .measure(&unet, &clip, &tok, PredictionType::Epsilon)
            .unwrap();
        let (own, other) = (r.matched, r.mismatched);
        assert_eq!(own, other);
    }
}
