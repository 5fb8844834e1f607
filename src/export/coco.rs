//! COCO JSON (the object-detection format most annotation tools read): images, categories, and
//! annotations with RLE segmentation (pycocotools-identical), bbox, area, score and keypoints as
//! `[x, y, v]` triplets under the 17 COCO names.

use serde::{Deserialize, Serialize};

use super::rle::Rle;
use crate::data::person::KEYPOINT_NAMES;

/// A whole COCO file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Coco {
    pub images: Vec<Image>,
    pub annotations: Vec<Annotation>,
    pub categories: Vec<Category>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub id: u64,
    pub file_name: String,
    pub width: usize,
    pub height: usize,
}

/// An RLE in COCO's compressed form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segmentation {
    /// `[height, width]`.
    pub size: [usize; 2],
    pub counts: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    pub id: u64,
    pub image_id: u64,
    pub category_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmentation: Option<Segmentation>,
    pub area: f64,
    pub bbox: [f64; 4],
    pub iscrowd: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keypoints: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_keypoints: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Category {
    pub id: u64,
    pub name: String,
    pub supercategory: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keypoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skeleton: Vec<[u32; 2]>,
}

/// COCO's person skeleton (1-based keypoint indices).
const SKELETON: [[u32; 2]; 19] = [
    [16, 14],
    [14, 12],
    [17, 15],
    [15, 13],
    [12, 13],
    [6, 12],
    [7, 13],
    [6, 7],
    [6, 8],
    [7, 9],
    [8, 10],
    [9, 11],
    [2, 3],
    [1, 2],
    [1, 3],
    [2, 4],
    [3, 5],
    [4, 6],
    [5, 7],
];

impl Coco {
    /// Adds an image; returns its id.
    pub fn add_image(&mut self, file_name: &str, width: usize, height: usize) -> u64 {
        let id = self.images.len() as u64 + 1;
        self.images.push(Image {
            id,
            file_name: file_name.to_string(),
            width,
            height,
        });
        id
    }

    /// The id of category `name`, created on first use (`person` carries the keypoint names).
    pub fn category(&mut self, name: &str) -> u64 {
        if let Some(c) = self.categories.iter().find(|c| c.name == name) {
            return c.id;
        }
        let id = self.categories.len() as u64 + 1;
        let person = name == "person";
        self.categories.push(Category {
            id,
            name: name.to_string(),
            supercategory: if person { "person" } else { "shape" }.to_string(),
            keypoints: if person {
                KEYPOINT_NAMES.iter().map(|s| s.to_string()).collect()
            } else {
                vec![]
            },
            skeleton: if person { SKELETON.to_vec() } else { vec![] },
        });
        id
    }

    fn next_id(&self) -> u64 {
        self.annotations.len() as u64 + 1
    }

    /// Adds a mask annotation (row-major `width x height`); empty masks are skipped.
    pub fn add_mask(
        &mut self,
        image_id: u64,
        category: &str,
        mask: &[bool],
        width: usize,
        height: usize,
        score: Option<f64>,
    ) {
        let rle = Rle::encode(mask, width, height);
        if rle.area() == 0 {
            return;
        }
        let category_id = self.category(category);
        self.annotations.push(Annotation {
            id: self.next_id(),
            image_id,
            category_id,
            segmentation: Some(Segmentation {
                size: [height, width],
                counts: rle.to_coco_string(),
            }),
            area: rle.area() as f64,
            bbox: rle.bbox(),
            iscrowd: 0,
            keypoints: None,
            num_keypoints: None,
            score,
        });
    }

    /// Adds everything decoded from one image: each mask instance (with its score), and per
    /// owner one keypoint annotation.
    pub fn add_decoded(&mut self, image_id: u64, d: &crate::decode::Decoded) {
        for inst in &d.instances {
            self.add_mask(
                image_id,
                &inst.category,
                &inst.mask,
                d.width,
                d.height,
                Some(inst.score as f64),
            );
        }
        let mut owners: Vec<&str> = d.keypoints.iter().map(|p| p.category.as_str()).collect();
        owners.dedup();
        for owner in owners {
            let points: Vec<_> = d
                .keypoints
                .iter()
                .filter(|p| p.category == owner)
                .map(|p| (p.name.clone(), p.x, p.y))
                .collect();
            let score = d
                .keypoints
                .iter()
                .filter(|p| p.category == owner)
                .map(|p| p.score as f64)
                .sum::<f64>()
                / points.len() as f64;
            self.add_keypoints_to(image_id, owner, &points, Some(score));
        }
    }

