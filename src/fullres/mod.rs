//! Results at the photo's own resolution. The model works at a working size (its resolution,
//! sides multiples of 64, a centred crop of the photo); what comes back is the photo at its
//! own size with the model's answer applied to it:
//!
//! - **annotation answers** (masks, keypoints, boxes) are decoded at the model's size and
//!   redrawn on the full-resolution source the way the model draws them ([`redraw`]);
//! - **edits** are applied as a change ([`change`]): where the model's result differs from the
//!   source's own VAE round trip (so the autoencoder's blur is not taken for an edit),
//!   feathered; the source's exact pixels everywhere else;
//! - **enhancements** (denoise, deblur, watermark removal) run at the photo's own resolution in
//!   overlapping tiles of the model's size (`sample::tiled`, laid out by [`tiles`]).
//!
//! One setting, [`FullRes`], picks among them; `auto` picks by the instruction's [`Family`].

pub mod bench;
pub mod change;
pub mod redraw;
pub mod tiles;

use std::sync::OnceLock;

use image::RgbImage;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::decode::parse;

/// How a result comes back at the photo's resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FullRes {
    /// By the instruction: annotation answers redrawn, edits applied as a change,
    /// enhancements tiled.
    #[default]
    Auto,
    /// The model's change applied to the source (the source's pixels where nothing changed).
    Change,
    /// The whole photo at its own resolution in overlapping tiles of the model's size.
    Tiled,
    /// The model's picture resized to the photo's size (what older versions returned).
    Off,
}

impl FullRes {
    pub const ALL: [FullRes; 4] = [Self::Auto, Self::Change, Self::Tiled, Self::Off];

    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Change => "change",
            Self::Tiled => "tiled",
            Self::Off => "off",
        }
    }

    /// What this setting does for an instruction of `family`.
    pub fn resolve(self, family: Family) -> Method {
        match (self, family) {
            (Self::Off, _) => Method::Resize,
            (Self::Tiled, _) | (Self::Auto, Family::Enhancement) => Method::Tiled,
            (Self::Change, _) | (Self::Auto, Family::Edit) => Method::Change,
            (Self::Auto, Family::Annotation | Family::Unknown) => Method::Redraw,
        }
    }
}

impl std::str::FromStr for FullRes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!("unknown full-resolution mode '{s}' (auto, change, tiled or off)")
            })
    }
}

/// What a [`FullRes`] setting resolves to for one instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Redraw,
    Change,
    Tiled,
    Resize,
}

/// The kind of answer an instruction asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Masks, keypoints, boxes or a label drawn over the photo; also words this reader does
    /// not know (the pixels then say whether an overlay came back).
    Annotation,
    /// Remove, recolour, add, replace, and free edits.
    Edit,
    /// Denoise, deblur, watermark removal: the whole photo restored.
    Enhancement,
    /// Words no reader here knows (another language, a free phrasing): the pixels say whether
    /// an overlay came back (redrawn), else the change is applied.
    Unknown,
}

impl Family {
    /// The family the words ask for: an overlay colour named for a mask, mark or label is an
    /// annotation; then restoring words (noise, blur, watermark) an enhancement; then an
    /// annotation named without a colour ("Segment the dog."), an edit, or words not known.
    pub fn of(instruction: &str) -> Self {
        if parse::parse(instruction).is_ok_and(|p| p.kind != parse::Kind::Edit) {
            return Family::Annotation;
        }
        if enhancement_words().is_match(instruction) {
            return Family::Enhancement;
        }
        let hints = parse::hints(instruction);
        if hints.kind.is_some() {
            Family::Annotation
        } else if hints.edit {
            Family::Edit
        } else {
            Family::Unknown
        }
    }
}

fn enhancement_words() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"(?i)\b(?:de-?noise\w*|noise|noisy|grain\w*|speckl\w*|de-?blur\w*|un-?blur\w*|blur\w*|sharp\w*|(?:in|into|out\s+of)\s+focus|crisp\w*|watermarks?|logos?|stamp\w*|text\s+overlay|restore|(?:image|picture|photo|it)\s+clean(?:er)?|jpe?g\s+artifacts?|compression\s+artifacts?)\b",
        )
        .expect("static regex")
    })
}

