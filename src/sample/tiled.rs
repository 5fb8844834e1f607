//! Enhancement (denoise, deblur, watermark removal) at the photo's own resolution, in
//! overlapping tiles of the model's working size.
//!
//! One latent covers the whole photo. At every step each tile of it is denoised with its own
//! part of the source latent, and the tiles' predictions are averaged with smooth windows
//! where they overlap (MultiDiffusion, Bar-Tal et al., 2023); the sampler then steps the
//! whole latent, with noise drawn for the whole latent. Chosen over sampling each tile on its
//! own with shared noise because the tiles read and write one latent at every step: they
//! agree where they meet, so no seam can form, and every sampler works unchanged. The cost is
//! the overlap (a quarter of a tile on each inner side).
//!
//! The autoencoder runs tile by tile too: encoder outputs blended in the latent, decoder
//! outputs blended in pixels and handed back a band of rows at a time. What is held besides
//! one tile's activations: the photo, its result and the photo-sized latents (a few bytes per
//! pixel), whatever the photo's size.

use std::cell::{Cell, RefCell};
use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, Result, Tensor};
use image::RgbImage;

use super::denoiser::{Conditioning, Denoiser, EpsDenoiser};
use super::guidance::Guided;
use super::noise::SeededNoise;
use super::request::EditPlan;
use super::steps::{
    condition_text, eps_denoiser, image_to_tensor, run_sampler, EditOutcome, Edited, Sampled,
    StepEvent, Timings,
};
use crate::fullres::tiles::{Bands, Blend, Layout};
use crate::fullres::Applied;
use crate::model::load::Model;
use crate::settings::GuidanceFormula;

/// The tile layout for a `w x h` photo with `model`'s autoencoder: in latent units, tiles of
/// the plan's resolution, a quarter of a tile of overlap. Returns the layout and the
/// autoencoder's factor.
pub fn layout_for(model: &Model, w: u32, h: u32, resolution: usize) -> (Layout, usize) {
    let f = model.vae.config.downscale();
    let tile = resolution / f;
    let (lw, lh) = padded_latent(w, h, f, tile);
    (Layout::new(lw, lh, tile, tile / 4), f)
}

/// The latent size of the photo padded to a multiple of `f` and to at least one tile.
fn padded_latent(w: u32, h: u32, f: usize, tile: usize) -> (usize, usize) {
    let side = |s: u32| (s as usize).div_ceil(f).max(tile);
    (side(w), side(h))
}

/// The photo padded to `w x h` by repeating its edge pixels.
fn pad(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    if img.dimensions() == (w, h) {
        return img.clone();
    }
    let (iw, ih) = img.dimensions();
    RgbImage::from_fn(w, h, |x, y| *img.get_pixel(x.min(iw - 1), y.min(ih - 1)))
}

/// Runs `plan` on the whole photo in tiles (see the module's notes).
pub fn enhance(
    model: &Model,
    source: &RgbImage,
    plan: &EditPlan,
    on_step: &mut dyn FnMut(&StepEvent) -> ControlFlow<()>,
) -> anyhow::Result<EditOutcome> {
    let start = Instant::now();
    let (w0, h0) = source.dimensions();
    let (layout, f) = layout_for(model, w0, h0, plan.resolution);
    let padded = pad(
        source,
        (layout.width * f) as u32,
        (layout.height * f) as u32,
    );
    let t0 = Instant::now();
    let (text, empty_text) = condition_text(model, &plan.prompt)?;
    let text_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let image = encode(model, &padded, &layout, f)?;
    let vae_s = t1.elapsed().as_secs_f64();
    let eps = eps_denoiser(model);
    let step_now = Cell::new(0usize);
    let cancelled = Cell::new(false);
    let on_step = RefCell::new(on_step);
    let denoiser = TiledGuided {
        eps: &eps,
        text: &text,
        empty_text: &empty_text,
        image: &image,
        formula: plan.guidance,
        text_cfg: plan.text_cfg,
        image_cfg: plan.image_cfg,
        rescale: plan.guidance_rescale,
        layout: &layout,
        windows: layout.tiles.iter().map(|t| layout.window(t, 1)).collect(),
        on_tile: &|done, total, snapshot: &dyn Fn() -> Result<Tensor>, preview_due: bool| {
            let snap = if preview_due { Some(snapshot()?) } else { None };
            let flow = (on_step.borrow_mut())(&StepEvent {
                step: step_now.get(),
                total: plan.steps,
                sigma: 0.0,
                elapsed: start.elapsed(),
                denoised: snap.as_ref(),
                tile: Some((done, total)),
            });
            if flow.is_break() {
                cancelled.set(true);
                candle_core::bail!("cancelled");
            }
            Ok(())
        },
        last_preview: Cell::new(Instant::now()),
    };
    let mut noise = SeededNoise::new(plan.seed);
    let mut forward = |e: &StepEvent| {
        step_now.set(e.step + 1);
        (on_step.borrow_mut())(e)
    };
    let sampled = run_sampler(
        model,
        plan,
        &denoiser,
        image.shape(),
        None,
        &mut noise,
        &mut forward,
    );
    let (latent, steps_s) = match sampled {
        Ok(Sampled::Done { latent, steps_s }) => (latent, steps_s),
        Ok(Sampled::Cancelled { at_step }) => return Ok(EditOutcome::Cancelled { at_step }),
        Err(_) if cancelled.get() => {
            return Ok(EditOutcome::Cancelled {
                at_step: step_now.get(),
            })
        }
        Err(e) => return Err(e),
    };
    let t2 = Instant::now();
    let image = decode(model, &latent, &layout, f, w0, h0)?;
    Ok(EditOutcome::Done(Box::new(Edited {
        image,
        model_image: None,
        model_size: ((layout.tile * f) as u32, (layout.tile * f) as u32),
        applied: Applied::Tiled {
            tiles: layout.tiles.len(),
            tile: (layout.tile * f) as u32,
            overlap: (layout.overlap * f) as u32,
        },
        answer: None,
        timings: Timings {
            text_encode_s: text_s,
            vae_encode_s: vae_s,
            steps_s,
            vae_decode_s: t2.elapsed().as_secs_f64(),
            full_res_s: 0.0,
            total_s: start.elapsed().as_secs_f64(),
        },
        truncated_tokens: model.tokenizer.overflow(&plan.prompt),
    })))
}

