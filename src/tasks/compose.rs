//! The editor's task picker: a well-formed instruction from a few fields (target, colour,
//! keypoints, shape, place), written with the first template of the family the model was
//! trained on, and the family whose guidance it should run with.
//!
//! Three recipes ask for tasks the model was never trained on, as the paper demonstrates them:
//! detection (a box drawn around the target), classification (a mask if the class is present,
//! the image unchanged otherwise) and face or object parts (a mask on a named part). Their
//! guidance is that of the trained family they resemble.

use serde::{Deserialize, Serialize};

use super::{fill, join_and, official, Phrasing, Task};

/// What the picker can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recipe {
    Segment,
    Keypoints,
    Remove,
    Recolor,
    Add,
    Replace,
    Denoise,
    Deblur,
    Watermark,
    Detect,
    Classify,
    Part,
}

/// One field a recipe asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Target,
    Color,
    Marks,
    Kind,
    Place,
    Part,
}

impl Recipe {
    pub const ALL: [Recipe; 12] = [
        Self::Segment,
        Self::Keypoints,
        Self::Remove,
        Self::Recolor,
        Self::Add,
        Self::Replace,
        Self::Denoise,
        Self::Deblur,
        Self::Watermark,
        Self::Detect,
        Self::Classify,
        Self::Part,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Segment => "Segment",
            Self::Keypoints => "Keypoints",
            Self::Remove => "Remove",
            Self::Recolor => "Recolour",
            Self::Add => "Add",
            Self::Replace => "Replace",
            Self::Denoise => "Denoise",
            Self::Deblur => "Deblur",
            Self::Watermark => "Remove watermark",
            Self::Detect => "Detect (unseen)",
            Self::Classify => "Classify (unseen)",
            Self::Part => "Part (unseen)",
        }
    }

    /// The trained family this recipe is, or resembles: its guidance applies.
    pub fn task(self) -> Task {
        match self {
            Self::Segment | Self::Detect | Self::Part => Task::ReferringSegmentation,
            Self::Classify => Task::SemanticSegmentation,
            Self::Keypoints => Task::Keypoints,
            Self::Remove => Task::Remove,
            Self::Recolor => Task::Recolor,
            Self::Add => Task::Add,
            Self::Replace => Task::Replace,
            Self::Denoise => Task::Denoise,
            Self::Deblur => Task::Deblur,
            Self::Watermark => Task::Watermark,
        }
    }

    /// The model was not trained on this task: a demonstration of generalisation.
    pub fn unseen(self) -> bool {
        matches!(self, Self::Detect | Self::Classify | Self::Part)
    }

    /// The fields this recipe's instruction is written from, in the order they are asked.
    pub fn fields(self) -> &'static [Field] {
        match self {
            Self::Segment | Self::Recolor | Self::Detect | Self::Classify => {
                &[Field::Target, Field::Color]
            }
            Self::Part => &[Field::Target, Field::Part, Field::Color],
            Self::Keypoints => &[Field::Target, Field::Marks],
            Self::Remove => &[Field::Target],
            Self::Add => &[Field::Color, Field::Kind, Field::Place],
            Self::Replace => &[Field::Target, Field::Kind],
            Self::Denoise | Self::Deblur | Self::Watermark => &[],
        }
    }

    /// The colours offered to a model asked in `phrasing`: InstructDiffusion's pose table for
    /// its keypoints, else [`Recipe::colors`].
    pub fn colors_for(self, phrasing: Phrasing) -> Vec<&'static str> {
        match (self, phrasing) {
            (Self::Keypoints, Phrasing::InstructDiffusion) => official::POSE_COLORS.to_vec(),
            _ => self.colors(),
        }
    }

    /// The colours offered: the paper's overlay lists for masks and keypoints (what the decoder
    /// reads back), any of the scene colours for edits.
    pub fn colors(self) -> Vec<&'static str> {
        let list: &[crate::data::scene::Color] = match self {
            Self::Keypoints => &super::KEYPOINT_COLORS,
            Self::Recolor | Self::Add => &crate::data::scene::OBJECT_COLORS,
            _ => &super::MASK_COLORS,
        };
        list.iter().map(|c| c.name).collect()
    }
}

/// What the user filled in. Every recipe reads only its own [`Recipe::fields`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Fields {
    /// What the instruction is about: "the cat", "the person on the right", "all triangles".
    pub target: String,
    pub color: String,
    /// Keypoints as (COCO name, colour), up to five.
    pub marks: Vec<(String, String)>,
    /// A shape kind or object to add or replace with: "star", "apple".
    pub kind: String,
    /// Where to add it: "in the top left corner", "next to the dog".
    pub place: String,
    /// A part of the target (unseen "part" recipe): "nose", "left wing".
    pub part: String,
}

