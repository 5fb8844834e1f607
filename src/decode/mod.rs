//! Decoding: from a coloured-overlay answer back to what an annotator exports.
//!
//! - [`parse`]: what an instruction asked for (family, targets, colours, keypoint names).
//! - [`shown`]: what the pixels show without the words (blends or discs, and their colours).
//! - [`color`]: colour names and hex codes.
//! - [`mask`]: segmentation masks from 50% blends, split into instances.
//! - [`keypoint`]: keypoints from opaque discs, with sub-pixel centres.
//! - [`decode`] ties them together: boxes come from masks (detection, as in the paper) and
//!   classification rules decode to the label whose colour covers the most.
//! - [`read`] is the one entry point for an instruction as typed: the words where they say
//!   what to look for, the pixels where they do not (no colour, another language).

pub mod color;
pub mod keypoint;
pub mod mask;
pub mod parse;
pub mod phrasings;
pub mod quality;
pub mod raster;
pub mod shown;

use image::RgbImage;

use self::mask::MaskParams;
use self::parse::{Kind, Label, ParseError, Parsed};
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
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// Which owner it belongs to: points of one instance (one person, one tiger) share it.
    pub instance: usize,
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

#[derive(Debug, Clone, thiserror::Error)]
pub enum DecodeError {
    #[error("the edited image is {ew}x{eh} but the source is {sw}x{sh}: their shapes differ, so the edited one is not an answer for this source (expected the same aspect ratio)")]
    Mismatched { sw: u32, sh: u32, ew: u32, eh: u32 },
    #[error("nothing to decode: {words}, and the pixels show no overlay (no 50% colour blend, no opaque keypoint discs); ask e.g. \"apply a blue semi-transparent mask to the dog\"")]
    NothingToDecode { words: String },
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
                let found = keypoint::discs(&src, &out, t.color);
                let Some(best) = found.first().map(|b| b.score) else {
                    continue;
                };
                // "of the people", "each person's nose": every clear disc of the colour (the
                // best, and any other scoring at least 0.45 and half the best); else the best.
                let clear = |score: f32| score >= 0.45 && score >= 0.5 * best;
                let keep = if t.several { found.len() } else { 1 };
                for (i, disc) in found.iter().take(keep).enumerate() {
                    if i > 0 && !clear(disc.score) {
                        break;
                    }
                    d.keypoints.push(Point {
                        category: t.category.clone(),
                        name: t.keypoint.clone().unwrap_or_else(|| t.phrase.clone()),
                        color: t.color,
                        x: disc.x,
                        y: disc.y,
                        radius: disc.radius,
                        score: disc.score,
                        instance: 0,
                    });
                }
            }
            group_instances(&mut d.keypoints);
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
        Kind::Edit => {
            return Err(DecodeError::NothingToDecode {
                words: "the instruction asks for an edit or an enhancement".into(),
            })
        }
    }
    Ok(d)
}

/// Where a reading's targets came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The instruction named the family and the colours.
    Words,
    /// The pixels gave the family or the colours; the words, where they named targets, the
    /// labels.
    Pixels,
}

/// An instruction read against its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// What was looked for (the colours the pixels found, where the words named none).
    pub parsed: Parsed,
    pub decoded: Decoded,
    pub source: Source,
    /// Where the pixels decided: what the words lacked ("'blurple' is not a colour ...").
    pub note: Option<String>,
}

/// Reads `instruction` against the (source, edited) pair: the words say what to look for
/// where they can; where they name no overlay colour, are not words this reader knows, or ask
/// for an edit, the pixels decide whether an overlay is there and in which colours. Errors
/// when neither shows an answer, saying what each showed.
pub fn read(
    source: &RgbImage,
    edited: &RgbImage,
    instruction: &str,
) -> Result<Reading, DecodeError> {
    let words = parse::parse(instruction);
    if let Ok(parsed) = &words {
        if parsed.kind != Kind::Edit {
            let decoded = decode(source, edited, parsed)?;
            return Ok(Reading {
                parsed: parsed.clone(),
                decoded,
                source: Source::Words,
                note: None,
            });
        }
    }
    let aligned = align(source, edited)?;
    let shown = shown::shown(&Planes::from_image(source), &Planes::from_image(&aligned));
    let hints = parse::hints(instruction);
    let said = match &words {
        Ok(_) if hints.edit => "the instruction asks for an edit or an enhancement".to_string(),
        Ok(_) => "the instruction names no mask, mark or label this reader knows".to_string(),
        Err(ParseError::NoColor(_)) => "the instruction names no overlay colour".to_string(),
        Err(e @ ParseError::UnknownColor { .. }) => e.to_string(),
    };
    let Some(parsed) = from_pixels(&shown, &hints) else {
        return Err(DecodeError::NothingToDecode { words: said });
    };
    let decoded = decode(source, edited, &parsed)?;
    let found: Vec<String> = parsed
        .targets
        .iter()
        .map(|t| t.color_name.clone())
        .collect();
    let note = format!(
        "{said}; read the {} the pixels show in {}",
        match parsed.kind {
            Kind::Keypoints => "keypoint discs",
            _ => "50% blend",
        },
        found.join(", ")
    );
    Ok(Reading {
        parsed,
        decoded,
        source: Source::Pixels,
        note: Some(note),
    })
}

