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

/// How a colour mention says what is drawn in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// "a red circle on", "with a blue circle": opaque discs.
    Disc,
    /// "a blue mask", "a layer of red": a blend.
    Blend,
    /// "a red box": detection.
    Box,
    /// "in red", "the color red", "use red to": the clause's other words decide.
    Neutral,
}

/// One overlay colour in the text: its byte span and what it is drawn as.
#[derive(Debug, Clone, Copy)]
struct Mention {
    start: usize,
    end: usize,
    mark: Mark,
}

struct Patterns {
    class_rule: Regex,
    detection: Regex,
    segmentation: Regex,
    disc_cue: Regex,
    edit_words: Regex,
    color_roles: Vec<(Regex, Mark)>,
    unknown_color: Regex,
    unknown_mark_color: Regex,
    separator: Regex,
    lead_in: Regex,
    stop: Regex,
    blend_targets: Vec<Regex>,
    point_targets: Vec<Regex>,
    joint: Regex,
    owner_after: Regex,
    owner_anywhere: Vec<Regex>,
    placement: Regex,
    plural: Regex,
    politeness: Regex,
}

/// Person joints as written (with a space or an underscore), longest first, with the name each
/// is exported as: COCO's 17, then the other datasets' joints the released model was trained
/// on (CrowdPose's and AI Challenger's neck and head top, MPII's thorax, pelvis, upper neck),
/// and hands and feet for wrists and ankles.
fn joint_words() -> Vec<(String, String)> {
    let mut words: Vec<(String, String)> = KEYPOINT_NAMES
        .iter()
        .map(|k| (k.replace('_', " "), k.to_string()))
        .collect();
    for (written, name) in [
        ("neck", "neck"),
        ("upper neck", "upper_neck"),
        ("head top", "head_top"),
        ("top head", "head_top"),
        ("top of the head", "head_top"),
        ("thorax", "thorax"),
        ("pelvis", "pelvis"),
        ("left hand", "left_wrist"),
        ("right hand", "right_wrist"),
        ("left foot", "left_ankle"),
        ("right foot", "right_ankle"),
    ] {
        words.push((written.into(), name.into()));
    }
    words.sort_by_key(|(w, _)| std::cmp::Reverse(w.len()));
    words
}

/// Whether `name` (as exported) is a joint of a person.
pub fn is_person_joint(name: &str) -> bool {
    joint_words().iter().any(|(_, n)| n == name)
}

