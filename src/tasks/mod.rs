//! The instruction vocabulary: task families, the colours the paper draws its answers in, and
//! the templates instructions are written from (at least ten per family, varied in word order,
//! synonyms, politeness and mood).
//!
//! Colours follow InstructDiffusion's training code (`../shared/reference/NOTES.md`).

pub mod compose;
pub mod official;

pub use official::Phrasing;

use rand::Rng;

use crate::data::scene::{c, Color};

/// Every task family the built-in model learns.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    ReferringSegmentation,
    SemanticSegmentation,
    Keypoints,
    Remove,
    Recolor,
    Add,
    Replace,
    Denoise,
    Deblur,
    Watermark,
}

impl Task {
    pub const ALL: [Task; 10] = [
        Self::ReferringSegmentation,
        Self::SemanticSegmentation,
        Self::Keypoints,
        Self::Remove,
        Self::Recolor,
        Self::Add,
        Self::Replace,
        Self::Denoise,
        Self::Deblur,
        Self::Watermark,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ReferringSegmentation => "referring_segmentation",
            Self::SemanticSegmentation => "semantic_segmentation",
            Self::Keypoints => "keypoints",
            Self::Remove => "remove",
            Self::Recolor => "recolor",
            Self::Add => "add",
            Self::Replace => "replace",
            Self::Denoise => "denoise",
            Self::Deblur => "deblur",
            Self::Watermark => "watermark",
        }
    }

    /// The official per-task guidance recipe `(text, image)` (InstructDiffusion, NOTES.md):
    /// segmentation 7.5 / 1.5, keypoints 6.0 / 0.5, watermark removal 1.0 / 1.0, and the editing
    /// recipe (the official CLI default) 5.0 / 1.25 for the rest.
    pub fn guidance(self) -> (f64, f64) {
        match self {
            Self::ReferringSegmentation | Self::SemanticSegmentation => (7.5, 1.5),
            Self::Keypoints => (6.0, 0.5),
            Self::Watermark => (1.0, 1.0),
            Self::Remove
            | Self::Recolor
            | Self::Add
            | Self::Replace
            | Self::Denoise
            | Self::Deblur => (5.0, 1.25),
        }
    }

    /// Held-out phrasings of this family, never used for training: `eval --paraphrased`
    /// asks the model with these (same placeholders as [`Task::templates`]).
    pub fn paraphrases(self) -> &'static [&'static str] {
        match self {
            Self::ReferringSegmentation | Self::SemanticSegmentation => {
                // The held-out set and InstructDiffusion's structures.
                static ALL: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
                ALL.get_or_init(|| [SEGMENT_HELD_OUT, official::SEGMENT].concat())
            }
            Self::Keypoints => KEYPOINTS_HELD_OUT,
            Self::Remove => REMOVE_HELD_OUT,
            Self::Recolor => RECOLOR_HELD_OUT,
            Self::Add => ADD_HELD_OUT,
            Self::Replace => REPLACE_HELD_OUT,
            Self::Denoise => DENOISE_HELD_OUT,
            Self::Deblur => DEBLUR_HELD_OUT,
            Self::Watermark => WATERMARK_HELD_OUT,
        }
    }

    /// The templates of this family. Placeholders: `{target}`, `{color}`, `{kind}`, `{place}`,
    /// `{marks}`, `{owner}`.
    pub fn templates(self) -> &'static [&'static str] {
        match self {
            Self::ReferringSegmentation | Self::SemanticSegmentation => SEGMENT,
            Self::Keypoints => KEYPOINTS,
            Self::Remove => REMOVE,
            Self::Recolor => RECOLOR,
            Self::Add => ADD,
            Self::Replace => REPLACE,
            Self::Denoise => DENOISE,
            Self::Deblur => DEBLUR,
            Self::Watermark => WATERMARK,
        }
    }
}

/// Segmentation overlay colours (InstructDiffusion's list).
pub const MASK_COLORS: [Color; 8] = [
    c("red", 255, 0, 0),
    c("purple", 128, 0, 128),
    c("blue", 0, 0, 255),
    c("green", 0, 128, 0),
    c("yellow", 255, 255, 0),
    c("white", 255, 255, 255),
    c("black", 0, 0, 0),
    c("gray", 128, 128, 128),
];

