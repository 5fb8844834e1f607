//! Phase 2 of the built-in model, and fine-tuning: the UNet and the text encoder trained
//! together on (source, instruction, target) triples with a frozen VAE, as InstructDiffusion
//! trains: epsilon prediction at a random timestep per sample, the source latent (posterior
//! mean, unscaled) concatenated to the noisy target latent, and conditioning dropout (7.5% of
//! samples lose the text, 7.5% the image, never both).
//!
//! The loss can weight the latent cells where the target differs from the source more, since
//! an instruction's signal is often a few percent of the pixels.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{save_weights, Checkpoint};
use super::optim::{AdamW, AdamWConfig};
use super::pool::{build_or_load, change_map, Pool, PoolSource, PoolSpec};
use super::{images_to_tensor, sample_seed, step_seed, Missing, Run, TrainError, TrainEvent};
use crate::data::sample::{generate, TaskWeights};
use crate::model::clip::{ClipConfig, ClipTextModel, ClipTokenizer};
use crate::model::lora::LoraSpec;
use crate::model::unet::{UNet2DConditionModel, UNetConfig};
use crate::model::vae::AutoencoderKL;
use crate::sample::noise::{NoiseSource, SeededNoise};
use crate::sample::schedule::{alphas_cumprod, ZERO_SNR_STAND_IN};
use crate::settings::{PredictionType, SamplingDefaults, SchedulerConfig, DEFAULTS_FILE};

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

/// The model's weights to export (`unet.*`, `text_encoder.*`): the EMA of a full run; for a
/// LoRA, the frozen base with the adapters' EMA merged in, and the adapters alone written to
/// `OUT/lora/pytorch_lora_weights.safetensors` (diffusers' `load_lora_weights` naming).
fn exported_weights(
    opt: &AdamW,
    frozen: Option<&HashMap<String, Tensor>>,
    plan: &EditPlan,
) -> anyhow::Result<HashMap<String, Tensor>> {
    let ema = opt.ema_weights();
    let Some(frozen) = frozen else {
        return Ok(ema);
    };
    let mut merged = frozen.clone();
    for (name, a) in &ema {
        let Some(layer) = name.strip_suffix(&format!(".{}", crate::model::lora::A)) else {
            continue;
        };
        let b = &ema[&format!("{layer}.{}", crate::model::lora::B)];
        let key = format!("{layer}.weight");
        let w = frozen
            .get(&key)
            .ok_or_else(|| anyhow::anyhow!("the base has no '{key}' to merge into"))?;
        merged.insert(
            key,
            crate::model::lora::merge(w, a, b, plan.lora_rank as f64)?,
        );
    }
    save_weights(
        &ema,
        &plan.out.join("lora/pytorch_lora_weights.safetensors"),
        false,
    )?;
    Ok(merged)
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

/// Writes the diffusers folder of the EMA weights to `dir` (through `dir.tmp` and a rename).
pub fn export_model(
    dir: &Path,
    plan: &EditPlan,
    (unet_cfg, clip_cfg): (&UNetConfig, &ClipConfig),
    weights: &HashMap<String, Tensor>,
    latent_rgb: &[[f32; 3]],
) -> anyhow::Result<()> {
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let part = |prefix: &str| -> HashMap<String, Tensor> {
        weights
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
            .collect()
    };
    let write_json = |p: PathBuf, v: &serde_json::Value| -> anyhow::Result<()> {
        std::fs::create_dir_all(p.parent().expect("has a parent"))?;
        Ok(std::fs::write(p, serde_json::to_string_pretty(v)?)?)
    };
    save_weights(
        &part("unet."),
        &tmp.join("unet/diffusion_pytorch_model.safetensors"),
        true,
    )?;
    write_json(tmp.join("unet/config.json"), &unet_cfg.to_json())?;
    save_weights(
        &part("text_encoder."),
        &tmp.join("text_encoder/model.safetensors"),
        true,
    )?;
    write_json(tmp.join("text_encoder/config.json"), &clip_cfg.to_json())?;
    std::fs::create_dir_all(tmp.join("vae"))?;
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(plan.vae.join(f), tmp.join("vae").join(f))?;
    }
    std::fs::create_dir_all(tmp.join("tokenizer"))?;
    std::fs::write(
        tmp.join("tokenizer/tokenizer.json"),
        ClipTokenizer::BUNDLED_JSON,
    )?;
    write_json(
        tmp.join("scheduler/scheduler_config.json"),
        &serde_json::json!({
            "_class_name": "EulerAncestralDiscreteScheduler",
            "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "prediction_type": plan.prediction,
            "rescale_betas_zero_snr": plan.zero_terminal_snr
        }),
    )?;
    write_json(
        tmp.join("model_index.json"),
        &serde_json::json!({
            "_class_name": "StableDiffusionInstructPix2PixPipeline",
            "_instructdiffusion_note": "trained by `instructdiffusion train`; guidance formula in instructdiffusion.json",
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizerFast"],
            "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"], "safety_checker": [null, null],
            "feature_extractor": [null, null], "requires_safety_checker": false
        }),
    )?;
    // The resize rule works in multiples of 64.
    let resolution = (plan.size as usize).div_ceil(64) * 64;
    let defaults = SamplingDefaults {
        steps: 20,
        resolution,
        latent_rgb: Some(latent_rgb.to_vec()),
        // Taught with this crate's templates.
        phrasing: Some(crate::tasks::Phrasing::Templates),
        ..SamplingDefaults::instructdiffusion()
    };
    write_json(tmp.join(DEFAULTS_FILE), &serde_json::to_value(&defaults)?)?;
    let old = dir.with_extension("old");
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old)?;
    }
    std::fs::rename(&tmp, dir)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// The UNet and text-encoder configs of a diffusers folder (a fine-tune's base).