/// The padded photo's latent (scaled posterior mean), encoded tile by tile.
pub fn encode(model: &Model, padded: &RgbImage, layout: &Layout, f: usize) -> Result<Tensor> {
    let c = model.vae.config.latent_channels;
    let mut blend = Blend::new(c, layout.width, layout.height);
    for t in &layout.tiles {
        let crop = image::imageops::crop_imm(
            padded,
            (t.x * f) as u32,
            (t.y * f) as u32,
            (t.w * f) as u32,
            (t.h * f) as u32,
        )
        .to_image();
        let pixels = image_to_tensor(&crop, &model.device, model.dtype)?;
        let lat = model.vae.encode_mean(&pixels)?;
        let v = lat.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        blend.add(t, &v, &layout.window(t, 1));
    }
    Tensor::from_vec(
        blend.mean(None),
        (1, c, layout.height, layout.width),
        &model.device,
    )?
    .to_dtype(model.dtype)
}

/// A sampled (scaled) latent to the `w x h` photo, decoded tile by tile, blended in pixels.
pub fn decode(
    model: &Model,
    latent: &Tensor,
    layout: &Layout,
    f: usize,
    w: u32,
    h: u32,
) -> Result<RgbImage> {
    let full_w = layout.width * f;
    let mut out = RgbImage::new(w, h);
    let mut bands = Bands::new(full_w);
    let unscaled = (latent / model.vae.config.scaling_factor)?;
    let mut emit = |y: usize, line: &[u8]| {
        if y < h as usize {
            let row = &mut out.as_mut()[y * w as usize * 3..(y + 1) * w as usize * 3];
            row.copy_from_slice(&line[..w as usize * 3]);
        }
    };
    for r in 0..layout.row_tops.len() {
        for t in layout.tiles.iter().filter(|t| t.row == r) {
            let part = unscaled
                .narrow(2, t.y, t.h)?
                .narrow(3, t.x, t.w)?
                .contiguous()?;
            let px = model.vae.decode(&part)?;
            // (1, 3, h, w) in [-1, 1] to pixel-major levels 0-255, as `tensor_to_image`.
            let rgb = ((px.to_dtype(DType::F32)?.get(0)? + 1.0)? * 127.5)?
                .clamp(0f32, 255f32)?
                .permute((1, 2, 0))?
                .flatten_all()?
                .to_vec1::<f32>()?;
            bands.add(
                t.x * f,
                t.y * f,
                t.w * f,
                t.h * f,
                &rgb,
                &layout.window(t, f),
            );
        }
        let next = layout
            .row_tops
            .get(r + 1)
            .map_or(layout.height * f, |&y| y * f);
        bands.finish_above(next, &mut emit);
    }
    Ok(out)
}

/// What a tile reports: tiles done, of how many, a way to build the current prediction of
/// the whole latent, and whether a preview is due (at most two a second).
type OnTile<'a> = dyn Fn(usize, usize, &dyn Fn() -> Result<Tensor>, bool) -> Result<()> + 'a;

/// Guided denoising of a photo-sized latent, tile by tile (see the module's notes).
struct TiledGuided<'a> {
    eps: &'a EpsDenoiser<'a>,
    text: &'a Tensor,
    empty_text: &'a Tensor,
    image: &'a Tensor,
    formula: GuidanceFormula,
    text_cfg: f64,
    image_cfg: f64,
    rescale: f64,
    layout: &'a Layout,
    windows: Vec<Vec<f32>>,
    on_tile: &'a OnTile<'a>,
    last_preview: Cell<Instant>,
}

impl Denoiser for TiledGuided<'_> {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let mut blend = Blend::new(c, w, h);
        let n = self.layout.tiles.len();
        for (i, (t, window)) in self.layout.tiles.iter().zip(&self.windows).enumerate() {
            let part = |m: &Tensor| m.narrow(2, t.y, t.h)?.narrow(3, t.x, t.w)?.contiguous();
            let cond = Conditioning {
                text: self.text.clone(),
                empty_text: self.empty_text.clone(),
                image: part(self.image)?,
            };
            let mut guided =
                Guided::new(self.eps, &cond, self.formula, self.text_cfg, self.image_cfg)?;
            guided.rescale = self.rescale;
            let x0 = guided.denoise(&part(x)?, sigma)?;
            let v = x0.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            blend.add(t, &v, window);
            let due = self.last_preview.get().elapsed().as_secs_f64() >= 0.5;
            if due {
                self.last_preview.set(Instant::now());
            }
            let snapshot = || {
                let fallback = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                Tensor::from_vec(blend.mean(Some(&fallback)), (1, c, h, w), x.device())
            };
            (self.on_tile)(i + 1, n, &snapshot, due)?;
        }
        Tensor::from_vec(blend.mean(None), (1, c, h, w), x.device())?.to_dtype(x.dtype())
    }
}
