//! Instruction parsing: from free text, what was asked (task family), of what (target phrases,
//! keypoint names) and in which colour, so that the decoder knows what to look for.
//!
//! The app's task picker builds a [`Parsed`] directly; this module serves typed instructions,
//! the CLI and `eval`. It understands every template in [`crate::tasks`] and the paper's own
//! phrasings ("Apply a blue semi-transparent mask to the rightmost dog", "put a red circle on
//! the man's left shoulder"), several targets per instruction, and any colour of
//! [`super::color`].

use std::sync::OnceLock;

use regex::Regex;

use super::color::{self, Palette};
use crate::data::person::KEYPOINT_NAMES;

/// What an instruction asks the model to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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
    /// the owner of a keypoint.
    pub category: String,
    pub color: [u8; 3],
    pub color_name: String,
    /// For keypoints: the COCO name where it is one (`left_shoulder`), else the phrase.
    pub keypoint: Option<String>,
}

/// A parsed instruction.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Parsed {
    pub kind: Kind,
    pub targets: Vec<Target>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("'{word}' in \"{text}\" is not a colour this tool knows; use a colour name (red, light blue, any CSS name) or a hex code like #ff8000")]
    UnknownColor { word: String, text: String },
    #[error("\"{0}\" asks for a mask or marks but names no colour to draw them in; add one, e.g. \"apply a blue semi-transparent mask to ...\"")]
    NoColor(String),
}

struct Patterns {
    keypoint_mark: Regex,
    class_rule: Regex,
    detection: Regex,
    segmentation: Regex,
    mask_color_before: Regex,
    mask_color_after: Regex,
    unknown_color: Regex,
    unknown_mark_color: Regex,
    target_after_noun: Regex,
    target_after_verb: Regex,
    target_before_participle: Regex,
    target_before_should: Regex,
    target_where: Regex,
    target_before_color: Regex,
    owner_of_tail: Regex,
    owner_joints_of: Regex,
    owner_on: Regex,
    owner_needs: Regex,
}