pub fn base_configs(dir: &Path) -> anyhow::Result<(UNetConfig, ClipConfig)> {
    let hint = "a fine-tune's base must be a diffusers folder";
    Ok((
        read_unet_config(&dir.join("unet/config.json"), hint)?,
        read_clip_config(&dir.join("text_encoder/config.json"), hint)?,
    ))
}

fn read_config<T: serde::de::DeserializeOwned>(path: &Path, hint: &str) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading '{}': {e} ({hint})", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("'{}': {e} ({hint})", path.display()))
}

/// A diffusers `UNet2DConditionModel` config.json.
fn read_unet_config(path: &Path, hint: &str) -> anyhow::Result<UNetConfig> {
    let json: crate::model::unet::UNetConfigJson = read_config(path, hint)?;
    UNetConfig::try_from(json).map_err(|e| anyhow::anyhow!("'{}': {e}", path.display()))
}

/// A transformers `CLIPTextModel` config.json.
fn read_clip_config(path: &Path, hint: &str) -> anyhow::Result<ClipConfig> {
    let json: crate::model::clip::ClipConfigJson = read_config(path, hint)?;
    ClipConfig::try_from(json).map_err(|e| anyhow::anyhow!("'{}': {e}", path.display()))
}

/// The architecture of a run from scratch in `out`: once the run has a checkpoint, the one it
/// started with (kept in `out/architecture/`, so a resume needs no flags and a different one is
/// refused); before that, `unet` and `text_encoder` (config.json files) where given, else the
/// built-in model's, recorded there for the resumes.
pub fn scratch_configs(
    out: &Path,
    unet: Option<&Path>,
    text_encoder: Option<&Path>,
) -> anyhow::Result<(UNetConfig, ClipConfig)> {
    let hint = "a diffusers UNet2DConditionModel / transformers CLIPTextModel config.json";
    let given = (
        unet.map(|p| read_unet_config(p, hint))
            .transpose()?
            .unwrap_or_else(UNetConfig::tiny),
        text_encoder
            .map(|p| read_clip_config(p, hint))
            .transpose()?
            .unwrap_or_else(ClipConfig::tiny),
    );
    let dir = out.join("architecture");
    let (unet_file, clip_file) = (dir.join("unet.json"), dir.join("text_encoder.json"));
    if Checkpoint::new(&out.join("checkpoint")).exists() && unet_file.exists() {
        let hint = "written when the run started";
        let started = (
            read_unet_config(&unet_file, hint)?,
            read_clip_config(&clip_file, hint)?,
        );
        let differs = |flag: Option<&Path>, same: bool| flag.is_some() && !same;
        if differs(unet, given.0 == started.0) || differs(text_encoder, given.1 == started.1) {
            anyhow::bail!(
                "the run in '{}' started with another architecture (its '{}'): resume it without \
                 --unet-config / --text-encoder-config, or start a new run folder",
                out.display(),
                dir.display()
            );
        }
        return Ok(started);
    }
    std::fs::create_dir_all(&dir)?;
    let pretty = |v: serde_json::Value| serde_json::to_string_pretty(&v).map(|s| s + "\n");
    crate::imageio::write_atomic(&unet_file, pretty(given.0.to_json())?.as_bytes())?;
    crate::imageio::write_atomic(&clip_file, pretty(given.1.to_json())?.as_bytes())?;
    Ok(given)
}

