//! The decoder's quality set: real photos with overlays drawn exactly as the training targets
//! (random shapes blended 50% as masks, opaque discs as keypoints), then perturbed the way a
//! diffusion model's answers are (the drawn colour drifts, the blend weight wobbles, the whole
//! image shifts slightly, noise, a resize round trip, JPEG), and untouched photos through the
//! same perturbations to count false positives. Used by the tests (targets asserted) and by
//! `instructdiffusion bench --decode` (figures printed).

use image::RgbImage;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::parse::{Kind, Parsed, Target};
use super::{decode, keypoint::expected_radius};
use crate::data::sample::draw_disc;
use crate::data::scene::{Shape, ShapeKind, Texture};
use crate::tasks::{KEYPOINT_COLORS, MASK_COLORS};

/// How answers are disturbed.
#[derive(Debug, Clone, Copy)]
pub struct Perturb {
    /// The drawn colour is off by up to this many levels per channel.
    pub color_drift: f32,
    /// The blend weight is 0.5 +- this.
    pub alpha_jitter: f32,
    /// The whole image shifts by up to this many levels per channel.
    pub global_shift: f32,
    /// Gaussian noise (levels, standard deviation).
    pub noise: f32,
    /// Downscale factor of a resize round trip (1 = none).
    pub resize: f32,
    /// JPEG quality (None = lossless).
    pub jpeg: Option<u8>,
}

impl Perturb {
    pub const NONE: Perturb = Perturb {
        color_drift: 0.0,
        alpha_jitter: 0.0,
        global_shift: 0.0,
        noise: 0.0,
        resize: 1.0,
        jpeg: None,
    };
    /// The set the targets are stated for.
    pub const STANDARD: Perturb = Perturb {
        color_drift: 20.0,
        alpha_jitter: 0.1,
        global_shift: 4.0,
        noise: 4.0,
        resize: 0.75,
        jpeg: Some(75),
    };
}

/// Measured quality.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub size: u32,
    pub masks: usize,
    pub mean_iou: f64,
    pub min_iou: f64,
    pub keypoints: usize,
    pub keypoints_found: usize,
    pub mean_keypoint_error_px: f64,
    pub max_keypoint_error_px: f64,
    pub untouched: usize,
    pub false_positives: usize,
}

/// Runs `cases` segmentation, keypoint and untouched cases per photo at `size` x `size`.
pub fn run(photos: &[RgbImage], cases: usize, size: u32, perturb: &Perturb, seed: u64) -> Report {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut r = Report {
        size,
        min_iou: 1.0,
        ..Default::default()
    };
    let (mut iou_sum, mut err_sum) = (0.0, 0.0);
    for photo in photos {
        let base = square(photo, size);
        for _ in 0..cases {
            // Segmentation.
            let (answer, truths) = draw_masks(&base, &mut rng, perturb);
            let answer = super::align(&base, &disturb(&answer, &mut rng, perturb))
                .unwrap()
                .into_owned();
            let parsed = Parsed {
                kind: Kind::Segmentation,
                targets: truths.iter().map(|(c, _)| target(*c)).collect(),
            };
            let d = decode(&base, &answer, &parsed).expect("same size");
            for (color, truth) in &truths {
                let mut pred = vec![false; truth.len()];
                for inst in d.instances.iter().filter(|i| i.color == *color) {
                    pred.iter_mut().zip(&inst.mask).for_each(|(p, m)| *p |= *m);
                }
                let iou = iou(&pred, truth);
                iou_sum += iou;
                r.min_iou = r.min_iou.min(iou);
                r.masks += 1;
            }
            // Keypoints.
            let (answer, truths) = draw_discs(&base, &mut rng, perturb);
            let answer = disturb(&answer, &mut rng, perturb);
            let parsed = Parsed {
                kind: Kind::Keypoints,
                targets: truths.iter().map(|(c, ..)| target(*c)).collect(),
            };
            let d = decode(&base, &answer, &parsed).expect("same size");
            for (color, x, y) in &truths {
                r.keypoints += 1;
                if let Some(p) = d.keypoints.iter().find(|p| p.color == *color) {
                    let e = ((p.x - *x as f64).powi(2) + (p.y - *y as f64).powi(2)).sqrt();
                    r.keypoints_found += 1;
                    err_sum += e;
                    r.max_keypoint_error_px = r.max_keypoint_error_px.max(e);
                }
            }
            // Untouched: any mask or keypoint found is a false positive.
            let answer = disturb(&base, &mut rng, perturb);
            let mask_color = MASK_COLORS.choose(&mut rng).unwrap().rgb;
            let kp_color = KEYPOINT_COLORS.choose(&mut rng).unwrap().rgb;
            for (kind, color) in [
                (Kind::Segmentation, mask_color),
                (Kind::Keypoints, kp_color),
            ] {
                let parsed = Parsed {
                    kind,
                    targets: vec![target(color)],
                };
                let d = decode(&base, &answer, &parsed).expect("same size");
                r.untouched += 1;
                if !d.instances.is_empty() || !d.keypoints.is_empty() {
                    r.false_positives += 1;
                }
            }
        }
    }
    r.mean_iou = iou_sum / r.masks.max(1) as f64;
    r.mean_keypoint_error_px = err_sum / r.keypoints_found.max(1) as f64;
    r
}