/// What was done to bring a result to the photo's resolution (saved in the PNG metadata and
/// the `--report`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Applied {
    /// The decoded answer drawn on the source.
    Redrawn,
    /// The model's change applied to the source.
    Change {
        /// Share of the photo that changed (before feathering).
        share: f64,
        /// A change over most of the photo: its low frequencies transferred, the source's
        /// detail kept.
        global: bool,
    },
    /// The photo run at its own size in overlapping tiles.
    Tiled {
        tiles: usize,
        tile: u32,
        overlap: u32,
    },
    /// The model's picture resized to the photo's size.
    Resized,
    /// The model's own pixels, at its size.
    ModelSize,
}

impl Applied {
    /// One line for people (the PNG `parameters`, the editor's history).
    pub fn describe(&self) -> String {
        match self {
            Self::Redrawn => "answer redrawn on the source".into(),
            Self::Change { share, global } => format!(
                "{} change applied ({:.1}% of the photo changed)",
                if *global { "global" } else { "local" },
                share * 100.0
            ),
            Self::Tiled {
                tiles,
                tile,
                overlap,
            } => format!("{tiles} tiles of {tile} px, {overlap} px overlap"),
            Self::Resized => "model's picture resized".into(),
            Self::ModelSize => "model's picture at model size".into(),
        }
    }
}

/// Where the model's picture sits in the photo: the model sees the centred crop `crop`
/// (x, y, width, height) of a `source`-sized photo resized to `model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub source: (u32, u32),
    pub crop: (u32, u32, u32, u32),
    pub model: (u32, u32),
}

impl Placement {
    pub fn new(source: (u32, u32), model: (u32, u32)) -> Self {
        Self {
            source,
            crop: crate::imageio::fit_crop(source.0, source.1, model.0, model.1),
            model,
        }
    }

    /// Source pixels per model pixel, (x, y).
    pub fn scale(&self) -> (f64, f64) {
        (
            self.crop.2 as f64 / self.model.0 as f64,
            self.crop.3 as f64 / self.model.1 as f64,
        )
    }

    /// A point in the model's picture (continuous: pixel `i` spans `[i, i + 1)`) in the
    /// source's coordinates.
    pub fn to_source(&self, x: f64, y: f64) -> (f64, f64) {
        let (sx, sy) = self.scale();
        (self.crop.0 as f64 + x * sx, self.crop.1 as f64 + y * sy)
    }

    /// The model's picture at source pixel `(x, y)` (inside the crop), interpolated with
    /// Catmull-Rom cubics, unclamped.
    pub fn sample_rgb(&self, img: &RgbImage, x: u32, y: u32) -> [f32; 3] {
        let (mw, mh) = (self.model.0 as i64, self.model.1 as i64);
        let (sx, sy) = self.scale();
        let u = (x - self.crop.0) as f64 + 0.5;
        let v = (y - self.crop.1) as f64 + 0.5;
        let (u, v) = (u / sx - 0.5, v / sy - 0.5);
        let (u0, v0) = (u.floor() as i64, v.floor() as i64);
        let (wu, wv) = (catmull_rom(u - u0 as f64), catmull_rom(v - v0 as f64));
        let raw = img.as_raw();
        let mut acc = [0f32; 3];
        for (j, wy) in wv.iter().enumerate() {
            let row = (v0 + j as i64 - 1).clamp(0, mh - 1) * mw;
            for (i, wx) in wu.iter().enumerate() {
                let col = (u0 + i as i64 - 1).clamp(0, mw - 1);
                let at = ((row + col) * 3) as usize;
                let wgt = wx * wy;
                (0..3).for_each(|c| acc[c] += wgt * raw[at + c] as f32);
            }
        }
        acc
    }