/// Keypoint disc colours: the mask colours plus cyan, magenta and bright green.
pub const KEYPOINT_COLORS: [Color; 10] = [
    c("red", 255, 0, 0),
    c("blue", 0, 0, 255),
    c("yellow", 255, 255, 0),
    c("cyan", 0, 255, 255),
    c("magenta", 255, 0, 255),
    c("green", 0, 255, 0),
    c("purple", 128, 0, 128),
    c("white", 255, 255, 255),
    c("black", 0, 0, 0),
    c("gray", 128, 128, 128),
];

const SEGMENT: &[&str] = &[
    "Apply a {color} semi-transparent mask to {target}.",
    "Mark {target} with a translucent {color} overlay.",
    "Please segment {target} and tint it {color}.",
    "Cover {target} with a see-through layer of {color}.",
    "Highlight {target} using a half-transparent {color} mask",
    "Could you place a transparent {color} mask over {target}?",
    "{Target} should be masked in semi-transparent {color}.",
    "fill the area of {target} with {color} at half opacity",
    "Segment {target}; show it as a {color} tint.",
    "I'd like {target} shaded with a transparent {color} mask, please.",
    "Paint a {color} translucent mask on {target}.",
    "Put a semi-transparent {color} overlay on {target}",
];

const KEYPOINTS: &[&str] = &[
    "Put {marks} of {owner}.",
    "Draw {marks} of {owner}.",
    "Mark the keypoints of {owner}: {marks}.",
    "Please place {marks} of {owner}.",
    "Could you draw {marks} of {owner}?",
    "On {owner}, draw {marks}.",
    "Locate the joints of {owner} and put {marks}",
    "Show where the joints of {owner} are with {marks}.",
    "{Owner} needs {marks}.",
    "Add {marks} of {owner}, please.",
    "Indicate with circles: {marks} of {owner}.",
];

const REMOVE: &[&str] = &[
    "Remove {target}.",
    "Delete {target} from the picture.",
    "Get rid of {target}.",
    "Erase {target}",
    "Make {target} disappear.",
    "Take {target} out of the image.",
    "Could you remove {target}, please?",
    "{Target} should not be in the image.",
    "Clear away {target}.",
    "Please wipe out {target}.",
    "Without {target}, please.",
];

const RECOLOR: &[&str] = &[
    "Make {target} {color}.",
    "Change the color of {target} to {color}.",
    "Paint {target} {color}.",
    "Recolor {target} in {color}",
    "Turn {target} {color}.",
    "{Target} should be {color}.",
    "Could you make {target} {color}?",
    "Give {target} a {color} color.",
    "Please switch {target} to {color}.",
    "Color {target} {color} instead.",
    "I want {target} in {color}.",
];

const ADD: &[&str] = &[
    "Add a {color} {kind} {place}.",
    "Put a {color} {kind} {place}.",
    "Draw a {color} {kind} {place}.",
    "Insert a {color} {kind} {place}",
    "Place a {color} {kind} {place}.",
    "There should be a {color} {kind} {place}.",
    "Could you add a {color} {kind} {place}?",
    "Please include a {color} {kind} {place}.",
    "{Place}, add a {color} {kind}.",
    "Let a {color} {kind} appear {place}.",
    "I'd like a {color} {kind} {place}.",
];

const REPLACE: &[&str] = &[
    "Replace {target} with a {kind}.",
    "Turn {target} into a {kind}.",
    "Change {target} into a {kind}",
    "Swap {target} for a {kind}.",
    "Make {target} a {kind} instead.",
    "Transform {target} into a {kind}.",
    "{Target} should become a {kind}.",
    "Could you replace {target} by a {kind}?",
    "Please convert {target} to a {kind}.",
    "Use a {kind} in place of {target}.",
    "I want a {kind} where {target} is.",
];

