//! What the pixels show, without the words: which kind of answer the (source, edited) pair
//! holds and in which colours.
//!
//! A segmentation answer is a 50% blend, `edited = 0.5 source + 0.5 colour`, so over a mask
//! `2 edited - source` is the colour itself; a keypoint answer is opaque discs,
//! `edited = colour`. For each candidate colour (the official overlay tables, plus colours the
//! changed pixels point at) each pixel's blend weight towards it is measured as in
//! [`super::mask`]; connected pixels that fit are one mark, and the mark's median weight tells
//! a blend (about 0.5) from an opaque paint (about 1). Opaque marks of the expected disc size
//! and roundness are keypoint discs. Marks smaller than the mask decoder's minimum are noise.

use super::keypoint::{discs, expected_radius};
use super::mask::{global_shift, MaskParams};
use super::raster::{components, Planes};
use crate::tasks::{KEYPOINT_COLORS, MASK_COLORS};

/// The answers the pixels show, each colour with how much of it there is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shown {
    /// Colours drawn as 50% blends, with the blended area in pixels, largest first.
    pub blends: Vec<([u8; 3], usize)>,
    /// Colours drawn as opaque discs of the keypoint size, with their number, most first.
    pub discs: Vec<([u8; 3], usize)>,
    /// The area of one keypoint disc at this size, in pixels.
    pub disc_area: usize,
}

impl Shown {
    pub fn is_empty(&self) -> bool {
        self.blends.is_empty() && self.discs.is_empty()
    }
}

/// Reads what `out` draws over `src` (equal sizes).
pub fn shown(src: &Planes, out: &Planes) -> Shown {
    let (w, h) = (src.width, src.height);
    let p = MaskParams::default();
    let r = p.blur.unwrap_or_else(|| (w.min(h) / 256).max(1));
    let (s, mut o) = (src.box_blur(r), out.box_blur(r));
    let shift = global_shift(&s, &o);
    o.px.iter_mut()
        .for_each(|p| (0..3).for_each(|c| p[c] -= shift[c]));
    let min_area = ((p.min_area * (w * h) as f64) as usize).max(9);
    let changed: Vec<usize> = (0..w * h)
        .filter(|&i| dist2(s.px[i], o.px[i]) > 20.0 * 20.0)
        .collect();
    let r0 = expected_radius(w, h);
    let disc_area = std::f64::consts::PI * r0 * r0;
    let mut found = Shown {
        disc_area: disc_area as usize,
        ..Shown::default()
    };
    if changed.len() < min_area {
        return found;
    }
    let mut candidates: Vec<[f32; 3]> = MASK_COLORS
        .iter()
        .chain(KEYPOINT_COLORS.iter())
        .map(|c| c.rgb.map(|v| v as f32))
        .collect();
    candidates.dedup_by(|a, b| a == b);
    let table = candidates.len();
    // Colours outside the tables: where the changed pixels' blend colours (2o - s) or painted
    // colours (o) pile up.
    let blend_colours: Vec<[f32; 3]> = changed
        .iter()
        .map(|&i| [0, 1, 2].map(|c| 2.0 * o.px[i][c] - s.px[i][c]))
        .collect();
    let paint_colours: Vec<[f32; 3]> = changed.iter().map(|&i| o.px[i]).collect();
    for values in [&blend_colours, &paint_colours] {
        for m in modes(values, min_area) {
            if candidates.iter().all(|c| dist2(*c, m) > 40.0 * 40.0) {
                candidates.push(m);
            }
        }
    }
    let mut blend_sets: Vec<([u8; 3], Vec<usize>, bool)> = vec![];
    // (colour, disc centres, a table colour)
    type Discs = ([u8; 3], Vec<(f64, f64)>, bool);
    let mut disc_sets: Vec<Discs> = vec![];
    for (ci, k) in candidates.into_iter().enumerate() {
        // A quick count over the changed pixels before the whole-image pass.
        let fits = changed
            .iter()
            .filter(|&&i| weight(s.px[i], o.px[i], k, &p).is_some())
            .count();
        if fits < min_area {
            continue;
        }
        let weights: Vec<Option<f32>> =
            s.px.iter()
                .zip(&o.px)
                .map(|(s, o)| weight(*s, *o, k, &p))
                .collect();
        let mask: Vec<bool> = weights.iter().map(|a| a.is_some()).collect();
        let (labels, n) = components(&mask, w, h);
        let mut members: Vec<Vec<f32>> = vec![vec![]; n];
        for (l, a) in labels.iter().zip(&weights) {
            if let (true, Some(a)) = (*l > 0, a) {
                members[*l as usize - 1].push(*a);
            }
        }
        let (mut blend_area, mut opaque) = (0usize, 0usize);
        let mut blended = vec![false; n + 1];
        for (l, mut m) in members.into_iter().enumerate() {
            if m.len() < min_area {
                continue;
            }
            let mid = m.len() / 2;
            let median = *m.select_nth_unstable_by(mid, f32::total_cmp).1;
            if (0.3..=0.75).contains(&median) {
                blend_area += m.len();
                blended[l + 1] = true;
            } else if median > 0.8 && (m.len() as f64) < 4.0 * disc_area {
                opaque += 1;
            }
        }
        let rgb = k.map(|v| v.round().clamp(0.0, 255.0) as u8);
        if blend_area > 0 {
            let pixels: Vec<usize> = (0..w * h)
                .filter(|&i| blended[labels[i] as usize])
                .collect();
            blend_sets.push((rgb, pixels, ci < table));
        }
        if opaque > 0 {
            let centres: Vec<(f64, f64)> = discs(src, out, rgb)
                .iter()
                .filter(|d| d.score >= 0.5)
                .map(|d| (d.x, d.y))
                .collect();
            if !centres.is_empty() {
                disc_sets.push((rgb, centres, ci < table));
            }
        }
    }
    // Colours estimated from the pixels stand in only where no table colour shows: beside a
    // table colour's overlay they are its fringe (a rim, ringing, a residual).
    if blend_sets.iter().any(|(.., in_table)| *in_table) {
        blend_sets.retain(|(.., in_table)| *in_table);
    }
    // Two candidates that explain the same pixels (two near colours) are one overlay: the one
    // explaining more stays, a table colour when it explains at least 80% as much.
    blend_sets.sort_by_key(|(_, px, in_table)| {
        std::cmp::Reverse(px.len() * if *in_table { 5 } else { 4 })
    });
    let mut taken = vec![false; w * h];
    for (rgb, px, _) in blend_sets {
        let shared = px.iter().filter(|&&i| taken[i]).count();
        if shared * 2 >= px.len() {
            continue;
        }
        px.iter().for_each(|&i| taken[i] = true);
        found.blends.push((rgb, px.len()));
    }
    // A colour drawn over a tenth of the main one's area or less is the main one's fringe
    // (ringing, a rim), not a second overlay.
    if let Some(&(_, main)) = found.blends.first() {
        found.blends.retain(|(_, a)| *a * 10 > main);
    }
    // Discs likewise: estimated colours only where no table colour shows discs, and two
    // colours finding discs at the same places are one.
    if disc_sets.iter().any(|(.., in_table)| *in_table) {
        disc_sets.retain(|(.., in_table)| *in_table);
    }
    disc_sets.sort_by_key(|(_, c, _)| std::cmp::Reverse(c.len()));
    let mut seen: Vec<(f64, f64)> = vec![];
    for (rgb, centres, _) in disc_sets {
        let near = |a: &(f64, f64)| seen.iter().any(|b| (a.0 - b.0).hypot(a.1 - b.1) < r0);
        if centres.iter().filter(|c| near(c)).count() * 2 >= centres.len() {
            continue;
        }
        seen.extend(&centres);
        found.discs.push((rgb, centres.len()));
    }
    found
}

