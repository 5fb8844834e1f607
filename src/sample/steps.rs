//! The pieces every run of the model is made of, shared by the whole-picture pipeline and the
//! tiled one ([`super::tiled`]): pixels to tensors and back, the text conditioning, the sampler
//! loop with its step events, and what a finished or cancelled run hands back.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use serde::Serialize;

use super::denoiser::{Denoiser, EpsDenoiser};
use super::noise::NoiseSource;
use super::request::EditPlan;
use super::samplers::{Outcome, Step};
use super::schedule::DiscreteSchedule;
use crate::decode::{DecodeError, Reading};
use crate::fullres::Applied;
use crate::model::clip::embed_prompts;
use crate::model::load::Model;

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

pub(super) fn secs(since: Instant) -> f64 {
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

/// The outcome of a sampler run ([`run_sampler`], `pipeline::sample`).
pub enum Sampled {
    Done { latent: Tensor, steps_s: Vec<f64> },
    Cancelled { at_step: usize },
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