/// Keypoint names as written, longest first, with the COCO name each means.
fn keypoint_words() -> Vec<(String, &'static str)> {
    let mut words: Vec<(String, &'static str)> = KEYPOINT_NAMES
        .iter()
        .map(|k| (k.replace('_', " "), *k))
        .collect();
    for side in ["left", "right"] {
        let name = |part: &str| -> &'static str {
            KEYPOINT_NAMES
                .iter()
                .find(|k| **k == format!("{side}_{part}"))
                .expect("COCO name")
        };
        words.push((format!("{side} hand"), name("wrist")));
        words.push((format!("{side} foot"), name("ankle")));
    }
    words.sort_by_key(|(w, _)| std::cmp::Reverse(w.len()));
    words
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let col = color::pattern();
        let kp = keypoint_words()
            .iter()
            .map(|(w, _)| w.replace(' ', r"\s+"))
            .collect::<Vec<_>>()
            .join("|");
        let re = |s: &str| Regex::new(&format!("(?i){s}")).expect("valid pattern");
        let mask_noun = r"(?:mask|overlay|tint|layer|shade|highlight|colou?r(?:ing)?|box|rectangle|bounding\s+box)e?s?";
        // Words that say how see-through the overlay is.
        let see = r"semi-?transparent|half-?transparent|transparent|translucent|see-through";
        let end = r"(?:\s*(?:,|;|\.|\?|!|:|$)|\s+(?:and|of|on|or|otherwise|please)\b)";
        Patterns {
            keypoint_mark: re(&format!(
                r"(?P<color>{col})\s+(?:circle|dot|disc|disk|point|marker|mark|spot)s?\s+(?:on|at|over|to|for)\s+(?:the\s+|its\s+|his\s+|her\s+|their\s+)?(?:(?P<own>[a-z][\w ]*?)'s\s+)?(?P<kp>{kp}|[a-z][a-z ]*?){end}"
            )),
            class_rule: re(&format!(
                r"(?P<color>{col})\s+(?:if|when)\s+(?:it\s+(?:is|shows|contains|has)\s+|it's\s+|there\s+is\s+|the\s+(?:image|picture|photo)\s+(?:shows|contains|has|is)\s+|you\s+see\s+)?(?:an?\s+|the\s+)?(?P<cls>[a-z][a-z ]*?){end}"
            )),
            detection: re(r"\b(?:detect\w*|bounding\s+box(?:es)?|box(?:es)?\s+around|draw\s+(?:an?\s+)?\w*\s*box)\b"),
            segmentation: re(r"\b(?:mask\w*|overlay|tint\w*|segment\w*|translucent|transparent|see-through|opacity|opaque|shad(?:e|ed)|highlight\w*|colou?r\s+over)\b"),
            mask_color_before: re(&format!(
                r"(?P<color>{col})(?:\s+(?:{see}|semi|opaque|colou?red|segmentation|solid|soft))*\s+{mask_noun}\b"
            )),
            mask_color_after: re(&format!(
                r"\b(?:in|with|of|it|as)\s+(?:(?:an?|{see})\s+)*(?P<color>{col})(?:\s+at\b|\s+and\b|\s*(?:,|;|\.|\?|!|$))"
            )),
            unknown_color: re(&format!(
                r"\b(?:an?|in|with|of|it)\s+(?:(?:{see})\s+)?(?P<word>[a-z#][\w-]*)\s+(?:(?:{see})\s+)?{mask_noun}\b"
            )),
            unknown_mark_color: re(
                r"\b(?:an?|one)\s+(?P<word>[a-z#][\w-]*)\s+(?:circle|dot|disc|disk|point|marker|spot)s?\s+(?:on|at|over)\b",
            ),
            target_after_noun: re(&format!(
                r"\b{mask_noun}\s+(?:to|on|onto|over|for|across|around)\s+(?P<t>.+?)(?:\s+in\s+(?:an?\s+)?(?:semi|half|trans|see|{col})\b.*)?$"
            )),
            target_after_verb: re(&format!(
                r"^(?:(?:please|kindly|could\s+you|can\s+you|would\s+you|now|lightly|just|gently)\s+)*(?:segment|mark|cover|highlight|mask|paint|shade|tint|colou?r|label|outline|detect|fill\s+the\s+area\s+of|fill|find|locate|select|box|give)\s+(?:(?:over|just|only)\s+)?(?P<t>.+?)(?:\s+(?:with|using|as|by|and)\b|\s+in\s+(?:an?\s+)?(?:semi|half|trans|see|{col})|\s+an?\s+(?:(?:semi|half|trans|see)\S*\s+)?(?:{col})\b|\s*[;,:?!.]|$)"
            )),
            target_before_participle: re(
                r"^(?:i'd\s+like|i\s+want|i\s+would\s+like|please\s+have)\s+(?P<t>.+?)\s+(?:shaded|masked|marked|covered|tinted|highlighted|painted|colou?red|boxed)\b",
            ),
            target_before_should: re(r"^(?P<t>.+?)\s+(?:(?:should|must|needs\s+to|has\s+to)\s+be|gets|receives)\b"),
            target_where: re(r"^(?:(?:show|tell)\s+(?:me\s+)?)?where\s+(?P<t>.+?)\s+(?:is|are)\b"),
            target_before_color: re(&format!(
                r"^(?:and\s+)?(?P<t>.+?)\s+(?:in|with|as)\s+(?:an?\s+)?(?:semi|half|trans|see|{col})"
            )),
            owner_of_tail: re(r"\bof\s+(?P<o>[^,;:]+?)\s*(?:,?\s*please)?\s*[.?!]?\s*$"),
            owner_joints_of: re(r"\b(?:keypoints|joints|body\s+parts)\s+of\s+(?P<o>.+?)(?::|\s+and\b|,)"),
            owner_on: re(r"^on\s+(?P<o>.+?),"),
            owner_needs: re(r"^(?P<o>.+?)\s+needs\b"),
        }
    })
}