    /// A soft map `(model.0 * model.1` values) sampled bilinearly at every source pixel,
    /// calling `f(x, y, value)` for the source pixels whose value is above zero (within the
    /// crop and the box of the map's non-zero values, plus a pixel).
    pub fn upsample_soft(&self, map: &[f32], mut f: impl FnMut(u32, u32, f32)) {
        let (mw, mh) = (self.model.0 as usize, self.model.1 as usize);
        let Some((bx0, by0, bx1, by1)) = nonzero_box(map, mw, mh) else {
            return;
        };
        let (cx, cy, cw, ch) = self.crop;
        let (sx, sy) = self.scale();
        // Source pixels whose model coordinate lies within one model pixel of the box.
        let range = |lo: usize, hi: usize, scale: f64, len: u32| {
            let a = ((lo as f64 - 1.0) * scale).floor().max(0.0) as u32;
            let b = (((hi + 2) as f64) * scale).ceil().min(len as f64) as u32;
            a..b
        };
        let at = |v: usize, lim: usize| v.min(lim - 1);
        for y in range(by0, by1, sy, ch) {
            let v = ((y as f64 + 0.5) / sy - 0.5).max(0.0);
            let (v0, fv) = (v.floor() as usize, (v - v.floor()) as f32);
            let (r0, r1) = (at(v0, mh) * mw, at(v0 + 1, mh) * mw);
            for x in range(bx0, bx1, sx, cw) {
                let u = ((x as f64 + 0.5) / sx - 0.5).max(0.0);
                let (u0, fu) = (u.floor() as usize, (u - u.floor()) as f32);
                let (c0, c1) = (at(u0, mw), at(u0 + 1, mw));
                let top = map[r0 + c0] * (1.0 - fu) + map[r0 + c1] * fu;
                let bottom = map[r1 + c0] * (1.0 - fu) + map[r1 + c1] * fu;
                let value = top * (1.0 - fv) + bottom * fv;
                if value > 0.0 {
                    f(cx + x, cy + y, value);
                }
            }
        }
    }
}

/// The four Catmull-Rom weights for taps at -1, 0, 1, 2 at fraction `t`.
fn catmull_rom(t: f64) -> [f32; 4] {
    let (t2, t3) = (t * t, t * t * t);
    [
        (-0.5 * t3 + t2 - 0.5 * t) as f32,
        (1.5 * t3 - 2.5 * t2 + 1.0) as f32,
        (-1.5 * t3 + 2.0 * t2 + 0.5 * t) as f32,
        (0.5 * t3 - 0.5 * t2) as f32,
    ]
}

