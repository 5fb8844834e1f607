//! Annotation answers at the photo's resolution: the answer decoded at the model's size is
//! brought to the source's ([`to_source`]: masks upsampled as soft maps, so their edges are
//! smooth at full size, not blocks of model pixels; keypoints and boxes scaled) and drawn on
//! the full-resolution source the way the model draws it ([`draw`]: a 0.5 blend of the mask's
//! colour, opaque discs). Outside the answer the pixels are the source's.

use image::RgbImage;

use super::{smooth121, Placement};
use crate::decode::{Decoded, Instance, Point};

/// `d` (decoded at the model's size) at the source's size.
pub fn to_source(d: &Decoded, place: &Placement) -> Decoded {
    let (w, h) = (place.source.0 as usize, place.source.1 as usize);
    let (sx, sy) = place.scale();
    let instances = d
        .instances
        .iter()
        .filter_map(|inst| {
            let mask = upsample_mask(&inst.mask, d.width, d.height, place);
            let area = mask.iter().filter(|&&m| m).count() as u64;
            (area > 0).then(|| Instance {
                bbox: crate::export::rle::Rle::encode(&mask, w, h).bbox(),
                mask,
                area,
                ..inst.clone()
            })
        })
        .collect();
    let keypoints = d
        .keypoints
        .iter()
        .map(|p| {
            let (x, y) = place.to_source(p.x, p.y);
            Point {
                x,
                y,
                radius: p.radius * (sx * sy).sqrt(),
                ..p.clone()
            }
        })
        .collect();
    Decoded {
        kind: d.kind,
        width: w,
        height: h,
        instances,
        keypoints,
        label: d.label.clone(),
    }
}

/// A model-size mask at the source's size: smoothed (`[1 2 1]`), sampled bilinearly at every
/// source pixel, kept where the value reaches one half. A mask too thin to survive is taken
/// at its nearest model pixel instead, so no decoded instance is lost.
pub fn upsample_mask(mask: &[bool], mw: usize, mh: usize, place: &Placement) -> Vec<bool> {
    let (w, h) = (place.source.0 as usize, place.source.1 as usize);
    let soft: Vec<f32> = mask.iter().map(|&m| m as u8 as f32).collect();
    let soft = smooth121(&soft, mw, mh);
    let mut out = vec![false; w * h];
    place.upsample_soft(&soft, |x, y, v| {
        if v >= 0.5 {
            out[y as usize * w + x as usize] = true;
        }
    });
    if !out.iter().any(|&m| m) && mask.iter().any(|&m| m) {
        let nearest: Vec<f32> = mask.iter().map(|&m| m as u8 as f32).collect();
        let (sx, sy) = place.scale();
        place.upsample_soft(&nearest, |x, y, _| {
            let u = ((x - place.crop.0) as f64 / sx) as usize;
            let v = ((y - place.crop.1) as f64 / sy) as usize;
            if mask[v.min(mh - 1) * mw + u.min(mw - 1)] {
                out[y as usize * w + x as usize] = true;
            }
        });
    }
    out
}

/// The source with `d` drawn on it as the model draws answers: every mask a 0.5 blend of its
/// colour (cast down to 8 bits), every keypoint an opaque disc of its colour and radius.
pub fn draw(source: &RgbImage, d: &Decoded) -> RgbImage {
    let mut out = source.clone();
    let w = source.width() as usize;
    for inst in &d.instances {
        for (i, _) in inst.mask.iter().enumerate().filter(|(_, &m)| m) {
            let px = out.get_pixel_mut((i % w) as u32, (i / w) as u32);
            for c in 0..3 {
                px[c] = (0.5 * px[c] as f32 + 0.5 * inst.color[c] as f32) as u8;
            }
        }
    }
    for p in &d.keypoints {
        let r = p.radius.max(1.0);
        let (x0, x1) = ((p.x - r).floor().max(0.0), (p.x + r).ceil());
        let (y0, y1) = ((p.y - r).floor().max(0.0), (p.y + r).ceil());
        for y in y0 as u32..(y1 as u32).min(source.height()) {
            for x in x0 as u32..(x1 as u32).min(source.width()) {
                let (dx, dy) = (x as f64 + 0.5 - p.x, y as f64 + 0.5 - p.y);
                if dx * dx + dy * dy <= r * r {
                    out.put_pixel(x, y, image::Rgb(p.color));
                }
            }
        }
    }
    out
}

/// Whether `d` holds anything [`draw`] can draw (a label alone cannot be).
pub fn drawable(d: &Decoded) -> bool {
    !d.instances.is_empty() || !d.keypoints.is_empty()
}