impl Default for Fields {
    fn default() -> Self {
        Self {
            target: String::new(),
            color: "blue".into(),
            marks: vec![("nose".into(), "red".into())],
            kind: "star".into(),
            place: "in the top left corner".into(),
            part: "nose".into(),
        }
    }
}

/// The most keypoints one instruction names (the paper draws 1-5 per sample).
pub const MAX_MARKS: usize = 5;

/// The instruction for `recipe` from `fields` in this crate's templates, or what is missing.
pub fn compose(recipe: Recipe, f: &Fields) -> Result<String, String> {
    compose_as(recipe, f, Phrasing::Templates)
}

fn need(value: &str, what: &str) -> Result<String, String> {
    let v = value.trim();
    if v.is_empty() {
        Err(format!("{what} is empty"))
    } else {
        Ok(v.to_string())
    }
}

/// The instruction for `recipe` from `fields` as a model taught in `phrasing` is asked. For an
/// InstructDiffusion checkpoint, segmentation and keypoints take its structures (the object
/// lower-cased; one clause per joint, the owner "the people" unless one is given); the other
/// recipes, and the other phrasings, this crate's templates, which read as free text too.
pub fn compose_as(recipe: Recipe, f: &Fields, phrasing: Phrasing) -> Result<String, String> {
    if phrasing == Phrasing::InstructDiffusion {
        match recipe {
            Recipe::Segment => {
                let target = need(&f.target, "the target")?.to_lowercase();
                let color = need(&f.color, "the colour")?;
                return Ok(fill(
                    official::SEGMENT[0],
                    &[("target", &target), ("color", &color)],
                ));
            }
            Recipe::Keypoints => {
                let owner = match f.target.trim() {
                    "" => "the people".to_string(),
                    t => with_article(t, true),
                };
                let marks: Vec<(String, &str)> = f
                    .marks
                    .iter()
                    .filter(|(name, color)| !name.trim().is_empty() && !color.trim().is_empty())
                    .take(MAX_MARKS)
                    .map(|(name, color)| (name.trim().replace('_', " "), color.trim()))
                    .collect();
                if marks.is_empty() {
                    return Err("no keypoint is named".into());
                }
                let marks: Vec<(&str, &str)> =
                    marks.iter().map(|(n, c)| (n.as_str(), *c)).collect();
                return Ok(official::pose(&marks, &owner, |_| 0).trim_end().to_string());
            }
            _ => {}
        }
    }
    let mut values: Vec<(&str, String)> = vec![];
    for field in recipe.fields() {
        match field {
            Field::Target => {
                // A class asked about is indefinite ("if there is a cat"), a target definite.
                let definite = recipe != Recipe::Classify;
                let target = with_article(&need(&f.target, "the target")?, definite);
                values.push(("target", target))
            }
            Field::Color => values.push(("color", need(&f.color, "the colour")?)),
            Field::Kind => values.push(("kind", need(&f.kind, "the shape or object")?)),
            Field::Place => values.push(("place", need(&f.place, "the place")?)),
            Field::Part => values.push(("part", need(&f.part, "the part")?)),
            Field::Marks => {
                let marks: Vec<String> = f
                    .marks
                    .iter()
                    .filter(|(name, color)| !name.trim().is_empty() && !color.trim().is_empty())
                    .take(MAX_MARKS)
                    .map(|(name, color)| {
                        format!(
                            "a {} circle on the {}",
                            color.trim(),
                            name.trim().replace('_', " ")
                        )
                    })
                    .collect();
                if marks.is_empty() {
                    return Err("no keypoint is named".into());
                }
                values.push(("marks", join_and(&marks)));
            }
        }
    }
    if recipe == Recipe::Keypoints {
        // The keypoint templates call the target the owner.
        let target = values.remove(0).1;
        values.push(("owner", target));
    }
    let template = match recipe {
        Recipe::Detect => "Draw a {color} bounding box around {target}.",
        Recipe::Classify => {
            "If there is {target} in the image, apply a {color} semi-transparent mask to it; otherwise leave the image unchanged."
        }
        Recipe::Part => "Apply a {color} semi-transparent mask to the {part} of {target}.",
        r => r.task().templates()[0],
    };
    let pairs: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Ok(fill(template, &pairs))
}

