//! The reader's vocabulary: how overlay colours, marks, joints and owners are written, as
//! regular expressions built once.

use std::sync::OnceLock;

use regex::Regex;

use super::super::color;
use crate::data::person::KEYPOINT_NAMES;

/// How a colour mention says what is drawn in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mark {
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
pub(super) struct Mention {
    pub start: usize,
    pub end: usize,
    pub mark: Mark,
}

pub(super) struct Patterns {
    pub class_rule: Regex,
    pub detection: Regex,
    pub segmentation: Regex,
    pub disc_cue: Regex,
    pub edit_words: Regex,
    pub color_roles: Vec<(Regex, Mark)>,
    pub unknown_color: Regex,
    pub unknown_mark_color: Regex,
    pub separator: Regex,
    pub lead_in: Regex,
    pub stop: Regex,
    pub blend_targets: Vec<Regex>,
    pub point_targets: Vec<Regex>,
    pub joint: Regex,
    pub owner_after: Regex,
    pub owner_anywhere: Vec<Regex>,
    pub placement: Regex,
    pub plural: Regex,
    pub politeness: Regex,
}

/// Person joints as written (with a space or an underscore), longest first, with the name each
/// is exported as: COCO's 17, then the other datasets' joints the released model was trained
/// on (CrowdPose's and AI Challenger's neck and head top, MPII's thorax, pelvis, upper neck),
/// and hands and feet for wrists and ankles.
pub(super) fn joint_words() -> Vec<(String, String)> {
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

pub(super) fn patterns() -> &'static Patterns {
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