/// A perturbed segmentation answer (`Kind::Segmentation`, up to 3 targets) or keypoint answer
/// (up to 5 discs) on `base`, with the structured request that asked for it: the benchmark's
/// input.
pub fn example(base: &RgbImage, kind: Kind, seed: u64) -> (RgbImage, Parsed) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let p = Perturb {
        resize: 1.0,
        ..Perturb::STANDARD
    };
    let (answer, colors): (RgbImage, Vec<[u8; 3]>) = match kind {
        Kind::Keypoints => {
            let (a, t) = draw_discs(base, &mut rng, &p);
            (a, t.iter().map(|t| t.0).collect())
        }
        _ => {
            let (a, t) = draw_masks(base, &mut rng, &p);
            (a, t.iter().map(|t| t.0).collect())
        }
    };
    let parsed = Parsed {
        kind,
        targets: colors.into_iter().map(target).collect(),
    };
    (disturb(&answer, &mut rng, &p), parsed)
}

fn target(color: [u8; 3]) -> Target {
    Target {
        phrase: "the shape".into(),
        category: "shape".into(),
        color,
        color_name: super::color::describe(color),
        keypoint: Some("point".into()),
        several: false,
    }
}

/// The centre square of `photo`, resized to `size`.
pub fn square(photo: &RgbImage, size: u32) -> RgbImage {
    let s = photo.width().min(photo.height());
    let crop = image::imageops::crop_imm(
        photo,
        (photo.width() - s) / 2,
        (photo.height() - s) / 2,
        s,
        s,
    )
    .to_image();
    crate::imageio::resize_exact(&crop, size, size)
}

fn drift(rng: &mut ChaCha8Rng, c: [u8; 3], by: f32) -> [f32; 3] {
    c.map(|v| (v as f32 + rng.random_range(-by..=by)).clamp(0.0, 255.0))
}

type MaskTruth = ([u8; 3], Vec<bool>);

/// 1-3 non-overlapping shapes, each blended in its own colour.
fn draw_masks(base: &RgbImage, rng: &mut ChaCha8Rng, p: &Perturb) -> (RgbImage, Vec<MaskTruth>) {
    let (w, h) = base.dimensions();
    let mut out = base.clone();
    let mut colors = MASK_COLORS.to_vec();
    colors.shuffle(rng);
    let mut taken = vec![false; (w * h) as usize];
    let mut truths = vec![];
    for color in colors.iter().take(rng.random_range(1..=3)) {
        for _attempt in 0..20 {
            let shape = Shape {
                kind: *ShapeKind::ALL.choose(rng).unwrap(),
                color: *color,
                cx: rng.random_range(0.15..0.85) * w as f32,
                cy: rng.random_range(0.15..0.85) * h as f32,
                size: rng.random_range(0.08..0.22) * w.min(h) as f32,
                angle: rng.random_range(0.0..std::f32::consts::TAU),
                texture: Texture::Flat,
            };
            let cover = coverage(&shape, w, h);
            if cover.iter().zip(&taken).any(|(c, t)| *c > 0.0 && *t) {
                continue;
            }
            let k = drift(rng, color.rgb, p.color_drift);
            let alpha = 0.5 + rng.random_range(-p.alpha_jitter..=p.alpha_jitter);
            for (i, px) in out.pixels_mut().enumerate() {
                let a = alpha * cover[i];
                if a > 0.0 {
                    taken[i] = true;
                    for c in 0..3 {
                        px[c] = (px[c] as f32 * (1.0 - a) + k[c] * a).round() as u8;
                    }
                }
            }
            truths.push((color.rgb, cover.iter().map(|c| *c >= 0.5).collect()));
            break;
        }
    }
    (out, truths)
}