/// Whether a category names a person ("man", "players" -> "player", "skier"), whose COCO
/// joints go to COCO's `person` category.
pub fn is_person(category: &str) -> bool {
    const PEOPLE: &[&str] = &[
        "person",
        "man",
        "woman",
        "boy",
        "girl",
        "child",
        "kid",
        "baby",
        "lady",
        "guy",
        "human",
        "people",
        "player",
        "skier",
        "surfer",
        "rider",
        "athlete",
        "dancer",
        "runner",
        "adult",
        "teenager",
        "gentleman",
        "worker",
        "pedestrian",
        "astronaut",
        "someone",
        "body",
    ];
    PEOPLE.contains(&singular(&category.to_lowercase()).as_str())
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let col = format!("(?P<color>{})", color::pattern());
        let joints = joint_words()
            .iter()
            .map(|(w, _)| w.replace(' ', r"[\s_]+"))
            .collect::<Vec<_>>()
            .join("|");
        let re = |s: &str| Regex::new(&format!("(?i){s}")).expect("valid pattern");
        // Words that say how see-through the overlay is, or how it is drawn.
        let see = r"semi-?transparent|half-?transparent|transparent|translucent|see-through|semi-?opaque|semi|opaque|solid|soft|colou?red|segmentation|filled|thick|thin|small|big|large|little|bright";
        let blend_noun = r"(?:mask|overlay|tint|layer|shade|highlight|wash|colou?ring|fill)(?:e?s)?";
        let disc_noun = r"(?:circle|dot|disc|disk|ring|spot|marker|point)s?";
        let box_noun = r"(?:bounding\s+box(?:es)?|box(?:es)?|rectangles?)";
        let place = r"(?:on|at|over|around|onto|upon)";
        // Where a colour phrase may end: the end, punctuation, or a word that starts another
        // part of the sentence.
        let end = r"(?:\s*(?:[,;:.?!]|$)|\s+(?:and|while|whilst|without|but|keeping|leaving|preserving|retaining|so|at|please|then|instead|for|on|over|to|half|semi|everything|the\s+rest|otherwise|except|if)\b)";
        let lead = r"in|with|to|into|as|using|by|it|them";
        let class_end = r"(?:\s*(?:,|;|\.|\?|!|:|$)|\s+(?:and|of|on|or|otherwise|please)\b)";
        Patterns {
            class_rule: re(&format!(
                r"{col}\s+(?:if|when)\s+(?:it\s+(?:is|shows|contains|has)\s+|it's\s+|there\s+is\s+|the\s+(?:image|picture|photo)\s+(?:shows|contains|has|is)\s+|you\s+see\s+)?(?:an?\s+|the\s+)?(?P<cls>[a-z][a-z ]*?){class_end}"
            )),
            detection: re(r"\b(?:detect\w*|bounding\s+box(?:es)?|box(?:es)?\s+around|draw\s+(?:an?\s+)?\w*\s*box(?:es)?)\b"),
            segmentation: re(r"\b(?:mask\w*|overlay\w*|tint\w*|segment\w*|translucent|transparent|see-through|opacity|opaque|shad(?:e|ed|ing)|highlight\w*|colou?r\s+over|pixels?|cover\w*|fill\w*|wash\w*|mark\w*)\b"),
            disc_cue: re(&format!(
                r"\b(?:encircl\w*|surround\w*)\b|^\W*(?:please\s+)?circle\s|\bwith\s+(?:an?\s+)?(?:\S+\s+){{0,2}}{disc_noun}\b|\b(?:draw|make|put|place|create|add)\s+(?:an?\s+)?(?:\S+\s+){{0,2}}{disc_noun}\b"
            )),
            edit_words: re(r"\b(?:remove|delete|erase|get\s+rid|add|insert|put|place|draw|replace|swap|turn|change|make|transform|convert|recolou?r|paint|colou?r|dye|switch|sharpen|deblur|blur\w*|denoise|noise|grain\w*|watermark|restore|clean|fix|focus|crisp|enhance|brighten|darken|become|should\s+be|want|exchange|morph|substitute|drop|lose|strip|smooth|filter|unblur|include|introduce|sketch|stick|appear)\b"),
            color_roles: vec![
                (re(&format!(
                    r"{col}(?:\s+(?:{see}))*\s+{disc_noun}\s+{place}\b"
                )), Mark::Disc),
                (re(&format!(
                    r"\bwith\s+(?:an?\s+)?(?:(?:{see})\s+)*{col}(?:\s+(?:{see}))*\s+{disc_noun}\b"
                )), Mark::Disc),
                (re(&format!(
                    r"\b(?:draw|make|put|place|create|add|pin|show|use|using)\s+(?:an?\s+)?(?:(?:{see})\s+)*{col}(?:\s+(?:{see}))*\s+{disc_noun}\b"
                )), Mark::Disc),
                (re(&format!(
                    r"{col}(?:\s+(?:{see}))*\s+{blend_noun}\b"
                )), Mark::Blend),
                (re(&format!(
                    r"\b{blend_noun}\s+of\s+(?:(?:{see})\s+)*{col}"
                )), Mark::Blend),
                (re(&format!(r"{col}(?:\s+(?:{see}))*\s+{box_noun}")), Mark::Box),
                (re(&format!(r"\bcolou?r\s+{col}")), Mark::Neutral),
                (re(&format!(r"\bthe\s+{col}\s+colou?r\b")), Mark::Neutral),
                (re(&format!(
                    r"\b(?:in|with|to|into|as|using|it|them)\s+(?:(?:an?|{see})\s+)*{col}{end}"
                )), Mark::Neutral),
                (re(&format!(
                    r"\b(?:use|using|apply|applying|assign|overlay|choose|pick|add)\s+(?:the\s+)?{col}\s+(?:to|on|over|onto|for|as|and|around)\b"
                )), Mark::Neutral),
                (re(&format!(
                    r"^\W*(?:(?:please|just|now|lightly|gently|kindly)\s+)*(?:tint|shade|highlight|overlay|mask|mark|cover|wash)\s+(?:[^,;.?!]+?)\s+{col}{end}"
                )), Mark::Blend),
            ],
            unknown_color: re(&format!(
                r"\b(?:an?|in|with|of|it)\s+(?:(?:{see})\s+)?(?P<word>[a-z#][\w-]*)\s+(?:(?:{see})\s+)?{blend_noun}\b"
            )),
            unknown_mark_color: re(&format!(
                r"\b(?:an?|one)\s+(?P<word>[a-z#][\w-]*)\s+{disc_noun}\s+(?:on|at|over|around)\b"
            )),
            separator: re(r"\s*[;.?!]\s+|\s*,\s*(?:and\s+|then\s+)?|\s+and\s+(?:then\s+)?"),
            lead_in: re(&format!(
                r"\s+(?:{lead})(?:\s+(?:an?|the|{see}|colou?r|of|layer|{blend_noun}|half|opacity))*\s*$|\s+(?:an?|the)(?:\s+(?:{see}))*\s*$"
            )),
            stop: re(r"\s*[,;:?!]|\.(?:\s|$)|\s+(?:and\s+(?:leave|keep|maintain|let|preserve|retain|make|don't|do\s+not|nothing|everything|the\s+rest|tint|show|shade|put|draw|use|mark|circle|surround|paint|colou?r)|while|whilst|without|but|keeping|leaving|preserving|retaining|so\s+(?:that|it)|at\s+half|half[- ]|semi\b|everything|as\s+a|then|otherwise|except|please)\b"),
            blend_targets: [
                r"\bpixels\s+(?:of|belonging\s+to|that\s+belong\s+to)\s+(?P<t>.+)",
                r"^\W*(?:\w+\s+)?(?:in\s+)?(?:the\s+)?(?P<t>[^,;]+?)'s\s+pixels\b",
                r"\b(?:set|change|modify|update|colou?r|paint|mark)\s+(?:all\s+)?(?:the\s+)?(?P<t>[^,;]+?)\s+pixels\b",
                r"^\W*for\s+(?P<t>[^,]+?),",
                r"\b(?:mask|overlay|tint|layer|shade|highlight|wash|colou?ring|fill|box|rectangle)(?:e?s)?\s+(?:to|on|onto|over|for|across|around|upon)\s+(?P<t>.+)",
                r"^\W*(?:(?:please|kindly|could\s+you|can\s+you|would\s+you|now|lightly|just|gently|go\s+ahead\s+and)\s+)*(?:segment|mark|cover|highlight|mask|paint|shade|tint|colou?r|label|outline|detect|fill\s+(?:in\s+)?the\s+area\s+of|fill\s+in|fill|find|locate|select|box|give|overlay|wash|identify)\s+(?:(?:over|just|only|up)\s+)?(?P<t>.+)",
                r"\b(?:apply|assign|use|using|overlay|put|place|add|draw|paint)\s+(?:the\s+)?(?:colou?r\s+)?[#\w-]+(?:\s+colou?r)?\s+(?:to|on|over|onto|for|around)\s+(?P<t>.+)",
                r"^\W*(?:i'd\s+like|i\s+want|i\s+would\s+like|please\s+have)\s+(?P<t>.+?)\s+(?:shaded|masked|marked|covered|tinted|highlighted|painted|colou?red|boxed)\b",
                r"^\W*(?P<t>.+?)\s+(?:(?:should|must|needs\s+to|has\s+to)\s+be|gets|receives)\b",
                r"^\W*(?:(?:show|tell)\s+(?:me\s+)?)?where\s+(?P<t>.+?)\s+(?:is|are)\b",
            ]
            .iter()
            .map(|s| re(s))
            .collect(),
            point_targets: [
                &format!(r"\b{disc_noun}\s+(?:on|at|over|around|onto|upon|to|for)\s+(?P<t>.+)")[..],
                r"^\W*(?:(?:please|kindly|could\s+you|can\s+you|now|just)\s+)*(?:encircle|circle|surround|mark|pin|label|locate|find|highlight|indicate)\s+(?P<t>.+)",
                r"\b(?:encircle|circle|surround)\s+(?P<t>.+)",
            ]
            .iter()
            .map(|s| re(s))
            .collect(),
            joint: re(&format!(r"\b(?:{joints})(?:s|es)?\b")),
            owner_after: re(r"^\s*(?:of|on|for)\s+(?P<o>.+)"),
            owner_anywhere: [
                r"\b(?:keypoints|joints|body\s+parts|body)\s+of\s+(?P<o>.+?)(?::|\s+and\b|\s+are\b|\s+with\b|,)",
                r"^\W*on\s+(?P<o>.+?),",
                r"^\W*for\s+(?P<o>.+?),",
                r"^\W*find\s+(?P<o>.+?)\s+and\b",
                r"^\W*(?P<o>.+?)\s+needs\b",
            ]
            .iter()
            .map(|s| re(s))
            .collect(),
            placement: re(r"^(?:the\s+)?(?:(?:top|bottom|upper|lower|far)\s+)?(?:top|bottom|left|right|center|centre|middle|corner|edge|side|background|foreground)(?:\s+(?:left|right)?\s*(?:corner|side|edge)?)?\s*$"),
            plural: re(r"\b(?:each|every|all|both|several|many|everyone|everybody)\b"),
            politeness: re(r"^\W*(?:(?:please|kindly|could\s+you|can\s+you|would\s+you|now|just|also|then|and|use\s+\S+\s+to)\s+)+"),
        }
    })
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
            .map(|(label, color)| color.map(|(rgb, name)| label.with_color(rgb, name)))
            .collect::<Option<Vec<_>>>()
            .expect("every draft of a complete reading has a colour"),
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

