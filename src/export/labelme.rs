//! Labelme JSON (format version 5): polygons for masks (outer outlines, simplified to 1 px),
//! rectangles for detection boxes, points for keypoints (label = keypoint name, `group_id`
//! ties one owner instance's points together).

use serde_json::{json, Value};

use crate::decode::parse::Kind;
use crate::decode::Decoded;

/// The Labelme document for `decoded`, referring to the image at `image_path`.
pub fn document(decoded: &Decoded, image_path: &str) -> Value {
    let mut shapes = vec![];
    for (i, inst) in decoded.instances.iter().enumerate() {
        let description = format!("{} (score {:.2})", inst.phrase, inst.score);
        if decoded.kind == Kind::Detection {
            let [x, y, w, h] = inst.bbox;
            shapes.push(shape(
                &inst.category,
                vec![[x, y], [x + w, y + h]],
                "rectangle",
                Some(i),
                &description,
            ));
            continue;
        }
        for poly in super::contour::polygons(&inst.mask, decoded.width, decoded.height, 1.0) {
            let points = poly.iter().map(|(x, y)| [*x, *y]).collect();
            shapes.push(shape(
                &inst.category,
                points,
                "polygon",
                Some(i),
                &description,
            ));
        }
    }
    // One group per owner instance (one person, one tiger), numbered after the masks.
    let mut owners: Vec<usize> = vec![];
    for p in &decoded.keypoints {
        let group = decoded.instances.len()
            + owners
                .iter()
                .position(|o| *o == p.instance)
                .unwrap_or_else(|| {
                    owners.push(p.instance);
                    owners.len() - 1
                });
        let description = format!("{} (score {:.2})", p.category, p.score);
        shapes.push(shape(
            &p.name,
            vec![[p.x, p.y]],
            "point",
            Some(group),
            &description,
        ));
    }
    json!({
        "version": "5.5.0",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": null,
        "imageHeight": decoded.height,
        "imageWidth": decoded.width,
    })
}

fn shape(
    label: &str,
    points: Vec<[f64; 2]>,
    kind: &str,
    group: Option<usize>,
    description: &str,
) -> Value {
    json!({
        "label": label,
        "points": points,
        "group_id": group,
        "description": description,
        "shape_type": kind,
        "flags": {},
        "mask": null,
    })
}
