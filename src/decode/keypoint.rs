//! Keypoints from opaque discs: pixels that became the asked colour (and were not it before)
//! form candidate blobs; a blob's size against the expected disc (radius 10 px at 256 px,
//! scaled with the image) and its colour fit give the confidence, and the centre is the
//! centroid weighted by each pixel's coverage (its blend weight towards the colour), which
//! makes anti-aliased edges count by the part of the pixel the disc covers: sub-pixel accurate.
//! Coordinates are continuous: pixel `x` spans `[x, x + 1)`.

use super::raster::{components, fill_holes, Planes};

/// One decoded disc.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Disc {
    pub x: f64,
    pub y: f64,
    pub radius: f64,
    pub score: f32,
}

/// The expected disc radius for an image of this size (the paper: 10 px at 256 x 256).
pub fn expected_radius(w: usize, h: usize) -> f64 {
    10.0 * w.min(h) as f64 / 256.0
}

/// Discs of `color`, best first; empty when none is drawn.
pub fn discs(src: &Planes, out: &Planes, color: [u8; 3]) -> Vec<Disc> {
    let (w, h) = (src.width, src.height);
    let k = color.map(|c| c as f32);
    let mut cover = vec![0f32; w * h];
    let mut member = vec![false; w * h];
    for (i, (s, o)) in src.px.iter().zip(&out.px).enumerate() {
        let v = [k[0] - s[0], k[1] - s[1], k[2] - s[2]];
        let vv = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
        if vv < 50.0 * 50.0 {
            continue;
        }
        let d = [o[0] - s[0], o[1] - s[1], o[2] - s[2]];
        let a = (d[0] * v[0] + d[1] * v[1] + d[2] * v[2]) / vv;
        let dist = ((o[0] - k[0]).powi(2) + (o[1] - k[1]).powi(2) + (o[2] - k[2]).powi(2)).sqrt();
        cover[i] = a.clamp(0.0, 1.0);
        member[i] = a > 0.6 && dist < 0.45 * vv.sqrt() + 10.0;
    }
    let r0 = expected_radius(w, h);
    let a0 = std::f64::consts::PI * r0 * r0;
    fill_holes(&mut member, w, h, |hole| (hole.len() as f64) < 0.3 * a0);
    // A filled hole is disc too (where the source already was the colour): full coverage.
    for (c, m) in cover.iter_mut().zip(&member) {
        if *m {
            *c = c.max(1.0);
        }
    }
    let (labels, n) = components(&member, w, h);
    let mut stats = vec![(0usize, 0usize, 0usize, 0usize, 0usize); n]; // area, x0, y0, x1, y1
    for (i, &l) in labels.iter().enumerate() {
        if l == 0 {
            continue;
        }
        let (x, y) = (i % w, i / w);
        let s = &mut stats[l as usize - 1];
        if s.0 == 0 {
            *s = (0, x, y, x, y);
        }
        *s = (s.0 + 1, s.1.min(x), s.2.min(y), s.3.max(x), s.4.max(y));
    }
    let mut found: Vec<Disc> = stats
        .iter()
        .filter_map(|&(area, x0, y0, x1, y1)| {
            let ratio = area as f64 / a0;
            if !(0.15..=4.0).contains(&ratio) {
                return None;
            }
            // The coverage-weighted centroid over the blob's box grown by 2 px, so that
            // anti-aliased rims count with their partial coverage.
            let (gx0, gy0) = (x0.saturating_sub(2), y0.saturating_sub(2));
            let (gx1, gy1) = ((x1 + 2).min(w - 1), (y1 + 2).min(h - 1));
            let (mut sw, mut sx, mut sy) = (0f64, 0f64, 0f64);
            for y in gy0..=gy1 {
                for x in gx0..=gx1 {
                    let c = cover[y * w + x] as f64;
                    if c > 0.05 {
                        sw += c;
                        sx += c * (x as f64 + 0.5);
                        sy += c * (y as f64 + 0.5);
                    }
                }
            }
            let (bw, bh) = ((x1 - x0 + 1) as f64, (y1 - y0 + 1) as f64);
            // A disc fills pi/4 of its square box; elongated or hollow blobs score lower.
            let roundness = (area as f64 / (bw * bh) / (std::f64::consts::PI / 4.0)).min(1.0)
                * (bw.min(bh) / bw.max(bh));
            let size = ratio.min(1.0 / ratio).sqrt();
            Some(Disc {
                x: sx / sw,
                y: sy / sw,
                radius: (sw / std::f64::consts::PI).sqrt(),
                score: (size * roundness) as f32,
            })
        })
        .filter(|d| d.score >= 0.3)
        .collect();
    found.sort_by(|a, b| b.score.total_cmp(&a.score));
    found
}
