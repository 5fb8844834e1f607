//! The edit pipeline: (image, instruction) -> edited image, exactly as the official code runs
//! it: resize rule, text and empty-text embeddings, VAE posterior mean, guided sampling from
//! `randn * sigma_max`, decode of `x / scaling_factor`, pixels `[-1, 1] -> [0, 255]`.
//!
//! User input comes in as an [`EditRequest`] and is checked once by [`EditRequest::validate`];
//! the pipeline only accepts the resulting [`EditPlan`].

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::Tensor;
use image::RgbImage;

use super::denoiser::Conditioning;
use super::guidance::Guided;
use super::noise::{NoiseSource, SeededNoise};
use crate::decode::{self, Reading};
use crate::fullres::{change, redraw, Applied, Family, Method, Placement};
use crate::imageio;
use crate::model::load::Model;

pub use super::request::{EditPlan, EditRequest, RequestError};
use super::steps::secs;
pub use super::steps::{
    condition_text, eps_denoiser, image_to_tensor, run_sampler, tensor_to_image, EditOutcome,
    Edited, Sampled, StepEvent, Timings,
};

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