type Draft = (Label, Option<([u8; 3], String)>);

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
                (label, Some(colour(&c["color"], Palette::Mask)))
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
                .filter_map(|(l, m)| Some((l?.0, Some(colour(&text[m.start..m.end], palette)))))
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
                (label, Some(colour(&text[m.start..m.end], palette)))
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

/// `clause` (absolute byte span `start..end` of `text`) without the colour phrase: the text
/// up to where the mention's lead-in starts and the text after the mention.
fn cut_at_mention(text: &str, from: usize, to: usize, m: &Mention) -> String {
    if m.start >= from && m.start < to {
        let before = &text[from..m.start];
        let before = match patterns().lead_in.find(before) {
            Some(l) => &before[..l.start()],
            None => before,
        };
        before.to_string()
    } else {
        text[from..to].to_string()
    }
}

/// Cuts a captured phrase at the first stop ("and leave the rest", "while keeping", a comma).
fn stop(s: &str) -> String {
    let s = match patterns().stop.find(s) {
        Some(m) => &s[..m.start()],
        None => s,
    };
    tidy(s)
}

/// The target phrase of a blend (or box) clause.
fn blend_phrase(text: &str, start: usize, end: usize, m: &Mention) -> Option<String> {
    let p = patterns();
    let clause = &text[start..end];
    for re in &p.blend_targets {
        let Some(c) = re.captures(clause) else {
            continue;
        };
        let t = c.name("t").unwrap();
        let phrase = stop(&cut_at_mention(text, start + t.start(), start + t.end(), m));
        let phrase = strip_lead(&phrase);
        if !phrase.is_empty() && !is_pronoun(&phrase) {
            return Some(phrase);
        }
    }
    // "and the dog in blue": what stands before the colour.
    let before = cut_at_mention(text, start, end, m);
    let before = p.politeness.replace(&before, "");
    let phrase = strip_lead(&stop(&before));
    (!phrase.is_empty() && !is_pronoun(&phrase) && before.len() < clause.len()).then_some(phrase)
}

