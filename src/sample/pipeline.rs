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

use super::denoiser::{Conditioning, Denoiser, EpsDenoiser};
use super::guidance::Guided;
use super::noise::{NoiseSource, SeededNoise};
use super::samplers::{Outcome, Sampler, Step};
use super::schedule::DiscreteSchedule;
use crate::decode::{self, DecodeError, Reading};
use crate::fullres::{change, redraw, Applied, Family, FullRes, Method, Placement};
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
    /// Return the model's own pixels at its size instead of the photo's.
    pub keep_model_resolution: bool,
    /// How the result comes back at the photo's size.
    pub full_res: FullRes,
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
    pub full_res: FullRes,
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
            full_res: self.full_res,
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
    /// Bringing the answer to the photo's resolution (round trip, change map, redraw).
    pub full_res_s: f64,
    pub total_s: f64,
}

/// What each step hands the caller.
pub struct StepEvent<'a> {
    pub step: usize,
    pub total: usize,
    pub sigma: f64,
    pub elapsed: Duration,
    /// Predicted clean latent (scaled), `(1, c, h/f, w/f)`: see `preview::latent_to_rgba`.
    /// Tile events carry one at most twice a second.
    pub denoised: Option<&'a Tensor>,
    /// Tiled runs: tiles done in this step, of how many (then `step` is the step under way).
    pub tile: Option<(usize, usize)>,
}

/// The result of a finished edit.
#[derive(Debug, Clone)]
pub struct Edited {
    /// The result at the photo's size (at the model's with `keep_model_resolution`).
    pub image: RgbImage,
    /// The model's own pixels at its size (none for tiled runs).
    pub model_image: Option<RgbImage>,
    /// The size the model ran at (a tile's, for tiled runs).
    pub model_size: (u32, u32),
    /// How the result was brought to the photo's size.
    pub applied: Applied,
    /// The overlay read back (masks, keypoints, label) at the size of `image`, when the
    /// instruction is not an edit: `Err` says why nothing was read.
    pub answer: Option<Result<Reading, DecodeError>>,
    pub timings: Timings,
    /// Prompt tokens past the text encoder's window (ignored by the model).
    pub truncated_tokens: usize,
}

/// How an edit ended.
#[derive(Debug)]
pub enum EditOutcome {
    Done(Box<Edited>),
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
/// `(1, c, h/f, w/f)` (it is multiplied by the first sigma), to reproduce another
/// implementation's run. `on_step` may cancel. The result comes back at the photo's size as
/// `plan.full_res` says (see [`crate::fullres`]).
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
    let family = Family::of(&plan.prompt);
    let method = plan.full_res.resolve(family);
    if init_noise.is_none() && runs_tiled(source, plan) {
        return super::tiled::enhance(model, source, plan, on_step);
    }
    let resized = imageio::fit(source, w, h);
    let (cond, text_s, vae_s) = condition(model, &plan.prompt, &resized)?;
    let mut noise = SeededNoise::new(plan.seed);
    let result = sample(model, &cond, plan, init_noise, &mut noise, on_step)?;
    let (latent, steps_s) = match result {
        Sampled::Done { latent, steps_s } => (latent, steps_s),
        Sampled::Cancelled { at_step } => return Ok(EditOutcome::Cancelled { at_step }),
    };
    let t2 = Instant::now();
    let model_image = decode(model, &latent)?;
    let vae_decode_s = secs(t2);
    let t3 = Instant::now();
    let answer = (family != Family::Edit && family != Family::Enhancement)
        .then(|| decode::read(&resized, &model_image, &plan.prompt));
    let place = Placement::new((w0, h0), (w, h));
    let (image, applied, answer) = if plan.keep_model_resolution {
        (model_image.clone(), Applied::ModelSize, answer)
    } else {
        let full_answer = answer.map(|a| {
            a.map(|r| Reading {
                decoded: redraw::to_source(&r.decoded, &place),
                ..r
            })
        });
        let drawable = match &full_answer {
            Some(Ok(r)) => redraw::drawable(&r.decoded).then_some(&r.decoded),
            _ => None,
        };
        let (image, applied) = match (method, drawable) {
            (Method::Resize, _) => (
                imageio::resize_exact(&model_image, w0, h0),
                Applied::Resized,
            ),
            // A photo no larger than the model's picture loses nothing to a resize.
            (Method::Tiled, _) => (
                imageio::resize_exact(&model_image, w0, h0),
                Applied::Resized,
            ),
            (Method::Redraw, Some(decoded)) => (redraw::draw(source, decoded), Applied::Redrawn),
            _ => {
                let (image, found) = apply_change(model, source, &cond.image, &model_image)?;
                let applied = Applied::Change {
                    share: found.share,
                    global: found.global,
                };
                (image, applied)
            }
        };
        (image, applied, full_answer)
    };
    Ok(EditOutcome::Done(Box::new(Edited {
        image,
        model_image: Some(model_image),
        model_size: (w, h),
        applied,
        answer,
        timings: Timings {
            text_encode_s: text_s,
            vae_encode_s: vae_s,
            steps_s,
            vae_decode_s,
            full_res_s: secs(t3),
            total_s: secs(start),
        },
        truncated_tokens: model.tokenizer.overflow(&plan.prompt),
    })))
}