/// Parses an instruction.
pub fn parse(text: &str) -> Result<Parsed, ParseError> {
    let p = patterns();
    let text = text.trim();
    let rules: Vec<_> = p.class_rule.captures_iter(text).collect();
    if !rules.is_empty() {
        let targets = rules
            .iter()
            .map(|c| {
                let class = tidy(&c["cls"]);
                target(&c["color"], Palette::Mask, class.clone(), class, None)
            })
            .collect();
        return Ok(Parsed {
            kind: Kind::Classification,
            targets,
        });
    }
    let overlay = if p.detection.is_match(text) {
        Some(Kind::Detection)
    } else if p.segmentation.is_match(text) {
        Some(Kind::Segmentation)
    } else {
        None
    };
    let colors = mask_colors(text);
    if let (Some(kind), false) = (overlay, colors.is_empty()) {
        let targets = split_clauses(text, &colors)
            .into_iter()
            .zip(&colors)
            .map(|(clause, (start, end))| {
                let phrase = target_phrase(clause).unwrap_or_else(|| "the object".into());
                let category = head_noun(&phrase);
                target(&text[*start..*end], Palette::Mask, phrase, category, None)
            })
            .collect();
        return Ok(Parsed { kind, targets });
    }
    let marks: Vec<_> = p.keypoint_mark.captures_iter(text).collect();
    if !marks.is_empty() {
        return Ok(keypoints(text, &marks));
    }
    let unknown = if overlay.is_some() {
        p.unknown_color.captures(text)
    } else {
        p.unknown_mark_color.captures(text)
    };
    if let Some(c) = &unknown {
        let word = c["word"].to_string();
        if color::lookup(&word, Palette::Mask).is_none() && !is_filler(&word) {
            return Err(ParseError::UnknownColor {
                word,
                text: text.into(),
            });
        }
    }
    if overlay.is_some() || unknown.is_some() {
        return Err(ParseError::NoColor(text.into()));
    }
    Ok(Parsed {
        kind: Kind::Edit,
        targets: vec![],
    })
}

fn is_filler(word: &str) -> bool {
    matches!(
        word.to_lowercase().as_str(),
        "the" | "a" | "an" | "this" | "that" | "its" | "their" | "semi" | "half" | "opaque" | "new"
    )
}

fn target(
    color_text: &str,
    palette: Palette,
    phrase: String,
    category: String,
    keypoint: Option<String>,
) -> Target {
    let rgb = color::lookup(color_text, palette).expect("matched colours are known");
    Target {
        phrase,
        category,
        color: rgb,
        color_name: color_text
            .trim()
            .to_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        keypoint,
    }
}

fn keypoints(text: &str, marks: &[regex::Captures]) -> Parsed {
    let p = patterns();
    let words = keypoint_words();
    let last_end = marks.last().map_or(0, |m| m.name("kp").unwrap().end());
    let owner = p
        .owner_of_tail
        .captures(&text[last_end..])
        .or_else(|| p.owner_joints_of.captures(text))
        .or_else(|| p.owner_on.captures(text))
        .or_else(|| p.owner_needs.captures(text))
        .map(|c| tidy(&c["o"]))
        // "on the man's left shoulder and the right knee": the possessive names the owner.
        .or_else(|| {
            marks
                .iter()
                .find_map(|m| m.name("own").map(|o| tidy(o.as_str())))
        });
    let targets = marks
        .iter()
        .map(|m| {
            let written = m["kp"]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase();
            let coco = words
                .iter()
                .find(|(w, _)| *w == written)
                .map(|(_, k)| k.to_string());
            let own = m.name("own").map(|o| tidy(o.as_str())).or(owner.clone());
            let category = match (&own, &coco) {
                (Some(o), _) => head_noun(o),
                (None, Some(_)) => "person".into(),
                (None, None) => "object".into(),
            };
            let keypoint = Some(coco.unwrap_or_else(|| written.clone()));
            target(&m["color"], Palette::Keypoint, written, category, keypoint)
        })
        .collect();
    Parsed {
        kind: Kind::Keypoints,
        targets,
    }
}

/// Byte spans of the colours the overlay is drawn in (not colours describing the target).
fn mask_colors(text: &str) -> Vec<(usize, usize)> {
    let p = patterns();
    let mut spans: Vec<(usize, usize)> = p
        .mask_color_before
        .captures_iter(text)
        .chain(p.mask_color_after.captures_iter(text))
        .map(|c| {
            let m = c.name("color").unwrap();
            (m.start(), m.end())
        })
        .collect();
    spans.sort();
    spans.dedup();
    spans
}

/// Splits a multi-target instruction into one clause per overlay colour, at the last
/// separator (";", ",", " and ") before each next colour's clause.
fn split_clauses<'a>(text: &'a str, colors: &[(usize, usize)]) -> Vec<&'a str> {
    let sep = Regex::new(r"(?i)\s*;\s*|\s*,\s*(?:and\s+)?|\s+and\s+").unwrap();
    let mut cuts = vec![];
    for w in colors.windows(2) {
        let (prev_end, next_start) = (w[0].1, w[1].0);
        // A separator between the two colours; for "T1 in red and T2 in blue" it follows the
        // first colour, for "a red mask to T1 and a blue mask to T2" it precedes the second.
        if let Some(m) = sep.find_iter(&text[prev_end..next_start]).last() {
            cuts.push((prev_end + m.start(), prev_end + m.end()));
        }
    }
    if cuts.len() + 1 != colors.len() {
        return vec![text; colors.len()];
    }
    let mut clauses = vec![];
    let mut start = 0;
    for (a, b) in cuts {
        clauses.push(&text[start..a]);
        start = b;
    }
    clauses.push(&text[start..]);
    clauses
}

