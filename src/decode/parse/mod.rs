//! Reading instructions: from free text, what was asked (task family), of what (target phrases,
//! keypoint names, their owner) and in which colour, so that the decoder knows what to look for.
//!
//! The reader works in three passes:
//! 1. **Overlay colours.** A colour counts only where it names what is drawn ("a blue mask",
//!    "in red", "with the color red", "use red to", "tint the tree red"), never where it
//!    describes the target ("the white tiger", "the red car").
//! 2. **Clauses.** The text splits at the last separator (`,` `;` `and`) before each further
//!    overlay colour, so "Put a blue circle on the nose of the tiger and use the red color to
//!    draw a circle around its left shoulder" is two clauses, one colour each.
//! 3. **Targets.** Each clause gives its target phrase (segmentation) or its point and the
//!    point's owner (keypoints), cut where the colour phrase or a "leave the rest" tail starts.
//!
//! It reads this crate's own templates ([`crate::tasks`]), the structures InstructDiffusion's
//! released model was trained on (its segmentation sentences, its pose clauses joined by ", "
//! with joint names written with a space or an underscore), the paper's printed instructions and
//! free phrasings. The app's task picker builds a [`Parsed`] from the same text; the pixels
//! settle what the words leave open ([`super::read`]).

mod patterns;
mod targets;
#[cfg(test)]
mod tests;

use self::patterns::{patterns, Mark, Mention};
use self::targets::*;
use super::color::{self, Palette};

pub use self::targets::{head_noun, is_person, is_person_joint};

/// What an instruction asks the model to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// 50% colour blends over the targets.
    Segmentation,
    /// Segmentation asked for boxes (an unseen task in the paper: boxes come from the masks).
    Detection,
    /// Opaque discs on named points.
    Keypoints,
    /// A colour per class ("red if it is a cat, blue if it is a dog"); decodes to one label.
    Classification,
    /// Edits and enhancement: an image, nothing to decode.
    Edit,
}

/// One thing to find in the output.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Target {
    /// As written: "the leftmost red circle", "left shoulder", "cat".
    pub phrase: String,
    /// The label exported: the phrase's head noun ("circle", "person"), the class name, or
    /// the owner of a keypoint ("person", "tiger").
    pub category: String,
    pub color: [u8; 3],
    pub color_name: String,
    /// For keypoints: the COCO name where it is one (`left_shoulder`), another person joint
    /// (`neck`, `head_top`), or the part as written ("logo", "tip").
    pub keypoint: Option<String>,
    /// The words expect several marks of this colour ("of the people", "each person's
    /// nose", "both players"): every one found is kept, not only the best.
    pub several: bool,
}

/// A target before its colour is known: what the words say about it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Label {
    pub phrase: String,
    pub category: String,
    pub keypoint: Option<String>,
    pub several: bool,
}

impl Label {
    /// The target this label names, drawn in `rgb` (named `color_name`).
    pub fn with_color(self, rgb: [u8; 3], color_name: String) -> Target {
        Target {
            phrase: self.phrase,
            category: self.category,
            color: rgb,
            color_name,
            keypoint: self.keypoint,
            several: self.several,
        }
    }
}

/// A parsed instruction.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Parsed {
    pub kind: Kind,
    pub targets: Vec<Target>,
}

/// What the words say where they do not make a whole [`Parsed`]: the family, if any, and the
/// targets named, for the pixels to colour in.
#[derive(Debug, Clone, PartialEq)]
pub struct Hints {
    pub kind: Option<Kind>,
    pub labels: Vec<Label>,
    /// The words ask for an edit or an enhancement ("remove the dog", "make it sharper").
    pub edit: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("'{word}' in \"{text}\" is not a colour this tool knows; use a colour name (red, light blue, any CSS name) or a hex code like #ff8000")]
    UnknownColor { word: String, text: String },
    #[error("\"{0}\" asks for a mask or marks but names no colour to draw them in; add one, e.g. \"apply a blue semi-transparent mask to ...\"")]
    NoColor(String),
}