/// A level rounded to 8 bits.
pub(crate) fn to_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// The box `(x0, y0, x1, y1)`, inclusive, of the non-zero values of a `w x h` map.
fn nonzero_box(map: &[f32], w: usize, h: usize) -> Option<(usize, usize, usize, usize)> {
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for y in 0..h {
        for x in 0..w {
            if map[y * w + x] > 0.0 {
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
        }
    }
    (x0 <= x1).then_some((x0, y0, x1, y1))
}

/// A `[1 2 1] / 4` blur in both directions (edges repeated).
pub(crate) fn smooth121(map: &[f32], w: usize, h: usize) -> Vec<f32> {
    let pass = |src: &[f32], step: usize, len: usize, pos: &dyn Fn(usize) -> usize| {
        let mut out = vec![0f32; src.len()];
        for (i, o) in out.iter_mut().enumerate() {
            let p = pos(i);
            let a = if p > 0 { src[i - step] } else { src[i] };
            let b = if p + 1 < len { src[i + step] } else { src[i] };
            *o = 0.25 * a + 0.5 * src[i] + 0.25 * b;
        }
        out
    };
    let across = pass(map, 1, w, &|i| i % w);
    pass(&across, w, h, &|i| i / w)
}

/// The source's pixels wherever `region` is unset (the brush's painted region; row-major,
/// the source's size). Sizes that do not match leave the result as it is.
pub fn keep_outside(result: &mut RgbImage, source: &RgbImage, region: &[bool]) {
    if result.dimensions() != source.dimensions()
        || region.len() != (source.width() * source.height()) as usize
    {
        return;
    }
    for ((r, s), inside) in result.pixels_mut().zip(source.pixels()).zip(region) {
        if !inside {
            *r = *s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_by_the_words() {
        for (text, family) in [
            (
                "Apply a blue semi-transparent mask to the man.",
                Family::Annotation,
            ),
            (
                "Put a red circle on the left wrist of the woman.",
                Family::Annotation,
            ),
            ("Segment the dog.", Family::Annotation),
            ("Make the image sharper.", Family::Enhancement),
            ("Remove the noise.", Family::Enhancement),
            ("Remove the watermark.", Family::Enhancement),
            ("Get rid of the speckles.", Family::Enhancement),
            ("Remove the dog.", Family::Edit),
            ("Make it look like winter", Family::Edit),
            ("Add an apple in the woman's hand.", Family::Edit),
            ("Haz que sea de noche", Family::Unknown),
            ("Get rid of the text overlay", Family::Enhancement),
            (
                "Apply a blue semi-transparent mask to the logo.",
                Family::Annotation,
            ),
        ] {
            assert_eq!(Family::of(text), family, "{text}");
        }
        assert_eq!(FullRes::Auto.resolve(Family::Edit), Method::Change);
        assert_eq!(FullRes::Auto.resolve(Family::Enhancement), Method::Tiled);
        assert_eq!(FullRes::Off.resolve(Family::Annotation), Method::Resize);
    }

    /// Every template and held-out phrasing of each training task, filled in, falls in its
    /// task's family (an edit's may be unknown words).
    #[test]
    fn every_task_phrasing_has_its_family() {
        use crate::tasks::{fill, Task};
        let values = [
            ("target", "the dog"),
            ("Target", "The dog"),
            ("color", "blue"),
            ("kind", "dog"),
            ("object", "a hat"),
            ("new", "a cat"),
            ("old", "the dog"),
            ("place", "the top left corner"),
            ("joints", "a red circle on the nose"),
            ("person", "the woman"),
        ];
        let mut wrong = vec![];
        for task in Task::ALL {
            let family = match task {
                Task::ReferringSegmentation | Task::SemanticSegmentation | Task::Keypoints => {
                    Family::Annotation
                }
                Task::Denoise | Task::Deblur | Task::Watermark => Family::Enhancement,
                _ => Family::Edit,
            };
            for t in task.templates().iter().chain(task.paraphrases()) {
                let text = fill(t, &values);
                let got = Family::of(&text);
                // An edit may be worded in words the reader does not know ("Clear away the
                // dog."): it is read (no overlay decodes from an edit) and then applied as a
                // change, as an edit is.
                let fine = got == family || (family == Family::Edit && got == Family::Unknown);
                if !fine {
                    wrong.push(format!("{task:?}: {text} -> {:?}", Family::of(&text)));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn placement_maps_the_centred_crop() {
        // 1600x1000 at 512x320: the aspect is the same, the whole photo is seen.
        let p = Placement::new((1600, 1000), (512, 320));
        assert_eq!(p.crop, (0, 0, 1600, 1000));
        assert_eq!(p.to_source(256.0, 160.0), (800.0, 500.0));
        // 1000x1000 at 512x448: a centred crop of 1000x875.
        let p = Placement::new((1000, 1000), (512, 448));
        assert_eq!(p.crop, (0, 62, 1000, 875));
        let (x, y) = p.to_source(0.0, 0.0);
        assert_eq!((x, y), (0.0, 62.0));
    }

    #[test]
    fn soft_maps_upsample_smoothly_and_stay_zero_outside() {
        let p = Placement::new((400, 400), (4, 4));
        let mut map = vec![0f32; 16];
        map[5] = 1.0; // model pixel (1, 1): source pixels 100..200
        let mut got = vec![0f32; 400 * 400];
        p.upsample_soft(&map, |x, y, v| got[(y * 400 + x) as usize] = v);
        assert!(got[150 * 400 + 150] > 0.98);
        assert_eq!(got[10 * 400 + 10], 0.0);
        assert_eq!(got[150 * 400 + 260], 0.0);
        // The value falls off linearly, not in one step.
        let ramp: Vec<f32> = (150..260).map(|x| got[150 * 400 + x]).collect();
        assert!(ramp.windows(2).all(|w| w[1] <= w[0]));
        assert!(ramp.iter().filter(|v| **v > 0.0 && **v < 1.0).count() > 50);
    }
}
