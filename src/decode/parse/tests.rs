//! The reader on this crate's templates, InstructDiffusion's structures, the paper's and free
//! phrasings.

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
    let p = parse("Apply a blue mask to the left dog and a red mask to the right dog.").unwrap();
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
    let t = one(
        "Paint the pixels of puddle in yellow and maintain the current look of the other pixels.",
    );
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
