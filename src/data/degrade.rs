//! Degradations for the enhancement tasks: Gaussian noise and synthetic watermarks (text-like
//! strokes or a ring-and-bar logo), blended semi-transparently.

use image::{Rgb, RgbImage};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

pub fn add_noise(rng: &mut ChaCha8Rng, img: &RgbImage, sigma: f32) -> RgbImage {
    use rand_distr::{Distribution, Normal};
    let n = Normal::new(0.0f32, sigma).expect("positive sigma");
    let mut out = img.clone();
    for p in out.pixels_mut() {
        for k in 0..3 {
            p[k] = (p[k] as f32 + n.sample(rng)).clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// Overlays a semi-transparent synthetic watermark: rows of block "letters" (text-like) or a
/// ring-and-bar logo, tiled or single, light or dark.
pub fn add_watermark(rng: &mut ChaCha8Rng, img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let s = w as f32;
    let mut alpha = vec![0f32; (w * h) as usize];
    let color: [u8; 3] = if rng.random_bool(0.7) {
        [255, 255, 255]
    } else {
        [0, 0, 0]
    };
    let opacity = rng.random_range(0.35..0.6);
    let rect = |alpha: &mut Vec<f32>, x0: f32, y0: f32, x1: f32, y1: f32| {
        for y in (y0.max(0.0) as u32)..(y1.min(h as f32) as u32) {
            for x in (x0.max(0.0) as u32)..(x1.min(w as f32) as u32) {
                alpha[(y * w + x) as usize] = 1.0;
            }
        }
    };
    if rng.random_bool(0.6) {
        // Text-like: a line or two of glyphs made of strokes.
        let glyph = rng.random_range(0.05..0.09) * s;
        let stroke = (glyph * 0.18).max(1.0);
        let lines = rng.random_range(1..=2);
        let y_start = rng.random_range(0.1..0.6) * s;
        for line in 0..lines {
            let y = y_start + line as f32 * glyph * 1.6;
            let mut x = rng.random_range(0.05..0.3) * s;
            let letters = rng.random_range(4..10);
            for _ in 0..letters {
                // Each glyph: 2-4 strokes on a 3x5 grid.
                for _ in 0..rng.random_range(2..=4) {
                    if rng.random_bool(0.5) {
                        let gx = x + rng.random_range(0..3) as f32 * glyph * 0.3;
                        rect(&mut alpha, gx, y, gx + stroke, y + glyph);
                    } else {
                        let gy = y + rng.random_range(0..3) as f32 * glyph * 0.45;
                        rect(&mut alpha, x, gy, x + glyph * 0.7, gy + stroke);
                    }
                }
                x += glyph * 0.95;
            }
        }
    } else {
        // A logo: a ring with a bar through it, at a random place.
        let (cx, cy) = (
            rng.random_range(0.25..0.75) * s,
            rng.random_range(0.25..0.75) * s,
        );
        let r = rng.random_range(0.1..0.2) * s;
        let t = (0.18 * r).max(1.5);
        for y in 0..h {
            for x in 0..w {
                let d = ((x as f32 + 0.5 - cx).powi(2) + (y as f32 + 0.5 - cy).powi(2)).sqrt();
                if (d - r).abs() < t / 2.0 {
                    alpha[(y * w + x) as usize] = 1.0;
                }
            }
        }
        rect(
            &mut alpha,
            cx - r * 0.7,
            cy - t / 2.0,
            cx + r * 0.7,
            cy + t / 2.0,
        );
    }
    let mut out = img.clone();
    for (i, p) in out.pixels_mut().enumerate() {
        let a = alpha[i] * opacity;
        if a > 0.0 {
            *p =
                Rgb([0, 1, 2]
                    .map(|k| (p[k] as f32 * (1.0 - a) + color[k] as f32 * a).round() as u8));
        }
    }
    out
}