const DENOISE: &[&str] = &[
    "Remove the noise.",
    "Denoise the image.",
    "Make the image clean",
    "Clean up the grain in this picture.",
    "Reduce the noise.",
    "Could you remove the noise, please?",
    "Get rid of the speckles.",
    "Make this photo less noisy.",
    "Restore the noisy image.",
    "The picture should be free of noise.",
    "Please denoise it",
];

const DEBLUR: &[&str] = &[
    "Make the image sharper.",
    "Deblur the picture.",
    "Sharpen the image",
    "Remove the blur.",
    "Bring the image into focus.",
    "Could you make it sharp?",
    "Fix this blurry photo.",
    "Make the picture crisp.",
    "Undo the blur, please.",
    "The image should be in focus.",
    "please deblur",
];

const WATERMARK: &[&str] = &[
    "Remove the watermark.",
    "Delete the watermark.",
    "Get rid of the text overlay",
    "Erase the logo on the image.",
    "Take the watermark off.",
    "Could you remove the watermark, please?",
    "Clean the watermark from the image.",
    "Make the watermark disappear.",
    "Remove the stamp from the picture.",
    "The image should have no watermark.",
    "please remove watermark",
];

// Held-out phrasings: other verbs, structures and registers than the templates above.
const SEGMENT_HELD_OUT: &[&str] = &[
    "Give {target} a {color} see-through coloring.",
    "Tint just {target} in {color}, so it still shows underneath.",
    "Show me where {target} is by washing it in transparent {color}.",
    "{Target} gets a semi-opaque {color} layer.",
    "Can you shade {target} in {color} and leave the rest alone?",
    "Lightly color over {target} in {color}.",
];

const KEYPOINTS_HELD_OUT: &[&str] = &[
    "Pin {marks} of {owner}.",
    "For {owner}, mark {marks}.",
    "I need {marks} of {owner}.",
    "Find {owner} and show {marks}.",
    "Label the body of {owner} with {marks}.",
];

const REMOVE_HELD_OUT: &[&str] = &[
    "Drop {target} from the scene.",
    "I don't want {target} here.",
    "Lose {target}.",
    "Can {target} go away?",
    "Leave out {target}, keep everything else.",
];

const RECOLOR_HELD_OUT: &[&str] = &[
    "Repaint {target} so it is {color}.",
    "{Target} needs to be {color} now.",
    "Switch the hue of {target} to {color}.",
    "Dye {target} {color}.",
    "How would {target} look in {color}? Show me.",
];

const ADD_HELD_OUT: &[&str] = &[
    "Stick a {color} {kind} {place}.",
    "Sketch in a {color} {kind} {place}.",
    "A {color} {kind} {place}, please.",
    "Introduce a {color} {kind} {place}.",
    "Can there be a {color} {kind} {place}?",
];

const REPLACE_HELD_OUT: &[&str] = &[
    "Exchange {target} for a {kind}.",
    "Where {target} is, show a {kind}.",
    "{Target} becomes a {kind}.",
    "Morph {target} into a {kind}.",
    "Substitute a {kind} for {target}.",
];

const DENOISE_HELD_OUT: &[&str] = &[
    "Smooth out the noise.",
    "This image is grainy; clean it.",
    "Suppress the noise, please.",
    "Can you make it less speckled?",
    "Filter out the noise.",
];

const DEBLUR_HELD_OUT: &[&str] = &[
    "Make it less blurry.",
    "Sharpen up this photo, please.",
    "The image is out of focus; fix that.",
    "Can you restore the sharp edges?",
    "Unblur the image.",
];

const WATERMARK_HELD_OUT: &[&str] = &[
    "Strip the watermark.",
    "Lose the text stamped on the image.",
    "Can you clean off the watermark?",
    "No watermark, please.",
    "Take away the overlaid logo.",
];

thread_local! {
    static HELD_OUT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with [`instruction`] phrasing from the held-out [`Task::paraphrases`] instead of
/// the templates (on this thread). The random draws are the same, so a generated sample keeps
/// its scene and target and only its instruction changes.
pub fn with_paraphrases<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            HELD_OUT.with(|h| h.set(self.0));
        }
    }
    let _reset = Reset(HELD_OUT.with(|h| h.replace(true)));
    f()
}

