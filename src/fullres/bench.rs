//! `instructdiffusion bench --full-res PHOTOS` and `--tiled WxH`: what bringing answers to the
//! photo's resolution gains and costs.
//!
//! - Per photo and instruction (a segmentation, a local edit, a global edit), one edit: the
//!   result at the photo's size as `auto` makes it against the model's picture resized (what
//!   `off`, and older versions, return), on the pixels the new result leaves as the source's:
//!   their PSNR against the source before (resized) and after (exact); the share of the photo
//!   they cover; the fine detail kept over the whole photo ([`change::detail_kept`]); the time
//!   the full-resolution step takes.
//! - A tiled enhancement of a synthetic noisy photo of any size: time, tiles, peak memory.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use image::{Rgb, RgbImage};
use serde::Serialize;

use super::{change, Applied, FullRes};
use crate::model::load::Model;
use crate::sample::pipeline::{self, EditOutcome, EditRequest};

/// The instructions each photo is edited with.
pub const INSTRUCTIONS: [&str; 3] = [
    "Apply a blue semi-transparent mask to the cat.",
    "Add a red ball.",
    "Make it look like winter",
];

/// One photo and instruction.
#[derive(Debug, Clone, Serialize)]
pub struct PhotoRow {
    pub photo: String,
    pub size: (u32, u32),
    pub instruction: String,
    pub applied: Applied,
    /// Share of the photo the result leaves as the source's.
    pub untouched_share: f64,
    /// PSNR against the source there, of the resized model picture (the new result is exact).
    pub psnr_resized_db: f64,
    pub detail_kept_resized: f64,
    pub detail_kept: f64,
    pub full_res_s: f64,
}

/// Runs [`INSTRUCTIONS`] on every image in `dir` (`steps` steps, seed 1).
pub fn photos(model: &Model, dir: &Path, steps: usize) -> anyhow::Result<Vec<PhotoRow>> {
    let mut rows = vec![];
    for path in crate::imageio::list_images(dir)? {
        let source = crate::imageio::load_rgb(&path, crate::imageio::DEFAULT_MAX_PIXELS)?;
        for instruction in INSTRUCTIONS {
            let plan = EditRequest {
                prompt: instruction.into(),
                steps: Some(steps),
                seed: Some(1),
                full_res: FullRes::Auto,
                ..Default::default()
            }
            .validate(model)?;
            let EditOutcome::Done(e) = pipeline::edit(model, &source, &plan, None, &mut |_| {
                ControlFlow::Continue(())
            })?
            else {
                anyhow::bail!("cancelled");
            };
            let own = e.model_image.as_ref().expect("not tiled");
            let (w, h) = source.dimensions();
            let resized = crate::imageio::resize_exact(own, w, h);
            let (mut se, mut n) = (0f64, 0usize);
            for ((s, r), o) in source.pixels().zip(resized.pixels()).zip(e.image.pixels()) {
                if s == o {
                    n += 1;
                    se += (0..3)
                        .map(|c| (s[c] as f64 - r[c] as f64).powi(2))
                        .sum::<f64>();
                }
            }
            let mse = se / (3 * n.max(1)) as f64;
            rows.push(PhotoRow {
                photo: path.file_name().unwrap().to_string_lossy().into(),
                size: (w, h),
                instruction: instruction.into(),
                applied: e.applied.clone(),
                untouched_share: n as f64 / (w * h) as f64,
                psnr_resized_db: 10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10(),
                detail_kept_resized: change::detail_kept(&source, &resized),
                detail_kept: change::detail_kept(&source, &e.image),
                full_res_s: e.timings.full_res_s,
            });
        }
    }
    Ok(rows)
}

