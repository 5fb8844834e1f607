//! The edit pipeline: (image, instruction) -> edited image, exactly as the official code runs
//! it: resize rule, text and empty-text embeddings, VAE posterior mean, guided sampling from
//! `randn * sigma_max`, decode of `x / scaling_factor`, pixels `[-1, 1] -> [0, 255]`.
//!
//! User input comes in as an [`EditRequest`] and is checked once by [`EditRequest::validate`];
//! the pipeline only accepts the resulting [`EditPlan`].

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use serde::Serialize;

use super::denoiser::{Conditioning, EpsDenoiser};
use super::guidance::Guided;
use super::noise::{NoiseSource, SeededNoise};
use super::samplers::{Outcome, Sampler, Step};
use super::schedule::DiscreteSchedule;
use crate::imageio;
use crate::model::clip::embed_prompts;
use crate::model::load::Model;
use crate::model::meta::GuidanceFormula;

/// An edit as a user asked for it; `None` fields take the model's defaults.
#[derive(Debug, Clone, Default)]
pub struct EditRequest {
    pub prompt: String,
    pub steps: Option<usize>,
    pub text_cfg: Option<f64>,
    pub image_cfg: Option<f64>,
    /// The guidance rescale's `phi` in `[0, 1]` ([`super::guidance::rescale`]).
    pub guidance_rescale: Option<f64>,
    pub sampler: Option<Sampler>,
    pub guidance: Option<GuidanceFormula>,
    pub seed: Option<u64>,
    /// Long side at which the model runs.
    pub resolution: Option<usize>,
    /// Return the result at model resolution instead of the input's size.
    pub keep_model_resolution: bool,
}

/// Why an [`EditRequest`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("steps must be between 1 and 1000, got {0}")]
    Steps(usize),
    #[error("{name} must be a finite number, got {value}")]
    NotFinite { name: &'static str, value: f64 },
    #[error("resolution must be a multiple of 64 between 64 and 4096, got {0}")]
    Resolution(usize),
    #[error("the guidance rescale must be between 0 (off) and 1, got {0}")]
    Rescale(f64),
}

/// A validated edit, every setting resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EditPlan {
    pub prompt: String,
    pub steps: usize,
    pub text_cfg: f64,
    pub image_cfg: f64,
    pub guidance_rescale: f64,
    pub sampler: Sampler,
    pub guidance: GuidanceFormula,
    pub seed: u64,
    pub resolution: usize,
    pub keep_model_resolution: bool,
}

impl EditRequest {
    /// Resolves defaults from `model` and checks every value.
    pub fn validate(&self, model: &Model) -> Result<EditPlan, RequestError> {
        let d = &model.defaults;
        let steps = self.steps.unwrap_or(d.steps);
        if !(1..=1000).contains(&steps) {
            return Err(RequestError::Steps(steps));
        }
        let text_cfg = self.text_cfg.unwrap_or(d.text_cfg);
        let image_cfg = self.image_cfg.unwrap_or(d.image_cfg);
        for (name, value) in [("text_cfg", text_cfg), ("image_cfg", image_cfg)] {
            if !value.is_finite() {
                return Err(RequestError::NotFinite { name, value });
            }
        }
        let guidance_rescale = self.guidance_rescale.unwrap_or(d.guidance_rescale);
        if !(0.0..=1.0).contains(&guidance_rescale) {
            return Err(RequestError::Rescale(guidance_rescale));
        }
        let resolution = self.resolution.unwrap_or(d.resolution);
        if !resolution.is_multiple_of(64) || !(64..=4096).contains(&resolution) {
            return Err(RequestError::Resolution(resolution));
        }
        Ok(EditPlan {
            prompt: self.prompt.clone(),
            steps,
            text_cfg,
            image_cfg,
            guidance_rescale,
            sampler: self.sampler.unwrap_or(Sampler::EulerAncestral),
            guidance: self.guidance.unwrap_or(d.guidance),
            seed: self.seed.unwrap_or_else(rand::random),
            resolution,
            keep_model_resolution: self.keep_model_resolution,
        })
    }
}

