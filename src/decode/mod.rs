//! Decoding: from a coloured-overlay answer back to what an annotator exports.
//!
//! - [`parse`]: what an instruction asked for (family, targets, colours, keypoint names).
//! - [`color`]: colour names and hex codes.
//! - [`mask`]: segmentation masks from 50% blends, split into instances.
//! - [`keypoint`]: keypoints from opaque discs, with sub-pixel centres.
//! - [`decode`] ties them together: boxes come from masks (detection, as in the paper) and
//!   classification rules decode to the label whose colour covers the most.

pub mod color;
pub mod keypoint;
pub mod mask;
pub mod parse;
pub mod quality;
pub mod raster;

use image::RgbImage;

use self::mask::MaskParams;
use self::parse::{Kind, Parsed};
use self::raster::Planes;

/// A decoded mask instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub category: String,
    pub phrase: String,
    pub color: [u8; 3],
    /// Row-major, `width x height` of the source.
    pub mask: Vec<bool>,
    pub area: u64,
    /// `[x, y, w, h]` in pixels, COCO's convention.
    pub bbox: [f64; 4],
    pub score: f32,
}

/// A decoded keypoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Point {
    /// Whose keypoint it is ("person", "man", ...).
    pub category: String,
    /// The COCO name (`left_shoulder`) or the phrase used.
    pub name: String,
    pub color: [u8; 3],
    pub x: f64,
    pub y: f64,
    pub radius: f64,
    pub score: f32,
}

/// Everything decoded from one answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub kind: Kind,
    pub width: usize,
    pub height: usize,
    pub instances: Vec<Instance>,
    pub keypoints: Vec<Point>,
    /// Classification: the label and the share of the image drawn in its colour.
    pub label: Option<(String, f32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the edited image is {ew}x{eh} but the source is {sw}x{sh}: their shapes differ, so the edited one is not an answer for this source (expected the same aspect ratio)")]
    Mismatched { sw: u32, sh: u32, ew: u32, eh: u32 },
    #[error("nothing to decode: the instruction asks for an edit or an enhancement, not for masks, keypoints or labels (e.g. \"apply a blue semi-transparent mask to the dog\")")]
    NothingToDecode,
}

/// Brings `edited` to the source's size. The model works at a resized resolution (multiples
/// of 64), so a small aspect difference is expected; a larger one means the wrong pair.
pub fn align<'a>(
    source: &RgbImage,
    edited: &'a RgbImage,
) -> Result<std::borrow::Cow<'a, RgbImage>, DecodeError> {
    use std::borrow::Cow;
    let (sw, sh) = source.dimensions();
    let (ew, eh) = edited.dimensions();
    if (sw, sh) == (ew, eh) {
        return Ok(Cow::Borrowed(edited));
    }
    let ra = sw as f64 / sh as f64;
    let rb = ew as f64 / eh as f64;
    if (ra / rb - 1.0).abs() > 0.08 {
        return Err(DecodeError::Mismatched { sw, sh, ew, eh });
    }
    Ok(Cow::Owned(crate::imageio::resize_exact(edited, sw, sh)))
}

/// Decodes what `parsed` asked for from the pair.
pub fn decode(
    source: &RgbImage,
    edited: &RgbImage,
    parsed: &Parsed,
) -> Result<Decoded, DecodeError> {
    let edited = align(source, edited)?;
    let (src, out) = (Planes::from_image(source), Planes::from_image(&edited));
    let (w, h) = (src.width, src.height);
    let mut d = Decoded {
        kind: parsed.kind,
        width: w,
        height: h,
        instances: vec![],
        keypoints: vec![],
        label: None,
    };
    let params = MaskParams::default();
    match parsed.kind {
        Kind::Segmentation | Kind::Detection => {
            let colors: Vec<_> = parsed.targets.iter().map(|t| t.color).collect();
            let found = mask::blend_regions(&src, &out, &colors, &params);
            for (t, regions) in parsed.targets.iter().zip(found) {
                for r in regions {
                    let bbox = crate::export::rle::Rle::encode(&r.mask, w, h).bbox();
                    d.instances.push(Instance {
                        category: t.category.clone(),
                        phrase: t.phrase.clone(),
                        color: t.color,
                        mask: r.mask,
                        area: r.area,
                        bbox,
                        score: r.score,
                    });
                }
            }
        }
        Kind::Keypoints => {
            for t in &parsed.targets {
                if let Some(best) = keypoint::discs(&src, &out, t.color).first() {
                    d.keypoints.push(Point {
                        category: t.category.clone(),
                        name: t.keypoint.clone().unwrap_or_else(|| t.phrase.clone()),
                        color: t.color,
                        x: best.x,
                        y: best.y,
                        radius: best.radius,
                        score: best.score,
                    });
                }
            }
        }
        Kind::Classification => {
            let colors: Vec<_> = parsed.targets.iter().map(|t| t.color).collect();
            let found = mask::blend_regions(&src, &out, &colors, &params);
            let best = parsed
                .targets
                .iter()
                .zip(found)
                .map(|(t, regions)| {
                    let area: u64 = regions.iter().map(|r| r.area).sum();
                    (t.category.clone(), area as f32 / (w * h) as f32)
                })
                .max_by(|a, b| a.1.total_cmp(&b.1));
            d.label = best.filter(|(_, share)| *share >= 0.01);
        }
        Kind::Edit => return Err(DecodeError::NothingToDecode),
    }
    Ok(d)
}