fn target_phrase(clause: &str) -> Option<String> {
    let p = patterns();
    let clause = clause.trim();
    [
        &p.target_after_noun,
        &p.target_after_verb,
        &p.target_before_participle,
        &p.target_before_should,
        &p.target_where,
        &p.target_before_color,
    ]
    .iter()
    .find_map(|re| re.captures(clause).map(|c| tidy(&c["t"])))
    .filter(|t| !t.is_empty())
}

/// Drops trailing punctuation and politeness, and a leading "all of".
fn tidy(s: &str) -> String {
    let mut t = s.trim().to_string();
    loop {
        let before = t.clone();
        t = t
            .trim_end_matches(['.', '?', '!', ',', ';', ':', ' '])
            .to_string();
        for tail in [" please", " for me", " thanks"] {
            if t.to_lowercase().ends_with(tail) {
                t.truncate(t.len() - tail.len());
            }
        }
        if t == before {
            break;
        }
    }
    t
}

/// "the person on the right" -> "person"; "all triangles" -> "triangle".
pub fn head_noun(phrase: &str) -> String {
    const STOP: &[&str] = &[
        "of", "on", "in", "at", "with", "that", "which", "who", "near", "to", "from", "behind",
        "under", "above", "below", "beside", "next", "wearing", "holding", "closest", "nearest",
    ];
    let words: Vec<String> = phrase
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric() && c != '-')
                .to_lowercase()
        })
        .take_while(|w| !STOP.contains(&w.as_str()))
        .filter(|w| !w.is_empty())
        .collect();
    let Some(last) = words.last() else {
        return "object".into();
    };
    singular(last)
}

