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
            supercategory: if person || name == "person_extra" {
                "person"
            } else {
                "object"
            }
            .to_string(),
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
        // One annotation per owner instance. A person's COCO joints go to COCO's `person`
        // category (17 points, whatever the owner is called: "man", "player"); a person's other
        // joints (neck, head top) to `person_extra`; any other owner (a tiger, a car) becomes a
        // category of its own with the names of the points asked for on it.
        let mut instances: Vec<usize> = d.keypoints.iter().map(|p| p.instance).collect();
        instances.sort();
        instances.dedup();
        for inst in instances {
            let points: Vec<_> = d.keypoints.iter().filter(|p| p.instance == inst).collect();
            let owner = points[0].category.as_str();
            let person = crate::decode::parse::is_person(owner);
            let (coco, other): (Vec<&crate::decode::Point>, Vec<_>) = points
                .into_iter()
                .partition(|p| person && KEYPOINT_NAMES.contains(&p.name.as_str()));
            for (category, group) in [
                ("person", coco),
                (if person { "person_extra" } else { owner }, other),
            ] {
                if group.is_empty() {
                    continue;
                }
                let named: Vec<_> = group.iter().map(|p| (p.name.clone(), p.x, p.y)).collect();
                let score = group.iter().map(|p| p.score as f64).sum::<f64>() / group.len() as f64;
                self.add_keypoints_to(image_id, category, &named, Some(score));
            }
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

    /// Adds one owner's keypoints to the category `owner`. `person` carries COCO's 17 names;
    /// any other category's keypoint list grows with each new name (earlier annotations of it
    /// are padded).
    pub fn add_keypoints_to(
        &mut self,
        image_id: u64,
        owner: &str,
        points: &[(String, f64, f64)],
        score: Option<f64>,
    ) {
        let category_id = self.category(owner);
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

#[cfg(test)]
mod decoded_tests {
    use super::*;
    use crate::decode::{parse::Kind, Decoded, Point};

    fn point(category: &str, name: &str, x: f64, instance: usize) -> Point {
        Point {
            category: category.into(),
            name: name.into(),
            color: [255, 0, 0],
            x,
            y: 5.0,
            radius: 10.0,
            score: 0.9,
            instance,
        }
    }

    /// Two people (COCO joints plus a neck each) and a tiger: one person annotation per
    /// instance with the 17-point layout, the necks apart, the tiger under its own category
    /// with only the names asked for on it.
    #[test]
    fn owners_instances_and_layouts() {
        let d = Decoded {
            kind: Kind::Keypoints,
            width: 100,
            height: 50,
            instances: vec![],
            keypoints: vec![
                point("people", "nose", 10.0, 0),
                point("people", "neck", 12.0, 0),
                point("people", "nose", 60.0, 1),
                point("people", "neck", 62.0, 1),
                point("tiger", "nose", 80.0, 2),
                point("tiger", "left_shoulder", 90.0, 2),
            ],
            label: None,
        };
        let mut c = Coco::default();
        let img = c.add_image("a.png", 100, 50);
        c.add_decoded(img, &d);
        let names = |cat: &str| -> Vec<String> {
            c.categories
                .iter()
                .find(|c| c.name == cat)
                .unwrap_or_else(|| panic!("no category {cat}"))
                .keypoints
                .clone()
        };
        assert_eq!(names("person").len(), 17);
        assert_eq!(names("person_extra"), ["neck"]);
        assert_eq!(names("tiger"), ["nose", "left_shoulder"]);
        let per = |cat: &str| {
            let id = c.categories.iter().find(|c| c.name == cat).unwrap().id;
            c.annotations.iter().filter(|a| a.category_id == id).count()
        };
        assert_eq!(
            (per("person"), per("person_extra"), per("tiger")),
            (2, 2, 1)
        );
        let xs: Vec<f64> = c
            .annotations
            .iter()
            .filter(|a| a.category_id == 1)
            .map(|a| a.keypoints.as_ref().unwrap()[0])
            .collect();
        assert_eq!(xs, [10.0, 60.0]);
    }
}