/// Drops a leading "the colour phrase" leftover ("a blue mask" ... already cut) and verbs the
/// fallback may keep.
fn strip_lead(s: &str) -> String {
    let s = s.trim();
    let s = s
        .strip_prefix("and ")
        .or_else(|| s.strip_prefix("And "))
        .unwrap_or(s);
    tidy(s)
}

fn is_pronoun(s: &str) -> bool {
    matches!(
        s.to_lowercase().as_str(),
        "it" | "its"
            | "their"
            | "his"
            | "her"
            | "them"
            | "this"
            | "that"
            | "its pixels"
            | "the pixels"
            | "pixels"
            | "the rest"
    )
}

fn is_plural(phrase: &str) -> bool {
    let head = head_noun(phrase);
    let last = phrase
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .take_while(|w| !HEAD_STOP.contains(&w.as_str()))
        .last()
        .unwrap_or_default();
    !last.is_empty() && last != head && last != "ss"
}

/// The owner every clause shares when a clause names none ("... of the person on the left",
/// "Mark the keypoints of the man: ...", "On the woman, draw ...").
fn instruction_owner(text: &str, clauses: &[(usize, usize)]) -> Option<String> {
    let p = patterns();
    let last = clauses.last()?;
    let tail = &text[last.0..last.1];
    // The last clause's owner, after its point.
    if let Some(j) = p.joint.find_iter(tail).last() {
        if let Some(c) = p.owner_after.captures(&tail[j.end()..]) {
            return Some(stop(&c["o"]));
        }
    }
    p.owner_anywhere
        .iter()
        .find_map(|re| re.captures(text).map(|c| tidy(&c["o"])))
}

