//! Per clause: the target phrase (segmentation) or the point and its owner (keypoints), and
//! the small word helpers they share.

use super::patterns::{joint_words, patterns, Mention};
use super::Label;

/// `clause` (absolute byte span `start..end` of `text`) without the colour phrase: the text
/// up to where the mention's lead-in starts and the text after the mention.
pub(super) fn cut_at_mention(text: &str, from: usize, to: usize, m: &Mention) -> String {
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
pub(super) fn stop(s: &str) -> String {
    let s = match patterns().stop.find(s) {
        Some(m) => &s[..m.start()],
        None => s,
    };
    tidy(s)
}

/// The target phrase of a blend (or box) clause.
pub(super) fn blend_phrase(text: &str, start: usize, end: usize, m: &Mention) -> Option<String> {
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
pub(super) fn strip_lead(s: &str) -> String {
    let s = s.trim();
    let s = s
        .strip_prefix("and ")
        .or_else(|| s.strip_prefix("And "))
        .unwrap_or(s);
    tidy(s)
}

pub(super) fn is_pronoun(s: &str) -> bool {
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

pub(super) fn is_plural(phrase: &str) -> bool {
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
pub(super) fn instruction_owner(text: &str, clauses: &[(usize, usize)]) -> Option<String> {
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
pub(super) fn point_label(
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
pub(super) fn possessive_owner(before: &str) -> Option<String> {
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
pub(super) fn split_part(phrase: &str) -> (String, String, Option<String>) {
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
    // "X of Y" and "Y's X": the part X of the owner Y.
    let named = phrase
        .split_once(" of ")
        .or_else(|| phrase.split_once("'s ").map(|(owner, part)| (part, owner)));
    if let Some((part, owner)) = named {
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

pub(super) fn drop_article(s: &str) -> String {
    let s = s.trim();
    for a in ["the ", "a ", "an ", "The ", "A ", "An "] {
        if let Some(rest) = s.strip_prefix(a) {
            return rest.trim().to_string();
        }
    }
    s.to_string()
}

/// Drops trailing punctuation and politeness.
pub(super) fn tidy(s: &str) -> String {
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

pub(super) const HEAD_STOP: &[&str] = &[
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

pub(super) fn singular(w: &str) -> String {
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
