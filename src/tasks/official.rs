//! Instructions in the structures the released InstructDiffusion model was trained on, in this
//! crate's own words: a segmentation sentence per object ("Mark the pixels of {target} in
//! {color} and ..."), and pose clauses of one joint each, every clause ending in ", ", joined
//! without a conjunction. Its training code fills them with the object lower-cased and the
//! joint names as its datasets spell them ("left wrist", "left_wrist", "top_head", "neck").
//!
//! The task picker writes these for an InstructDiffusion checkpoint; `eval --paraphrased` asks
//! with them as well as the held-out phrasings; the reader ([`crate::decode::parse`]) is tested
//! on them.

use rand::Rng;

use super::fill;

/// How a model was taught to be asked: what the task picker writes for it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Phrasing {
    /// This crate's templates ([`super::Task::templates`]): the built-in model and every model
    /// its trainer makes.
    #[default]
    Templates,
    /// InstructDiffusion's structures and colour tables (this module).
    InstructDiffusion,
    /// Free text, as InstructPix2Pix-style editors are asked.
    Free,
}

impl Phrasing {
    pub const ALL: [Phrasing; 3] = [Self::Templates, Self::InstructDiffusion, Self::Free];

    pub fn label(self) -> &'static str {
        match self {
            Self::Templates => "this project's templates",
            Self::InstructDiffusion => "InstructDiffusion's structures",
            Self::Free => "free text (InstructPix2Pix)",
        }
    }
}

/// Segmentation sentences: `{target}` (lower-cased, as the training code writes the object)
/// and `{color}`, the overlay drawn as a 50% blend.
pub const SEGMENT: &[&str] = &[
    "Mark the pixels of {target} in {color} and keep the rest unchanged.",
    "Colour {target}'s pixels in {color}, keeping the remaining pixels as they were.",
    "Apply {color} to the pixels of {target} while keeping the other pixels as they are.",
    "Assign {color} to the pixels belonging to {target}, leaving the rest as it is.",
    "For {target}, set its pixels to {color} and let the other pixels stay the same.",
    "Modify the pixels of {target} to {color} without changing any other pixel.",
    "Set all pixels of {target} to {color} and keep the other pixels in their first state.",
    "Update the pixels of {target} to {color}, but leave the other pixels alone.",
    "Fill in the pixels of {target} with {color}, keeping the colours of the other pixels.",
    "Change {target}'s pixels to {color}, while the other pixels stay constant.",
    "Paint the pixels of {target} in {color} and keep the look of the other pixels.",
];

/// Pose clauses: `{joint}`, `{color}` (an opaque disc) and `{owner}` ("the people" in the
/// released model's data). Each ends in ", ": clauses are concatenated as they are.
pub const POSE_CLAUSES: &[&str] = &[
    "Put {color} circles on the {joint} of {owner}, ",
    "Circle the {joint} of {owner} with the color {color}, ",
    "Use the {color} color to draw circles around the {joint} of {owner}, ",
    "Make {color} circles around the {joint} of {owner}, ",
    "Draw {color} circles over the {joint} of {owner}, ",
    "Surround the {joint} of {owner} with {color} circles, ",
    "Use the color {color} to make circles on the {joint} of {owner}, ",
    "Mark the {joint} of {owner} with {color} circles, ",
    "Create {color} circles around the {joint} of {owner}, ",
    "Use the color {color} to encircle the {joint} of {owner}, ",
];

/// The segmentation colour table (also this crate's [`super::MASK_COLORS`]).
pub const SEGMENT_COLORS: [&str; 8] = [
    "red", "purple", "blue", "green", "yellow", "white", "black", "gray",
];

/// The pose colour table: opaque discs, green being (0, 255, 0).
pub const POSE_COLORS: [&str; 9] = [
    "red", "green", "blue", "yellow", "cyan", "magenta", "gray", "white", "black",
];

/// A pose instruction: one clause per `(joint, colour)`, each from `pick(i)`'s clause.
pub fn pose(marks: &[(&str, &str)], owner: &str, pick: impl Fn(usize) -> usize) -> String {
    marks
        .iter()
        .enumerate()
        .map(|(i, (joint, color))| {
            let clause = POSE_CLAUSES[pick(i) % POSE_CLAUSES.len()];
            fill(
                clause,
                &[("joint", joint), ("color", color), ("owner", owner)],
            )
        })
        .collect()
}

/// A pose instruction with a random clause per joint.
pub fn random_pose(rng: &mut impl Rng, marks: &[(&str, &str)], owner: &str) -> String {
    let picks: Vec<usize> = marks
        .iter()
        .map(|_| rng.random_range(0..POSE_CLAUSES.len()))
        .collect();
    pose(marks, owner, |i| picks[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_match_the_overlay_colours_and_clauses_join_with_a_trailing_comma() {
        let mask: Vec<&str> = super::super::MASK_COLORS.iter().map(|c| c.name).collect();
        assert_eq!(mask, SEGMENT_COLORS);
        for c in POSE_COLORS {
            assert!(
                super::super::KEYPOINT_COLORS.iter().any(|k| k.name == c),
                "{c}"
            );
        }
        let text = pose(
            &[("nose", "red"), ("left_wrist", "cyan")],
            "the people",
            |i| i,
        );
        assert_eq!(
            text,
            "Put red circles on the nose of the people, Circle the left_wrist of the people with the color cyan, "
        );
    }
}