/// "cat" -> "the cat" (or, not `definite`, "a cat"); a target that already starts with a
/// determiner keeps it.
fn with_article(target: &str, definite: bool) -> String {
    const DETERMINERS: [&str; 14] = [
        "the", "a", "an", "all", "every", "each", "this", "that", "these", "those", "his", "her",
        "its", "their",
    ];
    let first = target
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_lowercase();
    if DETERMINERS.contains(&first.as_str()) {
        target.to_string()
    } else if definite {
        format!("the {target}")
    } else if first.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {target}")
    } else {
        format!("a {target}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(target: &str) -> Fields {
        Fields {
            target: target.into(),
            ..Fields::default()
        }
    }

    #[test]
    fn each_recipe_writes_the_trained_phrasing_from_its_fields() {
        let f = fields("leftmost red circle");
        assert_eq!(
            compose(Recipe::Segment, &f).unwrap(),
            "Apply a blue semi-transparent mask to the leftmost red circle."
        );
        let f = Fields {
            target: "the person on the right".into(),
            marks: vec![
                ("right_knee".into(), "red".into()),
                ("nose".into(), "blue".into()),
                ("".into(), "green".into()),
            ],
            ..Fields::default()
        };
        assert_eq!(
            compose(Recipe::Keypoints, &f).unwrap(),
            "Put a red circle on the right knee and a blue circle on the nose of the person on the right."
        );
        assert_eq!(
            compose(Recipe::Remove, &fields("all triangles")).unwrap(),
            "Remove all triangles."
        );
        assert_eq!(
            compose(Recipe::Add, &Fields::default()).unwrap(),
            "Add a blue star in the top left corner."
        );
        assert_eq!(
            compose(Recipe::Deblur, &Fields::default()).unwrap(),
            "Make the image sharper."
        );
        assert!(compose(Recipe::Part, &fields("cat"))
            .unwrap()
            .contains("the nose of the cat"));
        assert!(compose(Recipe::Classify, &fields("owl"))
            .unwrap()
            .starts_with("If there is an owl in the image"));
    }

    /// Every trained recipe's instruction is one the generator could have written: the template
    /// is the family's own, with every placeholder filled.
    #[test]
    fn no_placeholder_survives_and_missing_fields_are_named() {
        let f = fields("square");
        for r in Recipe::ALL {
            let text = compose(r, &f).unwrap();
            assert!(!text.contains('{'), "{}: {text}", r.label());
            assert!(r.unseen() || r.task().templates().len() >= 10);
        }
        let empty = Fields {
            target: " ".into(),
            marks: vec![],
            ..Fields::default()
        };
        assert_eq!(
            compose(Recipe::Segment, &empty).unwrap_err(),
            "the target is empty"
        );
        assert!(compose(Recipe::Denoise, &empty).is_ok());
        let no_marks = Fields {
            marks: vec![],
            ..fields("man")
        };
        assert_eq!(
            compose(Recipe::Keypoints, &no_marks).unwrap_err(),
            "no keypoint is named"
        );
    }

    #[test]
    fn instructdiffusion_phrasing_writes_its_structures() {
        let f = Fields {
            target: "Dining Table".into(),
            color: "gray".into(),
            ..Fields::default()
        };
        let seg = compose_as(Recipe::Segment, &f, Phrasing::InstructDiffusion).unwrap();
        assert_eq!(
            seg,
            "Mark the pixels of dining table in gray and keep the rest unchanged."
        );
        let f = Fields {
            target: "".into(),
            marks: vec![
                ("left_wrist".into(), "cyan".into()),
                ("nose".into(), "red".into()),
            ],
            ..Fields::default()
        };
        let pose = compose_as(Recipe::Keypoints, &f, Phrasing::InstructDiffusion).unwrap();
        assert_eq!(
            pose,
            "Put cyan circles on the left wrist of the people, Put red circles on the nose of the people,"
        );
        // What it writes, the reader reads back.
        let p = crate::decode::parse::parse(&pose).unwrap();
        let names: Vec<_> = p
            .targets
            .iter()
            .map(|t| t.keypoint.clone().unwrap())
            .collect();
        assert_eq!(names, ["left_wrist", "nose"]);
        assert!(p
            .targets
            .iter()
            .all(|t| t.several && t.category == "person"));
        assert_eq!(
            compose_as(Recipe::Remove, &fields("cat"), Phrasing::InstructDiffusion).unwrap(),
            compose(Recipe::Remove, &fields("cat")).unwrap()
        );
        assert_eq!(
            Recipe::Keypoints
                .colors_for(Phrasing::InstructDiffusion)
                .len(),
            9
        );
    }

    /// Colours offered are those the decoder reads back for masks and keypoints.
    #[test]
    fn offered_colours_are_the_overlay_lists() {
        assert_eq!(
            Recipe::Segment.colors().len(),
            super::super::MASK_COLORS.len()
        );
        assert!(Recipe::Keypoints.colors().contains(&"cyan"));
        assert!(!Recipe::Segment.colors().contains(&"cyan"));
    }
}