/// Fills a template. Capitalised placeholders (`{Target}`) get a capitalised value.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (key, value) in values {
        out = out.replace(&format!("{{{key}}}"), value);
        let cap_key = capitalize(key);
        out = out.replace(&format!("{{{cap_key}}}"), &capitalize(value));
    }
    out
}

fn capitalize(s: &str) -> String {
    let mut ch = s.chars();
    match ch.next() {
        Some(f) => f.to_uppercase().chain(ch).collect(),
        None => String::new(),
    }
}

/// Whether [`with_paraphrases`] is in force on this thread.
pub fn held_out() -> bool {
    HELD_OUT.with(|h| h.get())
}

/// Picks a random template of `task` and fills it.
pub fn instruction(rng: &mut impl Rng, task: Task, values: &[(&str, &str)]) -> String {
    let t = task.templates();
    let i = rng.random_range(0..t.len());
    if HELD_OUT.with(|h| h.get()) {
        let p = task.paraphrases();
        return fill(p[i % p.len()], values);
    }
    fill(t[i], values)
}

/// "a and b", "a, b and c".
pub fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_ten_distinct_templates_using_its_placeholders() {
        for task in Task::ALL {
            let t = task.templates();
            let distinct: std::collections::HashSet<_> = t.iter().collect();
            assert!(
                distinct.len() >= 10,
                "{}: {} templates",
                task.name(),
                distinct.len()
            );
            for tpl in t {
                let needs: &[&str] = match task {
                    Task::ReferringSegmentation | Task::SemanticSegmentation => {
                        &["arget}", "{color}"]
                    }
                    Task::Keypoints => &["{marks}", "wner}"],
                    Task::Remove => &["arget}"],
                    Task::Recolor => &["arget}", "{color}"],
                    Task::Add => &["{color}", "{kind}", "lace}"],
                    Task::Replace => &["arget}", "{kind}"],
                    _ => &[],
                };
                for n in needs {
                    assert!(tpl.contains(n), "{}: '{tpl}' lacks {n}", task.name());
                }
            }
        }
    }

    /// The held-out phrasings: at least five per family, none a training template, with the
    /// same placeholders as the family's templates.
    #[test]
    fn paraphrases_are_held_out_and_use_the_same_placeholders() {
        let holes = |t: &str| -> std::collections::BTreeSet<String> {
            t.split('{')
                .skip(1)
                .filter_map(|p| p.split('}').next())
                .map(|h| h.to_lowercase())
                .collect()
        };
        for task in Task::ALL {
            let (t, p) = (task.templates(), task.paraphrases());
            assert!(p.len() >= 5, "{}: {} paraphrases", task.name(), p.len());
            for para in p {
                assert!(!t.contains(para), "{}: '{para}' is a template", task.name());
                assert_eq!(holes(para), holes(t[0]), "{}: '{para}'", task.name());
            }
        }
    }

    /// Under `with_paraphrases` a generated sample keeps its images and only its instruction
    /// changes, to a paraphrase; outside it, templates again.
    #[test]
    fn paraphrased_samples_keep_their_scene() {
        use crate::data::sample::{generate, TaskWeights};
        for task in Task::ALL {
            let w = TaskWeights(vec![(task, 1.0)]);
            let plain = generate(7, 64, &w);
            let para = with_paraphrases(|| generate(7, 64, &w));
            assert!(plain.input == para.input && plain.target == para.target);
            assert_ne!(plain.instruction, para.instruction, "{}", task.name());
            assert_eq!(generate(7, 64, &w).instruction, plain.instruction);
        }
    }

    #[test]
    fn fill_capitalises_where_asked() {
        let s = fill(
            "{Target} should be {color}.",
            &[("target", "the red star"), ("color", "blue")],
        );
        assert_eq!(s, "The red star should be blue.");
        assert_eq!(
            join_and(&["a".into(), "b".into(), "c".into()]),
            "a, b and c"
        );
    }
}