/// The point (joint or part) of a keypoint clause, its owner and its category. None when the
/// circle is placed somewhere rather than on something ("a red circle at the top").
fn point_label(
    text: &str,
    start: usize,
    end: usize,
    m: &Mention,
    shared_owner: Option<&str>,
) -> Option<(Label, Option<String>)> {
    let p = patterns();
    let clause = &text[start..end];
    let words = joint_words();
    // A known joint anywhere in the clause outside the colour phrase.
    let joint = p
        .joint
        .find_iter(clause)
        .find(|j| start + j.end() <= m.start || start + j.start() >= m.end);
    let (part, keypoint, mut owner) = if let Some(j) = joint {
        let written = j
            .as_str()
            .split(|c: char| c.is_whitespace() || c == '_')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        let written = if words.iter().any(|(w, _)| *w == written) {
            written
        } else {
            // "left knees", "noses": the plural of a joint.
            let one = written.strip_suffix('s').unwrap_or(&written);
            one.strip_suffix('e')
                .filter(|w| words.iter().any(|(k, _)| k == w))
                .unwrap_or(one)
                .to_string()
        };
        let name = words
            .iter()
            .find(|(w, _)| *w == written)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| written.replace(' ', "_"));
        let after = cut_at_mention(text, start + j.end(), end, m);
        let owner = p
            .owner_after
            .captures(&after)
            .map(|c| stop(&c["o"]))
            .or_else(|| possessive_owner(&clause[..j.start()]))
            .filter(|o| !o.is_empty());
        (written, name, owner)
    } else {
        let t = p.point_targets.iter().find_map(|re| {
            re.captures(clause)
                .map(|c| (c.name("t").unwrap().start(), c))
        })?;
        let (t_start, c) = t;
        let t_end = t_start + c["t"].len();
        let phrase = stop(&cut_at_mention(text, start + t_start, start + t_end, m));
        let phrase = drop_article(&phrase);
        if phrase.is_empty() || p.placement.is_match(&phrase) {
            return None;
        }
        split_part(&phrase)
    };
    if owner.as_deref().is_some_and(is_pronoun) {
        owner = None;
    }
    let own = owner.clone();
    let owner = owner.or_else(|| shared_owner.map(str::to_string));
    let several = owner
        .as_deref()
        .is_some_and(|o| p.plural.is_match(o) || is_plural(o))
        || p.plural.is_match(clause);
    let category = match &owner {
        Some(o) => head_noun(o),
        None if is_person_joint(&keypoint) => "person".into(),
        None => "object".into(),
    };
    let label = Label {
        phrase: part,
        category,
        keypoint: Some(keypoint),
        several,
    };
    Some((label, own))
}