pub fn photos_table(rows: &[PhotoRow]) -> String {
    let mut t = format!(
        "{:<14} {:<9} {:<47} {:<20} {:>9} {:>12} {:>14} {:>8}\n",
        "photo",
        "size",
        "instruction",
        "applied",
        "untouched",
        "PSNR resized",
        "detail kept",
        "time"
    );
    for r in rows {
        t.push_str(&format!(
            "{:<14} {:<9} {:<47} {:<20} {:>8.1}% {:>9.1} dB {:>6.2} -> {:.2} {:>6.3} s\n",
            r.photo,
            format!("{}x{}", r.size.0, r.size.1),
            r.instruction,
            short(&r.applied),
            r.untouched_share * 100.0,
            r.psnr_resized_db,
            r.detail_kept_resized,
            r.detail_kept,
            r.full_res_s
        ));
    }
    t.push_str("untouched: left as the source's pixels, exactly (PSNR infinite); PSNR resized: the model's picture resized to the photo, on those pixels; detail kept: resized -> full-res result\n");
    t
}

/// The method in a few words ("local change 8.1%").
fn short(a: &Applied) -> String {
    match a {
        Applied::Change { share, global } => format!(
            "{} change {:.1}%",
            if *global { "global" } else { "local" },
            share * 100.0
        ),
        Applied::Redrawn => "redrawn".into(),
        other => other.describe(),
    }
}

/// A tiled enhancement run.
#[derive(Debug, Clone, Serialize)]
pub struct TiledRow {
    pub size: (u32, u32),
    pub megapixels: f64,
    pub steps: usize,
    pub applied: Applied,
    pub total_s: f64,
    pub vae_encode_s: f64,
    pub steps_s: Vec<f64>,
    pub vae_decode_s: f64,
    /// The process's peak resident memory (weights and photo included).
    pub peak_rss_bytes: Option<u64>,
}

/// A synthetic photo with grain on every pixel (smooth shapes underneath).
pub fn noisy_photo(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / 300.0, y as f32 / 200.0);
        let grain = ((x.wrapping_mul(7919) ^ y.wrapping_mul(104729)) % 41) as f32 - 20.0;
        let v = |b: f32| (b + grain).clamp(0.0, 255.0) as u8;
        Rgb([
            v(120.0 + 60.0 * fx.sin()),
            v(110.0 + 50.0 * (fx + fy).cos()),
            v(100.0 + 40.0 * fy.sin()),
        ])
    })
}

/// "Remove the noise." on a `w x h` noisy photo in tiles, `steps` steps.
pub fn tiled(model: &Model, w: u32, h: u32, steps: usize) -> anyhow::Result<TiledRow> {
    let photo = noisy_photo(w, h);
    let plan = EditRequest {
        prompt: "Remove the noise.".into(),
        steps: Some(steps),
        seed: Some(1),
        full_res: FullRes::Tiled,
        ..Default::default()
    }
    .validate(model)?;
    let t0 = Instant::now();
    let mut last = Instant::now();
    let EditOutcome::Done(e) = pipeline::edit(model, &photo, &plan, None, &mut |ev| {
        if let Some((i, n)) = ev.tile {
            if last.elapsed().as_secs() >= 10 {
                last = Instant::now();
                eprintln!(
                    "step {}/{}, tile {i}/{n}, {:.0} s",
                    ev.step + 1,
                    ev.total,
                    t0.elapsed().as_secs_f64()
                );
            }
        }
        ControlFlow::Continue(())
    })?
    else {
        anyhow::bail!("cancelled");
    };
    Ok(TiledRow {
        size: (w, h),
        megapixels: (w as f64 * h as f64) / 1e6,
        steps,
        applied: e.applied.clone(),
        total_s: e.timings.total_s,
        vae_encode_s: e.timings.vae_encode_s,
        steps_s: e.timings.steps_s.clone(),
        vae_decode_s: e.timings.vae_decode_s,
        peak_rss_bytes: crate::support::peak_memory_bytes(),
    })
}

pub fn tiled_table(r: &TiledRow) -> String {
    let mean_step = r.steps_s.iter().sum::<f64>() / r.steps_s.len().max(1) as f64;
    format!(
        "tiled denoise, {}x{} ({:.1} MP), {} steps: {}\n  total {:.1} s: vae encode {:.1} s, {:.1} s per step, vae decode {:.1} s\n  peak memory (process): {}\n",
        r.size.0,
        r.size.1,
        r.megapixels,
        r.steps,
        r.applied.describe(),
        r.total_s,
        r.vae_encode_s,
        mean_step,
        r.vae_decode_s,
        r.peak_rss_bytes
            .map_or("unknown".into(), |b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64))
    )
}