    /// Adds a person's keypoints, `(COCO name, x, y)`; unnamed ones are `(0, 0, 0)`. The box is
    /// the keypoints' extent.
    pub fn add_keypoints(
        &mut self,
        image_id: u64,
        points: &[(String, f64, f64)],
        score: Option<f64>,
    ) {
        self.add_keypoints_to(image_id, "person", points, score);
    }

    /// Adds one owner's keypoints. When every name is a COCO keypoint name they go to the
    /// `person` category (COCO's convention, whatever the owner is called); otherwise the owner
    /// becomes a category whose keypoint list grows with each new name (earlier annotations of
    /// it are padded).
    pub fn add_keypoints_to(
        &mut self,
        image_id: u64,
        owner: &str,
        points: &[(String, f64, f64)],
        score: Option<f64>,
    ) {
        let coco = points
            .iter()
            .all(|(n, ..)| KEYPOINT_NAMES.contains(&n.as_str()));
        let category_id = self.category(if coco { "person" } else { owner });
        let cat = self
            .categories
            .iter_mut()
            .find(|c| c.id == category_id)
            .expect("just made");
        for (name, ..) in points {
            if !cat.keypoints.contains(name) {
                cat.keypoints.push(name.clone());
            }
        }
        let names = cat.keypoints.clone();
        for a in self
            .annotations
            .iter_mut()
            .filter(|a| a.category_id == category_id)
        {
            if let Some(k) = &mut a.keypoints {
                k.resize(names.len() * 3, 0.0);
            }
        }
        let mut flat = vec![0.0; names.len() * 3];
        let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
        let mut n = 0;
        for (name, x, y) in points {
            if let Some(i) = names.iter().position(|k| k == name) {
                flat[i * 3] = *x;
                flat[i * 3 + 1] = *y;
                flat[i * 3 + 2] = 2.0;
                n += 1;
                (x0, y0, x1, y1) = (x0.min(*x), y0.min(*y), x1.max(*x), y1.max(*y));
            }
        }
        let bbox = if n > 0 {
            [x0, y0, x1 - x0, y1 - y0]
        } else {
            [0.0; 4]
        };
        self.annotations.push(Annotation {
            id: self.next_id(),
            image_id,
            category_id,
            segmentation: None,
            area: bbox[2] * bbox[3],
            bbox,
            iscrowd: 0,
            keypoints: Some(flat),
            num_keypoints: Some(n),
            score,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_keypoints_serialise_as_coco() {
        let mut c = Coco::default();
        let img = c.add_image("a.png", 4, 3);
        let mask: Vec<bool> = "001101100000".bytes().map(|b| b == b'1').collect();
        c.add_mask(img, "circle", &mask, 4, 3, Some(0.9));
        c.add_mask(img, "circle", &[false; 12], 4, 3, None);
        c.add_keypoints(
            img,
            &[("nose".into(), 1.5, 2.0), ("left_wrist".into(), 3.0, 1.0)],
            None,
        );
        let j: serde_json::Value = serde_json::to_value(&c).unwrap();
        let a = &j["annotations"][0];
        assert_eq!(a["segmentation"]["counts"], "41110O1");
        assert_eq!(a["segmentation"]["size"], serde_json::json!([3, 4]));
        assert_eq!(a["bbox"], serde_json::json!([1.0, 0.0, 3.0, 2.0]));
        assert_eq!(a["area"], 4.0);
        assert_eq!(
            j["annotations"].as_array().unwrap().len(),
            2,
            "empty masks are skipped"
        );
        let k = &j["annotations"][1];
        assert_eq!(k["num_keypoints"], 2);
        let kp = k["keypoints"].as_array().unwrap();
        assert_eq!(
            kp[0..3],
            [
                serde_json::json!(1.5),
                serde_json::json!(2.0),
                serde_json::json!(2.0)
            ]
        );
        assert_eq!(
            kp[27..30],
            [
                serde_json::json!(3.0),
                serde_json::json!(1.0),
                serde_json::json!(2.0)
            ]
        );
        let person = j["categories"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "person")
            .unwrap();
        assert_eq!(person["keypoints"].as_array().unwrap().len(), 17);
        let back: Coco = serde_json::from_value(j).unwrap();
        assert_eq!(back, c);
    }
}