/// The owner named with a possessive just before a point: "on the man's " -> "the man",
/// "each person's " -> "each person".
fn possessive_owner(before: &str) -> Option<String> {
    let before = before.trim_end();
    let stem = before
        .strip_suffix("'s")
        .or_else(|| before.strip_suffix("s'"))
        .or_else(|| before.strip_suffix("\u{2019}s"))?;
    const CUT: &[&str] = &[
        "on", "at", "around", "over", "to", "for", "of", "onto", "upon", "circle", "circles",
        "dot", "dots", "mark", "encircle", "surround",
    ];
    let words: Vec<&str> = stem.split_whitespace().collect();
    let from = words
        .iter()
        .rposition(|w| CUT.contains(&w.to_lowercase().as_str()))
        .map_or(0, |i| i + 1);
    let owner = words[from..].join(" ");
    (!owner.is_empty()).then_some(owner)
}

/// "tip of the star" -> ("tip", "tip", Some("the star")); "the car logo" -> ("car logo",
/// "logo", Some("car")); "each person's nose" is handled by the joint path.
fn split_part(phrase: &str) -> (String, String, Option<String>) {
    const PARTS: &[&str] = &[
        "logo",
        "eye",
        "eyes",
        "nose",
        "ear",
        "ears",
        "mouth",
        "tip",
        "wheel",
        "handle",
        "head",
        "tail",
        "beak",
        "paw",
        "wing",
        "fin",
        "horn",
        "door",
        "window",
        "light",
        "headlight",
        "plate",
        "top",
        "bottom",
        "corner",
        "centre",
        "center",
        "hand",
        "foot",
        "leg",
        "arm",
        "shoulder",
        "knee",
        "neck",
        "hat",
        "button",
        "point",
        "peak",
        "end",
        "base",
        "cap",
    ];
    if let Some((part, owner)) = phrase.split_once(" of ") {
        let part = drop_article(part);
        return (
            part.clone(),
            part.replace(' ', "_"),
            Some(owner.trim().to_string()),
        );
    }
    if let Some((owner, part)) = phrase.split_once("'s ") {
        let part = drop_article(part);
        return (
            part.clone(),
            part.replace(' ', "_"),
            Some(owner.trim().to_string()),
        );
    }
    let words: Vec<&str> = phrase.split_whitespace().collect();
    if let [owner @ .., last] = &words[..] {
        if !owner.is_empty() && PARTS.contains(&last.to_lowercase().as_str()) {
            return (
                phrase.to_string(),
                last.to_lowercase(),
                Some(owner.join(" ")),
            );
        }
    }
    (phrase.to_string(), phrase.replace(' ', "_"), None)
}

fn drop_article(s: &str) -> String {
    let s = s.trim();
    for a in ["the ", "a ", "an ", "The ", "A ", "An "] {
        if let Some(rest) = s.strip_prefix(a) {
            return rest.trim().to_string();
        }
    }
    s.to_string()
}

/// Drops trailing punctuation and politeness.
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

const HEAD_STOP: &[&str] = &[
    "of", "on", "in", "at", "with", "that", "which", "who", "near", "to", "from", "behind",
    "under", "above", "below", "beside", "next", "wearing", "holding", "closest", "nearest",
];