/// The share of each pixel inside `shape` (4x4 samples).
fn coverage(shape: &Shape, w: u32, h: u32) -> Vec<f32> {
    let reach = shape.size + 2.0;
    let mut cover = vec![0f32; (w * h) as usize];
    let (x0, x1) = (
        (shape.cx - reach).max(0.0) as u32,
        ((shape.cx + reach) as u32).min(w),
    );
    let (y0, y1) = (
        (shape.cy - reach).max(0.0) as u32,
        ((shape.cy + reach) as u32).min(h),
    );
    for y in y0..y1 {
        for x in x0..x1 {
            let mut n = 0;
            for s in 0..16 {
                let (sx, sy) = ((s % 4) as f32 + 0.5, (s / 4) as f32 + 0.5);
                n += shape.contains(x as f32 + sx / 4.0, y as f32 + sy / 4.0) as u32;
            }
            cover[(y * w + x) as usize] = n as f32 / 16.0;
        }
    }
    cover
}

/// 1-5 discs of distinct keypoint colours, apart from each other.
fn draw_discs(
    base: &RgbImage,
    rng: &mut ChaCha8Rng,
    p: &Perturb,
) -> (RgbImage, Vec<([u8; 3], f32, f32)>) {
    let (w, h) = base.dimensions();
    let r = expected_radius(w as usize, h as usize) as f32;
    let mut out = base.clone();
    let mut colors = KEYPOINT_COLORS.to_vec();
    colors.shuffle(rng);
    let mut truths: Vec<([u8; 3], f32, f32)> = vec![];
    for color in colors.iter().take(rng.random_range(1..=5)) {
        for _attempt in 0..50 {
            let (x, y) = (
                rng.random_range(r + 2.0..w as f32 - r - 2.0),
                rng.random_range(r + 2.0..h as f32 - r - 2.0),
            );
            if truths
                .iter()
                .any(|(_, tx, ty)| (x - tx).powi(2) + (y - ty).powi(2) < (2.0 * r + 4.0).powi(2))
            {
                continue;
            }
            let k = drift(rng, color.rgb, p.color_drift).map(|v| v.round() as u8);
            draw_disc(&mut out, x, y, r, k);
            truths.push((color.rgb, x, y));
            break;
        }
    }
    (out, truths)
}

/// Global shift, noise, resize round trip and JPEG, in that order.
fn disturb(img: &RgbImage, rng: &mut ChaCha8Rng, p: &Perturb) -> RgbImage {
    let (w, h) = img.dimensions();
    let shift = [0; 3].map(|_: u8| rng.random_range(-p.global_shift..=p.global_shift));
    let noise = Normal::new(0.0f32, p.noise.max(1e-6)).unwrap();
    let mut out = img.clone();
    for px in out.pixels_mut() {
        for c in 0..3 {
            let n = if p.noise > 0.0 {
                noise.sample(rng)
            } else {
                0.0
            };
            px[c] = (px[c] as f32 + shift[c] + n).round().clamp(0.0, 255.0) as u8;
        }
    }
    if p.resize < 1.0 {
        let (sw, sh) = ((w as f32 * p.resize) as u32, (h as f32 * p.resize) as u32);
        out = crate::imageio::resize_exact(&out, sw, sh);
    }
    if let Some(q) = p.jpeg {
        let mut bytes = vec![];
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, q)
            .encode_image(&out)
            .expect("in-memory JPEG");
        out = image::load_from_memory(&bytes).expect("own JPEG").to_rgb8();
    }
    out
}

fn iou(a: &[bool], b: &[bool]) -> f64 {
    let (mut inter, mut union) = (0u64, 0u64);
    for (x, y) in a.iter().zip(b) {
        inter += (*x && *y) as u64;
        union += (*x || *y) as u64;
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}