/// Wall-clock time of each stage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub text_encode_s: f64,
    pub vae_encode_s: f64,
    pub steps_s: Vec<f64>,
    pub vae_decode_s: f64,
    pub total_s: f64,
}

/// What each step hands the caller.
pub struct StepEvent<'a> {
    pub step: usize,
    pub total: usize,
    pub sigma: f64,
    pub elapsed: Duration,
    /// Predicted clean latent (scaled), `(1, 4, h/8, w/8)`: see `preview::latent_to_rgba`.
    pub denoised: &'a Tensor,
    pub x: &'a Tensor,
}

/// The result of a finished edit.
#[derive(Debug, Clone)]
pub struct Edited {
    pub image: RgbImage,
    /// The size the model ran at.
    pub model_size: (u32, u32),
    pub timings: Timings,
    /// Prompt tokens past the text encoder's window (ignored by the model).
    pub truncated_tokens: usize,
}

/// How an edit ended.
#[derive(Debug)]
pub enum EditOutcome {
    Done(Edited),
    Cancelled { at_step: usize },
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// RGB pixels to a `(1, 3, h, w)` tensor in `[-1, 1]`.
pub fn image_to_tensor(
    img: &RgbImage,
    device: &Device,
    dtype: DType,
) -> candle_core::Result<Tensor> {
    let (w, h) = img.dimensions();
    let data: Vec<f32> = img
        .as_raw()
        .iter()
        .map(|&v| v as f32 / 127.5 - 1.0)
        .collect();
    Tensor::from_vec(data, (h as usize, w as usize, 3), device)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .to_dtype(dtype)
}

/// A `(1, 3, h, w)` tensor in about `[-1, 1]` to RGB pixels, as the official code converts:
/// `clamp((x + 1) / 2, 0, 1) * 255`, truncated to u8.
pub fn tensor_to_image(t: &Tensor) -> candle_core::Result<RgbImage> {
    let (_, c, h, w) = t.dims4()?;
    if c != 3 {
        candle_core::bail!("expected 3 channels, got {c}")
    }
    let v = ((t.to_dtype(DType::F32)?.get(0)? + 1.0)? / 2.0)?
        .clamp(0f32, 1f32)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let bytes = v.into_iter().map(|x| (x * 255.0) as u8).collect();
    RgbImage::from_raw(w as u32, h as u32, bytes)
        .ok_or_else(|| candle_core::Error::Msg("image buffer size mismatch".into()))
}

/// Encodes the instruction and the empty prompt: `(text, empty_text)`.
pub fn condition_text(model: &Model, prompt: &str) -> candle_core::Result<(Tensor, Tensor)> {
    let both = embed_prompts(
        &model.tokenizer,
        &model.text_encoder,
        &[prompt, ""],
        &model.device,
    )?;
    Ok((both.narrow(0, 0, 1)?, both.narrow(0, 1, 1)?))
}

/// Encodes the instruction, the empty prompt and the source image (at model size).
pub fn condition(
    model: &Model,
    prompt: &str,
    source: &RgbImage,
) -> candle_core::Result<(Conditioning, f64, f64)> {
    let t0 = Instant::now();
    let (text, empty_text) = condition_text(model, prompt)?;
    let text_s = secs(t0);
    let t1 = Instant::now();
    let pixels = image_to_tensor(source, &model.device, model.dtype)?;
    let image = model.vae.encode_mean(&pixels)?;
    Ok((
        Conditioning {
            text,
            empty_text,
            image,
        },
        text_s,
        secs(t1),
    ))
}

/// Runs one edit. `init_noise`, when given, replaces the seeded unit noise of shape
/// `(1, 4, h/8, w/8)` (it is multiplied by the first sigma), to reproduce another
/// implementation's run. `on_step` may cancel.
pub fn edit(
    model: &Model,
    source: &RgbImage,
    plan: &EditPlan,
    init_noise: Option<&Tensor>,
    on_step: &mut dyn FnMut(&StepEvent) -> ControlFlow<()>,
) -> anyhow::Result<EditOutcome> {
    let start = Instant::now();
    let (w0, h0) = source.dimensions();
    let (w, h) = imageio::fit_size(w0, h0, plan.resolution as u32);
    let resized = imageio::fit(source, w, h);
    let (cond, text_s, vae_s) = condition(model, &plan.prompt, &resized)?;
    let mut noise = SeededNoise::new(plan.seed);
    let result = sample(model, &cond, plan, init_noise, &mut noise, on_step)?;
    let (latent, steps_s) = match result {
        Sampled::Done { latent, steps_s } => (latent, steps_s),
        Sampled::Cancelled { at_step } => return Ok(EditOutcome::Cancelled { at_step }),
    };
    let t2 = Instant::now();
    let mut image = decode(model, &latent)?;
    let vae_decode_s = secs(t2);
    if !plan.keep_model_resolution {
        image = imageio::resize_exact(&image, w0, h0);
    }
    Ok(EditOutcome::Done(Edited {
        image,
        model_size: (w, h),
        timings: Timings {
            text_encode_s: text_s,
            vae_encode_s: vae_s,
            steps_s,
            vae_decode_s,
            total_s: secs(start),
        },
        truncated_tokens: model.tokenizer.overflow(&plan.prompt),
    }))
}

/// The outcome of [`sample`].
pub enum Sampled {
    Done { latent: Tensor, steps_s: Vec<f64> },
    Cancelled { at_step: usize },
}

/// Samples a latent for `cond` with the plan's sampler and guidance.
pub fn sample(
    model: &Model,
    cond: &Conditioning,
    plan: &EditPlan,
    init_noise: Option<&Tensor>,
    noise: &mut dyn NoiseSource,
    on_step: &mut dyn FnMut(&StepEvent) -> ControlFlow<()>,
) -> anyhow::Result<Sampled> {
    let schedule = DiscreteSchedule::new(&model.scheduler);
    let sigmas = schedule.sigmas(plan.steps);
    let eps = EpsDenoiser {
        unet: &model.unet,
        schedule,
        prediction: model.scheduler.prediction_type,
    };
    let mut guided = Guided::new(&eps, cond, plan.guidance, plan.text_cfg, plan.image_cfg)?;
    guided.rescale = plan.guidance_rescale;
    let shape = cond.image.shape().clone();
    let unit = match init_noise {
        Some(n) => {
            if n.shape() != &shape {
                anyhow::bail!(
                    "initial noise has shape {:?}, the latent is {:?} (for this image and resolution)",
                    n.dims(),
                    shape.dims()
                );
            }
            n.to_device(&model.device)?.to_dtype(model.dtype)?
        }
        None => noise.sample(&shape, &model.device)?.to_dtype(model.dtype)?,
    };
    let x = (unit * sigmas[0])?;
    let mut steps_s = Vec::with_capacity(plan.steps);
    let mut last = Instant::now();
    let t0 = last;
    let total = plan.steps;
    let mut cb = |s: &Step| {
        steps_s.push(secs(last));
        last = Instant::now();
        on_step(&StepEvent {
            step: s.i,
            total,
            sigma: s.sigma,
            elapsed: t0.elapsed(),
            denoised: s.denoised,
            x: s.x,
        })
    };
    match plan.sampler.sample(&guided, x, &sigmas, noise, &mut cb)? {
        Outcome::Finished(latent) => Ok(Sampled::Done { latent, steps_s }),
        Outcome::Cancelled { at_step } => Ok(Sampled::Cancelled { at_step }),
    }
}

/// Decodes a sampled (scaled) latent to pixels.
pub fn decode(model: &Model, latent: &Tensor) -> candle_core::Result<RgbImage> {
    let unscaled = (latent / model.vae.config.scaling_factor)?;
    tensor_to_image(&model.vae.decode(&unscaled)?)
}