/// Parses an instruction into what to decode. Errors when the words ask for overlays but the
/// colour is missing or unknown.
pub fn parse(text: &str) -> Result<Parsed, ParseError> {
    let (kind, drafts) = read_words(text.trim());
    let Some(kind) = kind else {
        return Ok(Parsed {
            kind: Kind::Edit,
            targets: vec![],
        });
    };
    if drafts.is_empty() {
        return Err(missing_color(text.trim(), kind));
    }
    Ok(Parsed {
        kind,
        targets: drafts
            .into_iter()
            .map(|(label, (rgb, name))| label.with_color(rgb, name))
            .collect(),
    })
}

/// What the words say even where they make no whole instruction: the family and the targets
/// named, colour or not.
pub fn hints(text: &str) -> Hints {
    let text = text.trim();
    let (kind, drafts) = read_words(text);
    let labels = match kind {
        Some(k) if drafts.is_empty() => colourless_labels(text, k),
        _ => drafts.into_iter().map(|(l, _)| l).collect(),
    };
    Hints {
        kind,
        labels,
        edit: kind.is_none() && patterns().edit_words.is_match(text),
    }
}

/// A target the words name, with its overlay colour and the colour's name as written.
type Draft = (Label, ([u8; 3], String));

/// The family the words ask for (None: an edit, or words this reader does not know) and one
/// draft per overlay colour.
fn read_words(text: &str) -> (Option<Kind>, Vec<Draft>) {
    let p = patterns();
    let rules: Vec<_> = p.class_rule.captures_iter(text).collect();
    if !rules.is_empty() {
        let drafts = rules
            .iter()
            .map(|c| {
                let class = tidy(&c["cls"]);
                let label = Label {
                    phrase: class.clone(),
                    category: class,
                    keypoint: None,
                    several: false,
                };
                (label, colour(&c["color"], Palette::Mask))
            })
            .collect();
        return (Some(Kind::Classification), drafts);
    }
    let mentions = mentions(text);
    // A mention's own noun decides ("a blue mask", "a red circle on"); else the words around
    // neutral ones ("use the color red to encircle", "in red").
    let has = |mark| mentions.iter().any(|m| m.mark == mark);
    let kind = if has(Mark::Disc) {
        Some(Kind::Keypoints)
    } else if has(Mark::Box) {
        Some(Kind::Detection)
    } else if has(Mark::Blend) {
        Some(if p.detection.is_match(text) {
            Kind::Detection
        } else {
            Kind::Segmentation
        })
    } else if p.disc_cue.is_match(text)
        && (!mentions.is_empty() || p.unknown_mark_color.is_match(text))
    {
        Some(Kind::Keypoints)
    } else if p.detection.is_match(text) {
        Some(Kind::Detection)
    } else if p.segmentation.is_match(text) {
        Some(Kind::Segmentation)
    } else {
        None
    };
    let Some(kind) = kind else {
        return (None, vec![]);
    };
    if mentions.is_empty() {
        return (Some(kind), vec![]);
    }
    let clauses = split_clauses(text, &mentions);
    let palette = match kind {
        Kind::Keypoints => Palette::Keypoint,
        _ => Palette::Mask,
    };
    let drafts: Vec<Draft> = match kind {
        Kind::Keypoints => {
            let label_all = |owner: Option<&str>| -> Vec<Option<(Label, Option<String>)>> {
                clauses
                    .iter()
                    .zip(&mentions)
                    .map(|(&(start, end), m)| point_label(text, start, end, m, owner))
                    .collect()
            };
            let shared = instruction_owner(text, &clauses);
            let mut labels = label_all(shared.as_deref());
            // "on the man's left shoulder and a green circle on the right knee": an owner one
            // clause names is every clause's that names none.
            let named = labels.iter().flatten().find_map(|(_, own)| own.clone());
            if let (None, Some(named)) = (&shared, named) {
                let again = label_all(Some(&named));
                for (l, a) in labels.iter_mut().zip(again) {
                    if l.as_ref().is_some_and(|(_, own)| own.is_none()) {
                        *l = a;
                    }
                }
            }
            labels
                .into_iter()
                .zip(&mentions)
                .filter_map(|(l, m)| Some((l?.0, colour(&text[m.start..m.end], palette))))
                .collect()
        }
        _ => clauses
            .iter()
            .zip(&mentions)
            .map(|(&(start, end), m)| {
                let phrase =
                    blend_phrase(text, start, end, m).unwrap_or_else(|| "the object".into());
                let label = Label {
                    category: head_noun(&phrase),
                    several: p.plural.is_match(&phrase) || is_plural(&phrase),
                    phrase,
                    keypoint: None,
                };
                (label, colour(&text[m.start..m.end], palette))
            })
            .collect(),
    };
    if kind == Kind::Keypoints && drafts.is_empty() {
        // Every circle was placed somewhere ("a red circle at the top"): an edit that adds one.
        return (None, vec![]);
    }
    (Some(kind), drafts)
}

