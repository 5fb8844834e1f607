//! A fine-tune's starting point and a run's result as folders: the base model's configs,
//! scheduler and weights read, the architecture checked against them, and the trained model
//! written as a diffusers folder (merged LoRA adapters and all).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{Device, Tensor};

use super::*;
use crate::model::clip::{ClipConfig, ClipTokenizer};
use crate::model::unet::UNetConfig;
use crate::settings::{SamplingDefaults, SchedulerConfig, DEFAULTS_FILE};
use crate::train::checkpoint::{save_weights, Checkpoint};
use crate::train::optim::AdamW;

/// The model's weights to export (`unet.*`, `text_encoder.*`): the EMA of a full run; for a
/// LoRA, the frozen base with the adapters' EMA merged in, and the adapters alone written to
/// `OUT/lora/pytorch_lora_weights.safetensors` (diffusers' `load_lora_weights` naming).
pub(super) fn exported_weights(
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
    // A fine-tune samples as its base did (formula, guidance, rescale, per-task guidance, the
    // phrasing it was taught); a model trained from scratch as this crate's recipe does.
    let inherited = match &plan.base {
        Some(base) => crate::model::load::diffusers::defaults(base)
            .with_context(|| format!("reading the sampling defaults of '{}'", base.display()))?,
        None => SamplingDefaults {
            steps: 20,
            phrasing: Some(crate::tasks::Phrasing::Templates),
            ..SamplingDefaults::instructdiffusion()
        },
    };
    let defaults = SamplingDefaults {
        resolution,
        latent_rgb: Some(latent_rgb.to_vec()),
        ..inherited
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

pub(super) fn read_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    hint: &str,
) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading '{}': {e} ({hint})", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("'{}': {e} ({hint})", path.display()))
}

/// A diffusers `UNet2DConditionModel` config.json.
pub(super) fn read_unet_config(path: &Path, hint: &str) -> anyhow::Result<UNetConfig> {
    let json: crate::model::unet::UNetConfigJson = read_config(path, hint)?;
    UNetConfig::try_from(json).map_err(|e| anyhow::anyhow!("'{}': {e}", path.display()))
}

/// A transformers `CLIPTextModel` config.json.
pub(super) fn read_clip_config(path: &Path, hint: &str) -> anyhow::Result<ClipConfig> {
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
pub(super) fn base_weights(dir: &Path, device: &Device) -> anyhow::Result<HashMap<String, Tensor>> {
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
pub(super) fn text_encoder_weights(
    dir: &Path,
    device: &Device,
) -> anyhow::Result<HashMap<String, Tensor>> {
    weights_of(
        dir,
        "text_encoder.",
        "text_encoder/model.safetensors",
        device,
    )
}

/// The weights of `dir/file`, each name behind `prefix` ("unet." or "text_encoder.").
pub(super) fn weights_of(
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
