//! An edit applied as a change to the full-resolution source.
//!
//! The model's result is compared with the source's own VAE round trip at the model's size
//! (`decode(encode(source))`): both went through the autoencoder, so its blur and colour
//! shifts cancel and what differs is what the model changed. Differences over a threshold
//! (after a 3x3 box blur, the largest channel) form the change; specks are dropped, the rest
//! grown a little and feathered into a soft map. On the full-resolution source:
//!
//! - a **local** change (up to [`ChangeParams::global_share`] of the photo) takes the upsampled
//!   result inside, blended over the feather: an added or removed object keeps no trace of
//!   the source's detail;
//! - a **global** change ("make it look like winter") adds the upsampled difference
//!   (result - round trip) to the source: the change's low frequencies transferred, the
//!   source's own detail kept ([`detail_kept`] measures how much).
//!
//! Where the map is zero the output is the source's exact pixels.

use image::RgbImage;

use super::{smooth121, to_u8, Placement};
use crate::decode::raster::{components, Planes};

/// Thresholds of the change map (levels are 0-255, sizes in model pixels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChangeParams {
    /// A pixel changed when its blurred difference exceeds this in some channel.
    pub threshold: f32,
    /// Changed specks smaller than this share of the picture are noise (at least 4 pixels).
    pub min_share: f64,
    /// The change is grown by this many pixels before feathering.
    pub grow: usize,
    /// Width of the feather outside the grown change.
    pub feather: usize,
    /// Above this share of the picture the change is global.
    pub global_share: f64,
}

impl Default for ChangeParams {
    fn default() -> Self {
        Self {
            threshold: 16.0,
            min_share: 0.0005,
            grow: 1,
            feather: 2,
            global_share: 0.4,
        }
    }
}

/// Where the model changed its picture, at the model's size.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub width: usize,
    pub height: usize,
    /// Changed pixels before growing and feathering.
    pub changed: Vec<bool>,
    /// The feathered map in `[0, 1]`: 1 on the grown change, 0 beyond the feather.
    pub alpha: Vec<f32>,
    /// Share of the picture that changed.
    pub share: f64,
    pub global: bool,
}

/// Finds the change between the source's `roundtrip` and the model's `result` (same size).
pub fn find(roundtrip: &RgbImage, result: &RgbImage, p: &ChangeParams) -> Change {
    let (w, h) = (roundtrip.width() as usize, roundtrip.height() as usize);
    assert_eq!(
        roundtrip.dimensions(),
        result.dimensions(),
        "pictures of one size"
    );
    let a = Planes::from_image(roundtrip).box_blur(1);
    let b = Planes::from_image(result).box_blur(1);
    let mut changed: Vec<bool> =
        a.px.iter()
            .zip(&b.px)
            .map(|(s, o)| (0..3).any(|c| (o[c] - s[c]).abs() > p.threshold))
            .collect();
    let min_area = ((p.min_share * (w * h) as f64) as usize).max(4);
    let (labels, n) = components(&changed, w, h);
    let mut sizes = vec![0usize; n + 1];
    labels.iter().for_each(|&l| sizes[l as usize] += 1);
    for (c, &l) in changed.iter_mut().zip(&labels) {
        *c = l != 0 && sizes[l as usize] >= min_area;
    }
    let count = changed.iter().filter(|&&c| c).count();
    let share = count as f64 / (w * h) as f64;
    let grown = dilate(&changed, w, h, p.grow + p.feather);
    let mut alpha: Vec<f32> = grown.iter().map(|&g| g as u8 as f32).collect();
    for _ in 0..p.feather {
        alpha = smooth121(&alpha, w, h);
    }
    // The grown change itself stays fully applied.
    for (a, &inside) in alpha.iter_mut().zip(&dilate(&changed, w, h, p.grow)) {
        if inside {
            *a = 1.0;
        }
    }
    Change {
        width: w,
        height: h,
        changed,
        alpha,
        share,
        global: share > p.global_share,
    }
}