fn colour(text: &str, palette: Palette) -> ([u8; 3], String) {
    let rgb = color::lookup(text, palette).expect("matched colours are known");
    let name = text
        .trim()
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    (rgb, name)
}

/// Every overlay colour mentioned, in order, each once.
fn mentions(text: &str) -> Vec<Mention> {
    let mut found: Vec<Mention> = vec![];
    for (re, mark) in &patterns().color_roles {
        for c in re.captures_iter(text) {
            let m = c.name("color").expect("every role names its colour");
            if let Some(prev) = found.iter_mut().find(|f| f.start == m.start()) {
                // A more specific reading of the same colour wins over a neutral one.
                if prev.mark == Mark::Neutral {
                    prev.mark = *mark;
                }
                continue;
            }
            found.push(Mention {
                start: m.start(),
                end: m.end(),
                mark: *mark,
            });
        }
    }
    found.sort_by_key(|m| m.start);
    found
}

fn missing_color(text: &str, kind: Kind) -> ParseError {
    let p = patterns();
    let unknown = match kind {
        Kind::Keypoints => p.unknown_mark_color.captures(text),
        _ => p
            .unknown_color
            .captures(text)
            .or_else(|| p.unknown_mark_color.captures(text)),
    };
    if let Some(c) = unknown {
        let word = c["word"].to_string();
        if color::lookup(&word, Palette::Mask).is_none() && !is_filler(&word) {
            return ParseError::UnknownColor {
                word,
                text: text.into(),
            };
        }
    }
    ParseError::NoColor(text.into())
}

/// The targets of an instruction that names no colour ("segment the dog"), for the pixels.
fn colourless_labels(text: &str, kind: Kind) -> Vec<Label> {
    let whole = Mention {
        start: text.len(),
        end: text.len(),
        mark: Mark::Neutral,
    };
    match kind {
        Kind::Keypoints => point_label(text, 0, text.len(), &whole, None)
            .map(|(label, _)| label)
            .into_iter()
            .collect(),
        _ => blend_phrase(text, 0, text.len(), &whole)
            .map(|phrase| Label {
                category: head_noun(&phrase),
                several: patterns().plural.is_match(&phrase) || is_plural(&phrase),
                phrase,
                keypoint: None,
            })
            .into_iter()
            .collect(),
    }
}

fn is_filler(word: &str) -> bool {
    matches!(
        word.to_lowercase().as_str(),
        "the" | "a" | "an" | "this" | "that" | "its" | "their" | "semi" | "half" | "opaque" | "new"
    )
}

/// Byte spans of one clause per mention: the text is cut at the last separator (";", ",",
/// " and ", a sentence end) between each two mentions.
fn split_clauses(text: &str, mentions: &[Mention]) -> Vec<(usize, usize)> {
    let sep = &patterns().separator;
    let mut cuts = vec![];
    for w in mentions.windows(2) {
        let (prev_end, next_start) = (w[0].end, w[1].start);
        if let Some(m) = sep.find_iter(&text[prev_end..next_start]).last() {
            cuts.push((prev_end + m.start(), prev_end + m.end()));
        }
    }
    if cuts.len() + 1 != mentions.len() {
        return vec![(0, text.len()); mentions.len()];
    }
    let mut clauses = vec![];
    let mut start = 0;
    for (a, b) in cuts {
        clauses.push((start, a));
        start = b;
    }
    clauses.push((start, text.len()));
    clauses
}