/// The request the pixels make: the kind the words hint at where the pixels show it, else the
/// kind the pixels show; each colour found labelled with the words' target where they name
/// exactly one, else "object".
fn from_pixels(shown: &shown::Shown, hints: &parse::Hints) -> Option<Parsed> {
    let blend_kind = match hints.kind {
        Some(k @ (Kind::Detection | Kind::Classification)) => k,
        _ => Kind::Segmentation,
    };
    // Both shown: the answer is what covers more (a disc's rim can read as a thin blend).
    let blend_area: usize = shown.blends.iter().map(|(_, a)| a).sum();
    let disc_area: usize = shown.discs.iter().map(|(_, n)| n * shown.disc_area).sum();
    let discs =
        !shown.discs.is_empty() && (hints.kind == Some(Kind::Keypoints) || disc_area >= blend_area);
    let (kind, colors) = if discs {
        (Kind::Keypoints, &shown.discs)
    } else if !shown.blends.is_empty() {
        (blend_kind, &shown.blends)
    } else {
        return None;
    };
    let fallback = Label {
        phrase: "object".into(),
        category: "object".into(),
        keypoint: (kind == Kind::Keypoints).then(|| "point".to_string()),
        several: true,
    };
    let label = match &hints.labels[..] {
        [one] if hints.kind == Some(kind) => Label {
            several: true,
            ..one.clone()
        },
        _ => fallback,
    };
    let targets = colors
        .iter()
        .map(|(rgb, _)| label.clone().with_color(*rgb, color::describe(*rgb)))
        .collect();
    Some(Parsed { kind, targets })
}

/// Ties keypoints into owners: each colour is one joint, so one owner has at most one point of
/// each colour. The colour with the most points seeds the owners; every other point joins the
/// nearest owner that lacks its colour (closest pairs first), or starts one.
fn group_instances(points: &mut [Point]) {
    let mut next = 0;
    let mut categories: Vec<String> = points.iter().map(|p| p.category.clone()).collect();
    categories.dedup();
    categories.sort();
    categories.dedup();
    for cat in categories {
        let idx: Vec<usize> = (0..points.len())
            .filter(|&i| points[i].category == cat)
            .collect();
        let mut colors: Vec<[u8; 3]> = idx.iter().map(|&i| points[i].color).collect();
        colors.sort();
        colors.dedup();
        let count = |c: [u8; 3]| idx.iter().filter(|&&i| points[i].color == c).count();
        colors.sort_by_key(|c| std::cmp::Reverse(count(*c)));
        // Owners: their points (indices into `points`).
        let mut owners: Vec<Vec<usize>> = vec![];
        for c in colors {
            let mine: Vec<usize> = idx
                .iter()
                .copied()
                .filter(|&i| points[i].color == c)
                .collect();
            let mut pairs: Vec<(f64, usize, usize)> = vec![];
            for &i in &mine {
                for (o, members) in owners.iter().enumerate() {
                    let (cx, cy) = centroid(points, members);
                    let d = (points[i].x - cx).powi(2) + (points[i].y - cy).powi(2);
                    pairs.push((d, i, o));
                }
            }
            pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut placed = vec![];
            let mut taken = vec![false; owners.len()];
            for (_, i, o) in pairs {
                if !placed.contains(&i) && !taken[o] {
                    placed.push(i);
                    taken[o] = true;
                    owners[o].push(i);
                }
            }
            for &i in &mine {
                if !placed.contains(&i) {
                    owners.push(vec![i]);
                }
            }
        }
        for members in owners {
            for i in members {
                points[i].instance = next;
            }
            next += 1;
        }
    }
}

fn centroid(points: &[Point], members: &[usize]) -> (f64, f64) {
    let n = members.len() as f64;
    (
        members.iter().map(|&i| points[i].x).sum::<f64>() / n,
        members.iter().map(|&i| points[i].y).sum::<f64>() / n,
    )
}