fn dist2(a: [f32; 3], b: [f32; 3]) -> f32 {
    (0..3).map(|c| (a[c] - b[c]).powi(2)).sum()
}

/// The blend weight of `o` from `s` towards `k`, where the change is one (else None).
fn weight(s: [f32; 3], o: [f32; 3], k: [f32; 3], p: &MaskParams) -> Option<f32> {
    let v = [k[0] - s[0], k[1] - s[1], k[2] - s[2]];
    let vv = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
    if vv < p.min_contrast * p.min_contrast {
        return None;
    }
    let d = [o[0] - s[0], o[1] - s[1], o[2] - s[2]];
    let a = (d[0] * v[0] + d[1] * v[1] + d[2] * v[2]) / vv;
    let res =
        ((d[0] - a * v[0]).powi(2) + (d[1] - a * v[1]).powi(2) + (d[2] - a * v[2]).powi(2)).sqrt();
    let tol = p.residual_abs + p.residual_rel * vv.sqrt();
    (a >= p.alpha_min && a <= p.alpha_max && res <= tol).then_some(a)
}

/// Up to four colours many `values` gather around (32-level bins, at least `min_count` each),
/// each the mean of its bin.
fn modes(values: &[[f32; 3]], min_count: usize) -> Vec<[f32; 3]> {
    const BINS: usize = 8;
    let bin = |v: [f32; 3]| -> Option<usize> {
        let mut i = 0;
        for c in v {
            if !(-8.0..=263.0).contains(&c) {
                return None;
            }
            i = i * BINS + ((c.clamp(0.0, 255.0) / 256.0 * BINS as f32) as usize).min(BINS - 1);
        }
        Some(i)
    };
    let mut count = vec![0usize; BINS * BINS * BINS];
    let mut sum = vec![[0f32; 3]; BINS * BINS * BINS];
    for v in values {
        if let Some(b) = bin(*v) {
            count[b] += 1;
            (0..3).for_each(|c| sum[b][c] += v[c].clamp(0.0, 255.0));
        }
    }
    let mut order: Vec<usize> = (0..count.len())
        .filter(|&b| count[b] >= min_count)
        .collect();
    order.sort_by_key(|&b| std::cmp::Reverse(count[b]));
    order
        .into_iter()
        .take(4)
        .map(|b| sum[b].map(|v| v / count[b] as f32))
        .collect()
}