/// `mask` grown by `r` pixels (a square neighbourhood).
fn dilate(mask: &[bool], w: usize, h: usize, r: usize) -> Vec<bool> {
    if r == 0 {
        return mask.to_vec();
    }
    let mut rows = vec![false; w * h];
    for y in 0..h {
        let line = &mask[y * w..(y + 1) * w];
        // The distance to the nearest set pixel on the left and on the right, one pass each.
        let mut last: Option<usize> = None;
        for x in 0..w {
            if line[x] {
                last = Some(x);
            }
            rows[y * w + x] = last.is_some_and(|l| x - l <= r);
        }
        let mut next: Option<usize> = None;
        for x in (0..w).rev() {
            if line[x] {
                next = Some(x);
            }
            rows[y * w + x] |= next.is_some_and(|n| n - x <= r);
        }
    }
    let mut out = vec![false; w * h];
    for x in 0..w {
        let mut last: Option<usize> = None;
        for y in 0..h {
            if rows[y * w + x] {
                last = Some(y);
            }
            out[y * w + x] = last.is_some_and(|l| y - l <= r);
        }
        let mut next: Option<usize> = None;
        for y in (0..h).rev() {
            if rows[y * w + x] {
                next = Some(y);
            }
            out[y * w + x] |= next.is_some_and(|n| n - y <= r);
        }
    }
    out
}

/// The source with `change` applied: inside the map the upsampled `result` (local) or the
/// source plus the upsampled difference `result - roundtrip` (global), blended by the map;
/// the source's exact pixels where the map is zero.
pub fn apply(
    source: &RgbImage,
    place: &Placement,
    roundtrip: &RgbImage,
    result: &RgbImage,
    change: &Change,
) -> RgbImage {
    let mut out = source.clone();
    place.upsample_soft(&change.alpha, |x, y, a| {
        let a = a.min(1.0);
        let s = source.get_pixel(x, y).0.map(|v| v as f32);
        let r = place.sample_rgb(result, x, y);
        let target = if change.global {
            let t = place.sample_rgb(roundtrip, x, y);
            [s[0] + r[0] - t[0], s[1] + r[1] - t[1], s[2] + r[2] - t[2]]
        } else {
            r
        };
        let px = out.get_pixel_mut(x, y);
        for c in 0..3 {
            px[c] = to_u8(s[c] + a * (target[c] - s[c]));
        }
    });
    out
}

/// How much of the source's fine detail `output` keeps (same size): one minus the energy of
/// the difference of their high-pass parts (each image minus its 5x5 box blur) over the
/// source's high-pass energy, at least 0. 1: all detail kept; a plain upscale of a
/// model-size picture keeps little.
pub fn detail_kept(source: &RgbImage, output: &RgbImage) -> f64 {
    let (s, o) = (Planes::from_image(source), Planes::from_image(output));
    let (sb, ob) = (s.box_blur(2), o.box_blur(2));
    let (mut lost, mut energy) = (0f64, 0f64);
    for i in 0..s.px.len() {
        for c in 0..3 {
            let hs = (s.px[i][c] - sb.px[i][c]) as f64;
            let ho = (o.px[i][c] - ob.px[i][c]) as f64;
            lost += (ho - hs) * (ho - hs);
            energy += hs * hs;
        }
    }
    if energy == 0.0 {
        return 1.0;
    }
    (1.0 - lost / energy).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dilate_grows_by_the_radius() {
        let (w, h) = (9, 9);
        let mut m = vec![false; w * h];
        m[4 * w + 4] = true;
        let g = dilate(&m, w, h, 2);
        assert_eq!(g.iter().filter(|&&v| v).count(), 25);
        assert!(g[2 * w + 2] && g[6 * w + 6] && !g[w + 4]);
    }

    #[test]
    fn the_map_is_one_on_the_change_and_zero_far_from_it() {
        let (w, h) = (32u32, 32u32);
        let rt = RgbImage::from_pixel(w, h, image::Rgb([100, 100, 100]));
        let mut res = rt.clone();
        for y in 10..16 {
            for x in 10..16 {
                res.put_pixel(x, y, image::Rgb([200, 50, 50]));
            }
        }
        let c = find(&rt, &res, &ChangeParams::default());
        assert!(!c.global);
        assert_eq!(c.alpha[12 * 32 + 12], 1.0);
        assert_eq!(c.alpha[0], 0.0);
        assert_eq!(c.alpha[12 * 32 + 25], 0.0);
        assert!(c.alpha[12 * 32 + 19] > 0.0 && c.alpha[12 * 32 + 19] < 1.0);
    }
}