/// Refuses a UNet that cannot work with this VAE and text encoder, saying which number to set.
pub fn check_fit(
    unet: &UNetConfig,
    clip: &ClipConfig,
    latent_channels: usize,
) -> anyhow::Result<()> {
    let l = latent_channels;
    if unet.in_channels != 2 * l || unet.out_channels != l {
        anyhow::bail!(
            "the UNet takes {} channels in and gives {} out, but this VAE's latents have {l}: an \
             instruction-editing UNet takes the noisy and the source latents (in_channels {}) and \
             predicts one latent (out_channels {l})",
            unet.in_channels,
            unet.out_channels,
            2 * l
        );
    }
    if unet.cross_attention_dim != clip.hidden_size {
        anyhow::bail!(
            "the UNet's cross_attention_dim is {} but the text encoder's hidden_size is {}: they \
             must be equal",
            unet.cross_attention_dim,
            clip.hidden_size
        );
    }
    Ok(())
}

/// A diffusers folder's noise schedule (its scheduler config; SD 1.x's, epsilon, when absent):
/// a fine-tune keeps what its UNet predicts and where its schedule ends.
pub fn base_scheduler(dir: &Path) -> SchedulerConfig {
    std::fs::read_to_string(dir.join("scheduler/scheduler_config.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<SchedulerConfig>(&s).ok())
        .unwrap_or_default()
}

/// The UNet and text-encoder weights of a diffusers folder, named as the trainer names its
/// variables (`unet.*`, `text_encoder.*`).
fn base_weights(dir: &Path, device: &Device) -> anyhow::Result<HashMap<String, Tensor>> {
    let mut all = text_encoder_weights(dir, device)?;
    all.extend(weights_of(
        dir,
        "unet.",
        "unet/diffusion_pytorch_model.safetensors",
        device,
    )?);
    Ok(all)
}

/// The text encoder's weights of a diffusers folder, named as the trainer's variables.
fn text_encoder_weights(dir: &Path, device: &Device) -> anyhow::Result<HashMap<String, Tensor>> {
    weights_of(
        dir,
        "text_encoder.",
        "text_encoder/model.safetensors",
        device,
    )
}

/// The weights of `dir/file`, each name behind `prefix` ("unet." or "text_encoder.").
fn weights_of(
    dir: &Path,
    prefix: &str,
    file: &str,
    device: &Device,
) -> anyhow::Result<HashMap<String, Tensor>> {
    let p = dir.join(file);
    let tensors = candle_core::safetensors::load(&p, device).map_err(|e| {
        anyhow::anyhow!(
            "reading '{}': {}",
            p.display(),
            crate::model::load::error_message(&e)
        )
    })?;
    // transformers 5 saves the text encoder without the `text_model.` prefix of 4.x.
    let inner = |k: &str| match prefix {
        "text_encoder." if !k.starts_with("text_model.") => format!("text_model.{k}"),
        _ => k.to_string(),
    };
    Ok(tensors
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{}", inner(&k)), v))
        .collect())
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

/// `n` held-out examples (source, target, instruction, task name): the generator's held-out
/// seeds from `first` on, or a dataset run's first lines.
fn held_out_examples(
    plan: &EditPlan,
    first: usize,
    n: usize,
) -> anyhow::Result<Vec<(RgbImage, RgbImage, String, String)>> {
    Ok(match &plan.data {
        // A dataset has no held-out lines: its first ones.
        Some(dir) => super::pool::dataset_examples(dir, plan.size, n)?,
        None => (first..first + n)
            .map(|i| {
                let x = generate(
                    super::HELD_OUT_FIRST_SEED + i as u64,
                    plan.size,
                    &plan.tasks,
                );
                (x.input, x.target, x.instruction, x.task.name().to_string())
            })
            .collect(),
    })
}

/// Held-out samples of the instruction probe (after the sample edits' ones).
const PROBE_FIRST: usize = 1000;
const PROBE_SAMPLES: usize = 16;

/// The instruction probe's fixed inputs: the latents, the changed-cell map, noise, timesteps.
struct Probe {
    source: Tensor,
    target: Tensor,
    changed: Tensor,
    /// The noise every noisy latent is made with.
    eps: Tensor,
    a: Tensor,
    b: Tensor,
    t: Tensor,
    /// The error of "no edit" (the source latent as the answer) over the changed cells.
    no_edit: f64,
    /// The edits' own change: the squared difference of source and target latents summed
    /// over the changed cells.
    change: f64,
    /// `alphas_cumprod` of the schedule's last timestep (diffusers' stand-in 2^-24 for a
    /// zero-terminal-SNR schedule's 0), where the pure-noise reading is taken.
    last_acp: f64,
    /// The schedule's number of training timesteps.
    timesteps: usize,
    prompts: Vec<String>,
}

/// What the probe measures with the model of one checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeResult {
    /// The error of the clean-latent estimate over the changed cells (timesteps spread over
    /// the schedule) with each sample's own instruction.
    pub matched: f64,
    /// The same with the next sample's instruction.
    pub mismatched: f64,
    /// The error with the own instruction at the schedule's last timestep with the noise alone
    /// as input (what sampling's first step sees), relative to "no edit":
    /// 1 when nothing of the edit is predicted from noise, 0 when all of it is (the edit is
    /// fixed by the source and the instruction, so a model that grounds the words needs no
    /// hint from the noisy latent).
    pub from_noise: f64,
    /// From pure noise too: the error over the cells the edits keep, summed, as a share of
    /// the edits' own change (`Probe::change`). A model unsure which object the words name
    /// paints the edit on several: `from_noise` can fall while this grows (as the loss
    /// weight on changed cells trades one for the other).
    pub spill: f64,
}

impl Probe {
    fn new(plan: &EditPlan, vae: &AutoencoderKL, device: &Device) -> anyhow::Result<Option<Self>> {
        let examples = held_out_examples(plan, PROBE_FIRST, PROBE_SAMPLES)?;
        let n = examples.len();
        if n < 2 {
            return Ok(None);
        }
        let src = images_to_tensor(&examples.iter().map(|e| &e.0).collect::<Vec<_>>(), device)?;
        let tgt = images_to_tensor(&examples.iter().map(|e| &e.1).collect::<Vec<_>>(), device)?;
        let target = (vae.encode_mean(&tgt)? * vae.config.scaling_factor)?;
        // Timesteps spread over the schedule, the same every time.
        let acp = alphas_cumprod(&plan.scheduler());
        let ts: Vec<usize> = (0..n).map(|i| 100 + i * 800 / (n - 1)).collect();
        let col = |v: Vec<f32>| Tensor::from_vec(v, (n, 1, 1, 1), device);
        let source = vae.encode_mean(&src)?;
        let changed = change_map(&src, &tgt, vae.config.downscale())?;
        let scaled = (&source * vae.config.scaling_factor)?;
        let no_edit = changed_error(&scaled, &target, &changed)?;
        let change = masked_sum(&scaled, &target, &changed)?;
        Ok(Some(Self {
            a: col(ts.iter().map(|&t| acp[t].sqrt() as f32).collect())?,
            b: col(ts.iter().map(|&t| (1.0 - acp[t]).sqrt() as f32).collect())?,
            eps: SeededNoise::new(PROBE_FIRST as u64).sample(target.shape(), device)?,
            changed,
            source,
            target,
            t: Tensor::from_vec(ts.iter().map(|&t| t as f32).collect(), n, device)?,
            no_edit,
            change,
            last_acp: acp[acp.len() - 1].max(ZERO_SNR_STAND_IN),
            timesteps: acp.len(),
            prompts: examples.into_iter().map(|e| e.2).collect(),
        }))
    }

    /// The errors of the model's clean-latent estimates over the cells the edits change
    /// ([`ProbeResult`]).
    fn measure(
        &self,
        unet: &UNet2DConditionModel,
        clip: &ClipTextModel,
        tokenizer: &ClipTokenizer,
        prediction: PredictionType,
    ) -> anyhow::Result<ProbeResult> {
        let n = self.prompts.len();
        let device = self.t.device();
        let text = |offset: usize| -> anyhow::Result<Tensor> {
            let mut ids = Vec::new();
            for i in 0..n {
                ids.extend(
                    tokenizer
                        .encode(&self.prompts[(i + offset) % n])
                        .map_err(anyhow::Error::msg)?,
                );
            }
            let len = ids.len() / n;
            Ok(clip
                .forward(&Tensor::from_vec(ids, (n, len), device)?)?
                .detach())
        };
        // The clean-latent estimate; `a` scales the target into the noisy latent, `leak` of
        // it (0: pure noise).
        let estimate = |text: &Tensor,
                        a: &Tensor,
                        b: &Tensor,
                        t: &Tensor,
                        leak: f64|
         -> anyhow::Result<Tensor> {
            let noisy = ((self.target.broadcast_mul(a)? * leak)? + self.eps.broadcast_mul(b)?)?;
            let input = Tensor::cat(&[&noisy, &self.source], 1)?;
            let out = unet.forward(&input, t, text)?.detach();
            Ok(match prediction {
                PredictionType::Epsilon => (&noisy - out.broadcast_mul(b)?)?.broadcast_div(a)?,
                PredictionType::VPrediction => (noisy.broadcast_mul(a)? - out.broadcast_mul(b)?)?,
            })
        };
        let error = |text: &Tensor, leak: f64| -> anyhow::Result<f64> {
            let x0 = estimate(text, &self.a, &self.b, &self.t, leak)?;
            changed_error(&x0, &self.target, &self.changed)
        };
        let (own, other) = (text(0)?, text(1)?);
        // What sampling's first step sees: the last timestep, and noise alone (a training
        // sample there still holds sqrt(acp) of the target unless the schedule ends at zero
        // SNR).
        let fill = |v: f64| Tensor::full(v as f32, (n, 1, 1, 1), device);
        let x0 = estimate(
            &own,
            &fill(self.last_acp.sqrt())?,
            &fill((1.0 - self.last_acp).sqrt())?,
            &Tensor::full((self.timesteps - 1) as f32, n, device)?,
            0.0,
        )?;
        let from_noise = changed_error(&x0, &self.target, &self.changed)?;
        let kept = (1.0 - &self.changed)?;
        Ok(ProbeResult {
            matched: error(&own, 1.0)?,
            mismatched: error(&other, 1.0)?,
            from_noise: from_noise / self.no_edit.max(1e-12),
            spill: masked_sum(&x0, &self.target, &kept)? / self.change.max(1e-12),
        })
    }
}

/// The mean squared difference of two latents over the changed cells (per cell and channel).
fn changed_error(x: &Tensor, target: &Tensor, changed: &Tensor) -> anyhow::Result<f64> {
    let cells = (changed.sum_all()?.to_scalar::<f32>()? as f64).max(1.0);
    let channels = target.dim(1)? as f64;
    Ok(masked_sum(x, target, changed)? / (cells * channels))
}

/// The squared difference of two latents summed over the cells where `mask` (`(n, 1, h, w)`)
/// is 1.
fn masked_sum(x: &Tensor, target: &Tensor, mask: &Tensor) -> anyhow::Result<f64> {
    let err = (x - target)?.sqr()?.broadcast_mul(mask)?;
    Ok(err.sum_all()?.to_scalar::<f32>()? as f64)
}

/// Edits `plan.sample_edits` held-out samples with the model just saved (20 steps, its default
/// guidance) and writes `samples/step_NNNNNN.png`, one row per sample: source | target | result,
/// with the instructions beside it in a `.txt`.
fn write_sample_edits(plan: &EditPlan, step: usize) -> anyhow::Result<PathBuf> {
    use crate::model::load::{load, ModelSource};
    use crate::sample::pipeline::{edit, EditOutcome, EditRequest};
    let model = load(
        &ModelSource::Diffusers(plan.out.join("model")),
        Default::default(),
    )?;
    let s = plan.size;
    let mut text = String::new();
    let examples = held_out_examples(plan, 0, plan.sample_edits)?;
    let mut sheet = image::RgbImage::new(3 * s, examples.len() as u32 * s);
    for (i, (input, target, instruction, task)) in examples.iter().enumerate() {
        let req = EditRequest {
            prompt: instruction.clone(),
            seed: Some(i as u64),
            full_res: crate::fullres::FullRes::Off,
            ..Default::default()
        };
        let edit_plan = req.validate(&model)?;
        let out = match edit(&model, input, &edit_plan, None, &mut |_| {
            std::ops::ControlFlow::Continue(())
        })? {
            EditOutcome::Done(e) => e.image,
            EditOutcome::Cancelled { .. } => anyhow::bail!("sample edit cancelled"),
        };
        for (col, img) in [input, target, &out].into_iter().enumerate() {
            image::imageops::replace(
                &mut sheet,
                img,
                (col as u32 * s) as i64,
                (i as u32 * s) as i64,
            );
        }
        text.push_str(&format!("{i}: [{task}] {instruction}\n"));
    }
    let path = plan.out.join("samples").join(format!("step_{step:06}.png"));
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    crate::imageio::save(&sheet, &path, &[])?;
    crate::imageio::write_atomic(&path.with_extension("txt"), text.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

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
