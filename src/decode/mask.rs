//! Segmentation masks from 50% colour blends.
//!
//! A segmentation answer is `out = (1 - a) * src + a * colour` inside the mask with `a = 0.5`.
//! Per pixel the decoder projects `out - src` onto `colour - src`: the projection is the blend
//! weight `a`, the remainder is what a blend cannot explain. Pixels with `a` in
//! `[alpha_min, alpha_max]` and a small remainder are marked; where the source already is the
//! colour (nothing to see) the pixel is "unknown" and only filled when enclosed by the mask.
//! Both images are box-blurred first (noise, JPEG ringing): blurring is linear, so inside a
//! mask the blurred output is still a blend of the blurred source, and a straight edge keeps
//! its 25% crossing where the true edge is. Then small specks are dropped, holes that are
//! small or unknown are filled and the rest splits into 8-connected instances.

use super::raster::{components, fill_holes, Planes};

/// Thresholds of the blend test (levels are 0-255).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskParams {
    /// Box blur radius; `None` scales with the image (1 at 256 px, 2 at 512 px).
    pub blur: Option<usize>,
    /// Below this distance between source and colour a pixel cannot show the blend.
    pub min_contrast: f32,
    pub alpha_min: f32,
    pub alpha_max: f32,
    /// Remainder allowed: `residual_abs + residual_rel * |colour - src|`.
    pub residual_abs: f32,
    pub residual_rel: f32,
    /// Specks smaller than this fraction of the image are dropped (at least 9 pixels).
    pub min_area: f64,
}

impl Default for MaskParams {
    fn default() -> Self {
        Self {
            blur: None,
            min_contrast: 30.0,
            alpha_min: 0.25,
            alpha_max: 1.25,
            residual_abs: 12.0,
            residual_rel: 0.15,
            min_area: 0.0004,
        }
    }
}

/// One decoded instance: a row-major mask and a confidence in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub mask: Vec<bool>,
    pub area: u64,
    pub score: f32,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Off,
    On(f32),
    Unknown,
}

/// The instances drawn in each of `colors` (source and output of equal size). A pixel that
/// fits several colours goes to the best fit, so one target's blend is not read as another's.
pub fn blend_regions(
    src: &Planes,
    out: &Planes,
    colors: &[[u8; 3]],
    p: &MaskParams,
) -> Vec<Vec<Region>> {
    let (w, h) = (src.width, src.height);
    let r = p.blur.unwrap_or_else(|| (w.min(h) / 256).max(1));
    let (s, mut o) = (src.box_blur(r), out.box_blur(r));
    let shift = global_shift(&s, &o);
    o.px.iter_mut()
        .for_each(|p| (0..3).for_each(|c| p[c] -= shift[c]));
    let mut states: Vec<Vec<State>> = colors
        .iter()
        .map(|color| {
            let k = drawn_color(&s, &o, color.map(|c| c as f32), p);
            s.px.iter()
                .zip(&o.px)
                .map(|(s, o)| classify(*s, *o, k, p))
                .collect()
        })
        .collect();
    if colors.len() > 1 {
        for i in 0..w * h {
            let fit = |st: &State| if let State::On(f) = st { *f } else { -1.0 };
            let best = (0..colors.len())
                .max_by(|&a, &b| fit(&states[a][i]).total_cmp(&fit(&states[b][i])))
                .unwrap();
            if fit(&states[best][i]) >= 0.0 {
                for (t, st) in states.iter_mut().enumerate() {
                    if t != best && matches!(st[i], State::On(_)) {
                        st[i] = State::Off;
                    }
                }
            }
        }
    }
    states.iter().map(|st| regions(st, w, h, p)).collect()
}

/// The colour actually drawn for the asked `k`: a blend gives it back, `2 o - s`, so the
/// per-channel median of that over the pixels that fit `k` well is the drawn colour (models
/// drift a few tens of levels from the one asked). Kept within 48 levels of `k`.
fn drawn_color(s: &Planes, o: &Planes, k: [f32; 3], p: &MaskParams) -> [f32; 3] {
    let step = (s.px.len() / 20_000).max(1);
    let mut back: [Vec<f32>; 3] = Default::default();
    for (a, b) in s.px.iter().zip(&o.px).step_by(step) {
        if let State::On(fit) = classify(*a, *b, k, p) {
            if fit > 0.5 {
                (0..3).for_each(|c| back[c].push(2.0 * b[c] - a[c]));
            }
        }
    }
    if back[0].len() < 50 {
        return k;
    }
    let drawn = back.map(|mut v| {
        let mid = v.len() / 2;
        *v.select_nth_unstable_by(mid, f32::total_cmp).1
    });
    let far = (0..3).any(|c| (drawn[c] - k[c]).abs() > 48.0);
    if far {
        k
    } else {
        drawn.map(|v| v.clamp(0.0, 255.0))
    }
}