fn singular(w: &str) -> String {
    match w {
        "people" => return "person".into(),
        "men" => return "man".into(),
        "women" => return "woman".into(),
        "children" => return "child".into(),
        "mice" => return "mouse".into(),
        _ => {}
    }
    if let Some(stem) = w.strip_suffix("ies") {
        return format!("{stem}y");
    }
    for es in ["sses", "xes", "ches", "shes"] {
        if w.ends_with(es) {
            return w[..w.len() - 2].to_string();
        }
    }
    if w.ends_with('s') && !w.ends_with("ss") && w.len() > 3 {
        return w[..w.len() - 1].to_string();
    }
    w.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{fill, join_and, Task};

    fn one(text: &str) -> Target {
        let p = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(p.targets.len(), 1, "{text}: {p:?}");
        p.targets[0].clone()
    }

    #[test]
    fn every_segmentation_template_and_paraphrase_round_trips() {
        let targets = [
            ("the leftmost red circle", "circle"),
            ("all triangles", "triangle"),
            ("the person on the right", "person"),
            ("the largest star", "star"),
        ];
        let t = Task::SemanticSegmentation;
        for tpl in t.templates().iter().chain(t.paraphrases()) {
            for (i, (phrase, head)) in targets.iter().enumerate() {
                let (cname, rgb) = [
                    ("blue", [0, 0, 255]),
                    ("yellow", [255, 255, 0]),
                    ("gray", [128, 128, 128]),
                    ("light blue", [173, 216, 230]),
                ][i];
                let text = fill(tpl, &[("target", phrase), ("color", cname)]);
                let p = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
                assert_eq!(p.kind, Kind::Segmentation, "{text}");
                let t = one(&text);
                assert_eq!(t.phrase.to_lowercase(), *phrase, "{text}");
                assert_eq!(t.category, *head, "{text}");
                assert_eq!(t.color, rgb, "{text}");
            }
        }
    }

    #[test]
    fn every_keypoint_template_and_paraphrase_round_trips() {
        let marks = join_and(&[
            "a red circle on the nose".into(),
            "a green circle on the left shoulder".into(),
            "a cyan circle on the right knee".into(),
        ]);
        let t = Task::Keypoints;
        for tpl in t.templates().iter().chain(t.paraphrases()) {
            let text = fill(
                tpl,
                &[("marks", &marks), ("owner", "the person on the left")],
            );
            let p = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(p.kind, Kind::Keypoints, "{text}");
            let got: Vec<_> = p
                .targets
                .iter()
                .map(|t| (t.keypoint.clone().unwrap(), t.color, t.category.clone()))
                .collect();
            assert_eq!(
                got,
                [
                    ("nose".into(), [255, 0, 0], "person".into()),
                    ("left_shoulder".into(), [0, 255, 0], "person".into()),
                    ("right_knee".into(), [0, 255, 255], "person".into()),
                ],
                "{text}"
            );
        }
    }

    #[test]
    fn paper_phrasings_and_free_text() {
        let t = one("Apply a blue semi-transparent mask to the rightmost dog");
        assert_eq!(
            (t.phrase.as_str(), t.category.as_str(), t.color),
            ("the rightmost dog", "dog", [0, 0, 255])
        );
        let p = parse("put a red circle on the man's left shoulder").unwrap();
        assert_eq!(p.kind, Kind::Keypoints);
        assert_eq!(p.targets[0].keypoint.as_deref(), Some("left_shoulder"));
        assert_eq!(p.targets[0].category, "man");
        let t = one("Place a #ff8000 mask over the cars, please.");
        assert_eq!((t.category.as_str(), t.color), ("car", [255, 128, 0]));
        let t = one("mask the woman holding an umbrella in semi-transparent purple");
        assert_eq!(
            (t.phrase.as_str(), t.color),
            ("the woman holding an umbrella", [128, 0, 128])
        );
        assert_eq!(t.category, "woman");
        let t = one("Put a dot of colour? no: put a magenta dot on the tip of the star");
        assert_eq!(t.keypoint.as_deref(), Some("tip"));
        assert_eq!(t.color, [255, 0, 255]);
    }

    #[test]
    fn several_targets_in_one_instruction() {
        let p =
            parse("Apply a blue mask to the left dog and a red mask to the right dog.").unwrap();
        let got: Vec<_> = p
            .targets
            .iter()
            .map(|t| (t.phrase.as_str(), t.color))
            .collect();
        assert_eq!(
            got,
            [
                ("the left dog", [0, 0, 255]),
                ("the right dog", [255, 0, 0])
            ]
        );
        let p = parse("Segment the cat in red and the dog in blue").unwrap();
        let got: Vec<_> = p
            .targets
            .iter()
            .map(|t| (t.category.as_str(), t.color))
            .collect();
        assert_eq!(got, [("cat", [255, 0, 0]), ("dog", [0, 0, 255])]);
        let p = parse("blue circle on the nose and red circle on the left shoulder").unwrap();
        let got: Vec<_> = p
            .targets
            .iter()
            .map(|t| t.keypoint.clone().unwrap())
            .collect();
        assert_eq!(got, ["nose", "left_shoulder"]);
    }

    #[test]
    fn detection_classification_and_edits() {
        let p = parse("Detect the cars with a yellow semi-transparent mask").unwrap();
        assert_eq!(
            (p.kind, p.targets[0].category.as_str()),
            (Kind::Detection, "car")
        );
        let p = parse("Draw a red box around the dog").unwrap();
        assert_eq!(
            (p.kind, p.targets[0].category.as_str()),
            (Kind::Detection, "dog")
        );
        let p = parse("Paint the image red if it is a cat, blue if it is a dog").unwrap();
        assert_eq!(p.kind, Kind::Classification);
        let got: Vec<_> = p
            .targets
            .iter()
            .map(|t| (t.category.as_str(), t.color))
            .collect();
        assert_eq!(got, [("cat", [255, 0, 0]), ("dog", [0, 0, 255])]);
        for edit in [
            "Make the image sharper.",
            "Remove the red circle",
            "Make the star blue.",
        ] {
            assert_eq!(parse(edit).unwrap().kind, Kind::Edit, "{edit}");
        }
    }

    #[test]
    fn unknown_or_missing_colours_are_clear_errors() {
        let e = parse("Apply a blurple semi-transparent mask to the dog").unwrap_err();
        assert!(
            matches!(&e, ParseError::UnknownColor { word, .. } if word == "blurple"),
            "{e}"
        );
        assert!(e.to_string().contains("hex code"));
        let e = parse("put a blurple circle on the nose").unwrap_err();
        assert!(
            matches!(&e, ParseError::UnknownColor { word, .. } if word == "blurple"),
            "{e}"
        );
        assert!(matches!(
            parse("Segment the dog."),
            Err(ParseError::NoColor(_))
        ));
    }
}