/// "the person on the right" -> "person"; "all triangles" -> "triangle".
pub fn head_noun(phrase: &str) -> String {
    let words: Vec<String> = phrase
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric() && c != '-')
                .to_lowercase()
        })
        .take_while(|w| !HEAD_STOP.contains(&w.as_str()))
        .filter(|w| !w.is_empty())
        .collect();
    let Some(last) = words.last() else {
        return "object".into();
    };
    let last = last.strip_suffix("'s").unwrap_or(last);
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
    if w.ends_with('s') && !w.ends_with("ss") && !w.ends_with("us") && w.len() > 3 {
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
                // "Colour the X's pixels": the template's own article may go with it.
                let bare = |s: &str| s.trim_start_matches("the ").to_string();
                assert_eq!(bare(&t.phrase.to_lowercase()), bare(phrase), "{text}");
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

    /// Sentences in the structures InstructDiffusion's segmentation data is written in (the
    /// object lower-cased, the colour from its table), with this crate's own wording.
    const SEG_STRUCTURES: &[&str] = &[
        "Mark the pixels of {object} in {color} and keep everything else as it is.",
        "Colour the {object}'s pixels in {color}, leaving the other pixels alone.",
        "Apply {color} to the pixels of {object} while keeping the others as they are.",
        "Assign {color} to the pixels belonging to {object}, keeping the rest unchanged.",
        "Assign {color} to the pixels that belong to {object} and nothing else.",
        "For {object}, set its pixels to {color} and let the rest stay as they are.",
        "Modify the pixels of {object} to {color} without touching any other pixel.",
        "Set the {object} pixels to {color} and keep the other pixels in their first state.",
        "Update the pixels of {object} to {color}, but leave the others unchanged.",
        "Fill in the pixels of {object} with {color}, keeping the other colours.",
        "Change the {object} pixels to {color}, while the others stay constant.",
        "Paint the pixels of {object} in {color} and keep the look of the other pixels.",
    ];

    /// Pose clauses in the released model's structures: one joint each, ending in ", ".
    const POSE_STRUCTURES: &[&str] = &[
        "Circle the {joint} of the people with the color {color}, ",
        "Use the {color} color to draw circles around the {joint} of the people, ",
        "Make {color} circles around the {joint} of the people, ",
        "Put {color} circles on the {joint} of the people, ",
        "Draw {color} circles over the {joint} of the people, ",
        "Surround the {joint} of the people with {color} circles, ",
        "Use the color {color} to make circles on the {joint} of the people, ",
        "Mark the {joint} of the people with {color} circles, ",
        "Create {color} circles around the {joint} of the people, ",
        "Use the color {color} to encircle the {joint} of the people, ",
    ];

    const OBJECTS: &[(&str, &str)] = &[
        ("dining table", "table"),
        ("sky-other", "sky-other"),
        ("the man in the red shirt", "man"),
        ("teddy bear", "bear"),
        ("person", "person"),
    ];

    #[test]
    fn official_segmentation_structures_read_with_every_table_colour() {
        use crate::tasks::MASK_COLORS;
        for (i, tpl) in SEG_STRUCTURES.iter().enumerate() {
            for (j, (object, head)) in OBJECTS.iter().enumerate() {
                let c = &MASK_COLORS[(i + j) % MASK_COLORS.len()];
                let text = fill(tpl, &[("object", object), ("color", c.name)]);
                let p = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
                assert_eq!(p.kind, Kind::Segmentation, "{text}");
                let t = one(&text);
                assert_eq!(t.phrase, *object, "{text}");
                assert_eq!(t.category, *head, "{text}");
                assert_eq!(t.color, c.rgb, "{text}");
            }
        }
    }

    #[test]
    fn official_pose_clauses_joined_read_one_point_each() {
        use crate::tasks::KEYPOINT_COLORS;
        let joints = [
            ("left wrist", "left_wrist"),
            ("left_wrist", "left_wrist"),
            ("right ankle", "right_ankle"),
            ("top_head", "head_top"),
            ("neck", "neck"),
            ("nose", "nose"),
            ("right_shoulder", "right_shoulder"),
        ];
        for n in 1..=5 {
            for start in 0..POSE_STRUCTURES.len() {
                let mut text = String::new();
                let mut want = vec![];
                for k in 0..n {
                    let tpl = POSE_STRUCTURES[(start + k * 3) % POSE_STRUCTURES.len()];
                    let (written, name) = joints[(start + k) % joints.len()];
                    let c = &KEYPOINT_COLORS[(start + 2 * k) % KEYPOINT_COLORS.len()];
                    text += &fill(tpl, &[("joint", written), ("color", c.name)]);
                    want.push((name.to_string(), c.rgb, "person".to_string(), true));
                }
                let p = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
                assert_eq!(p.kind, Kind::Keypoints, "{text}");
                let got: Vec<_> = p
                    .targets
                    .iter()
                    .map(|t| {
                        (
                            t.keypoint.clone().unwrap(),
                            t.color,
                            t.category.clone(),
                            t.several,
                        )
                    })
                    .collect();
                assert_eq!(got, want, "{text}");
            }
        }
    }

    /// The paper's printed instruction structures, with other objects and colours.
    #[test]
    fn paper_structures() {
        let t = one("Paint the pixels of puddle in yellow and maintain the current look of the other pixels.");
        assert_eq!((t.phrase.as_str(), t.color), ("puddle", [255, 255, 0]));
        let p = parse("Please use green to encircle the right knee of the woman.").unwrap();
        assert_eq!(p.kind, Kind::Keypoints);
        let t = &p.targets[0];
        assert_eq!(
            (t.keypoint.as_deref(), t.category.as_str(), t.color),
            (Some("right_knee"), "woman", [0, 255, 0])
        );
        let t = one("Mark the bus logo with a red circle.");
        assert_eq!(
            (t.keypoint.as_deref(), t.category.as_str(), t.color),
            (Some("logo"), "bus", [255, 0, 0])
        );
        let t = one("Create a cyan circle around the left eye of the dolphin.");
        assert_eq!(
            (t.keypoint.as_deref(), t.category.as_str(), t.color),
            (Some("left_eye"), "dolphin", [0, 255, 255])
        );
        let p = parse("Put a red circle on the nose of the brown bear and use the blue color to draw a circle around the right shoulder of the brown bear.").unwrap();
        let got: Vec<_> = p
            .targets
            .iter()
            .map(|t| (t.keypoint.clone().unwrap(), t.category.clone(), t.color))
            .collect();
        assert_eq!(
            got,
            [
                ("nose".to_string(), "bear".to_string(), [255, 0, 0]),
                (
                    "right_shoulder".to_string(),
                    "bear".to_string(),
                    [0, 0, 255]
                )
            ]
        );
    }

    #[test]
    fn free_phrasings() {
        let cases: &[(&str, Kind, &str, [u8; 3], bool)] = &[
            (
                "Shade the car green, half see-through, the rest as it was.",
                Kind::Segmentation,
                "car",
                [0, 128, 0],
                false,
            ),
            (
                "tint the lamp purple",
                Kind::Segmentation,
                "lamp",
                [128, 0, 128],
                false,
            ),
            (
                "Overlay gray on the sofa.",
                Kind::Segmentation,
                "sofa",
                [128, 128, 128],
                false,
            ),
            (
                "Could you cover the horse with white? Nothing else should change.",
                Kind::Segmentation,
                "horse",
                [255, 255, 255],
                false,
            ),
            (
                "Highlight the kites in black",
                Kind::Segmentation,
                "kite",
                [0, 0, 0],
                true,
            ),
            (
                "Fill the road with blue at half opacity.",
                Kind::Segmentation,
                "road",
                [0, 0, 255],
                false,
            ),
            (
                "Put a yellow dot on each person's nose.",
                Kind::Keypoints,
                "person",
                [255, 255, 0],
                true,
            ),
            (
                "Put a red ring on both players' left knees.",
                Kind::Keypoints,
                "player",
                [255, 0, 0],
                true,
            ),
            (
                "Draw a magenta box around every cup.",
                Kind::Detection,
                "cup",
                [255, 0, 255],
                true,
            ),
        ];
        for (text, kind, category, rgb, several) in cases {
            let p = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(p.kind, *kind, "{text}");
            let t = one(text);
            assert_eq!(
                (t.category.as_str(), t.color, t.several),
                (*category, *rgb, *several),
                "{text}: {t:?}"
            );
        }
        // A circle placed somewhere is an edit that adds one, not a keypoint.
        assert_eq!(
            parse("Add a red circle at the top.").unwrap().kind,
            Kind::Edit
        );
        assert_eq!(
            parse("Put a blue circle on the left.").unwrap().kind,
            Kind::Edit
        );
        assert!(hints("Remove the dog").edit);
        let h = hints("Segment the dog.");
        assert_eq!(h.kind, Some(Kind::Segmentation));
        assert_eq!(h.labels[0].category, "dog");
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