fn regions(states: &[State], w: usize, h: usize, p: &MaskParams) -> Vec<Region> {
    let min_area = ((p.min_area * (w * h) as f64) as usize).max(9);
    // Everything happens inside the marked pixels' box grown by one pixel: outside it there
    // is no mark, so a hole reaching the box's edge reaches the image's border too, and the
    // flood fills never walk the untouched rest of the image.
    let on = |i: usize| matches!(states[i], State::On(_));
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for y in 0..h {
        for x in 0..w {
            if on(y * w + x) {
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
        }
    }
    if x0 > x1 {
        return vec![];
    }
    let (x0, y0) = (x0.saturating_sub(1), y0.saturating_sub(1));
    let (x1, y1) = ((x1 + 1).min(w - 1), (y1 + 1).min(h - 1));
    let (cw, ch) = (x1 - x0 + 1, y1 - y0 + 1);
    let full = |i: usize| (y0 + i / cw) * w + x0 + i % cw;
    let mut mask: Vec<bool> = (0..cw * ch).map(|i| on(full(i))).collect();
    drop_small(&mut mask, cw, ch, min_area);
    fill_holes(&mut mask, cw, ch, |hole| {
        let unknown = hole
            .iter()
            .filter(|&&i| states[full(i)] == State::Unknown)
            .count();
        hole.len() < min_area || unknown * 2 >= hole.len()
    });
    let (labels, n) = components(&mask, cw, ch);
    let mut regions: Vec<Region> = (1..=n as u32)
        .map(|_| Region {
            mask: vec![false; w * h],
            area: 0,
            score: 0.0,
        })
        .collect();
    let mut confident = vec![0usize; n];
    for (i, &l) in labels.iter().enumerate() {
        if l == 0 {
            continue;
        }
        let (r, f) = (&mut regions[l as usize - 1], full(i));
        r.mask[f] = true;
        r.area += 1;
        if let State::On(c) = states[f] {
            r.score += c;
            confident[l as usize - 1] += 1;
        }
    }
    for (r, &c) in regions.iter_mut().zip(&confident) {
        // Mean confidence of the pixels that showed the blend, discounted by the share of the
        // region that had to be inferred (unknown or filled).
        r.score = if c == 0 {
            0.0
        } else {
            r.score / c as f32 * (c as f32 / r.area as f32).sqrt()
        };
    }
    regions.sort_by_key(|r| std::cmp::Reverse(r.area));
    regions
}

/// The shift of the whole output against the source (models drift a few levels overall):
/// the per-channel median difference over the pixels that changed little.
pub fn global_shift(s: &Planes, o: &Planes) -> [f32; 3] {
    let step = (s.px.len() / 20_000).max(1);
    let mut diffs: [Vec<f32>; 3] = Default::default();
    for (a, b) in s.px.iter().zip(&o.px).step_by(step) {
        let d = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
        if d.iter().all(|v| v.abs() < 16.0) {
            (0..3).for_each(|c| diffs[c].push(d[c]));
        }
    }
    diffs.map(|mut v| {
        if v.len() < 100 {
            return 0.0;
        }
        let mid = v.len() / 2;
        *v.select_nth_unstable_by(mid, f32::total_cmp).1
    })
}

fn classify(s: [f32; 3], o: [f32; 3], k: [f32; 3], p: &MaskParams) -> State {
    let v = [k[0] - s[0], k[1] - s[1], k[2] - s[2]];
    let d = [o[0] - s[0], o[1] - s[1], o[2] - s[2]];
    let vv = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
    if vv < p.min_contrast * p.min_contrast {
        return State::Unknown;
    }
    let a = (d[0] * v[0] + d[1] * v[1] + d[2] * v[2]) / vv;
    let res =
        ((d[0] - a * v[0]).powi(2) + (d[1] - a * v[1]).powi(2) + (d[2] - a * v[2]).powi(2)).sqrt();
    let tol = p.residual_abs + p.residual_rel * vv.sqrt();
    if a < p.alpha_min || a > p.alpha_max || res > tol {
        return State::Off;
    }
    let fit = (-((a - 0.5) / 0.35).powi(2)).exp() * (1.0 - res / tol);
    State::On(fit.clamp(0.0, 1.0))
}

fn drop_small(mask: &mut [bool], w: usize, h: usize, min_area: usize) {
    let (labels, n) = components(mask, w, h);
    let mut area = vec![0usize; n + 1];
    labels.iter().for_each(|&l| area[l as usize] += 1);
    for (m, &l) in mask.iter_mut().zip(&labels) {
        if l != 0 && area[l as usize] < min_area {
            *m = false;
        }
    }
}