/// Whether [`edit`] runs `plan` on `source` in tiles at the photo's own size: the setting
/// (or, for `auto`, an enhancement instruction) asks for it and the photo is larger than the
/// model's picture.
pub fn runs_tiled(source: &RgbImage, plan: &EditPlan) -> bool {
    let (w0, h0) = source.dimensions();
    let (w, h) = imageio::fit_size(w0, h0, plan.resolution as u32);
    let method = plan.full_res.resolve(Family::of(&plan.prompt));
    method == Method::Tiled && (w0 > w || h0 > h) && !plan.keep_model_resolution
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
    let eps = eps_denoiser(model);
    let mut guided = Guided::new(&eps, cond, plan.guidance, plan.text_cfg, plan.image_cfg)?;
    guided.rescale = plan.guidance_rescale;
    let shape = cond.image.shape().clone();
    run_sampler(model, plan, &guided, &shape, init_noise, noise, on_step)
}

/// The model's UNet as a denoiser on its schedule.
pub fn eps_denoiser(model: &Model) -> EpsDenoiser<'_> {
    EpsDenoiser {
        unet: &model.unet,
        schedule: DiscreteSchedule::new(&model.scheduler),
        prediction: model.scheduler.prediction_type,
    }
}

/// Runs the plan's sampler with `denoiser` from noise of `shape`.
pub fn run_sampler(
    model: &Model,
    plan: &EditPlan,
    denoiser: &dyn Denoiser,
    shape: &candle_core::Shape,
    init_noise: Option<&Tensor>,
    noise: &mut dyn NoiseSource,
    on_step: &mut dyn FnMut(&StepEvent) -> ControlFlow<()>,
) -> anyhow::Result<Sampled> {
    let sigmas = DiscreteSchedule::new(&model.scheduler).sigmas(plan.steps);
    let unit = match init_noise {
        Some(n) => {
            if n.shape() != shape {
                anyhow::bail!(
                    "initial noise has shape {:?}, the latent is {:?} (for this image and resolution)",
                    n.dims(),
                    shape.dims()
                );
            }
            n.to_device(&model.device)?.to_dtype(model.dtype)?
        }
        None => noise.sample(shape, &model.device)?.to_dtype(model.dtype)?,
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
            denoised: Some(s.denoised),
            tile: None,
        })
    };
    match plan.sampler.sample(denoiser, x, &sigmas, noise, &mut cb)? {
        Outcome::Finished(latent) => Ok(Sampled::Done { latent, steps_s }),
        Outcome::Cancelled { at_step } => Ok(Sampled::Cancelled { at_step }),
    }
}

/// `result` (the model's picture of `source` at its size) applied to `source` as a change
/// ([`change`]): found against the source's own round trip through the autoencoder, from its
/// conditioning latent `image_latent` (unscaled).
pub fn apply_change(
    model: &Model,
    source: &RgbImage,
    image_latent: &Tensor,
    result: &RgbImage,
) -> candle_core::Result<(RgbImage, change::Change)> {
    let place = Placement::new(source.dimensions(), result.dimensions());
    let roundtrip = roundtrip(model, image_latent)?;
    let found = change::find(&roundtrip, result, &Default::default());
    let image = change::apply(source, &place, &roundtrip, result, &found);
    Ok((image, found))
}

/// The source's own trip through the autoencoder: its (unscaled) conditioning latent
/// decoded. What the model returns where it changed nothing, blur and all.
pub fn roundtrip(model: &Model, image_latent: &Tensor) -> candle_core::Result<RgbImage> {
    tensor_to_image(&model.vae.decode(image_latent)?)
}

/// Decodes a sampled (scaled) latent to pixels.
pub fn decode(model: &Model, latent: &Tensor) -> candle_core::Result<RgbImage> {
    let unscaled = (latent / model.vae.config.scaling_factor)?;
    tensor_to_image(&model.vae.decode(&unscaled)?)
}
