//! Instructions as typed, read against answers drawn the way InstructDiffusion's training code
//! draws them: a 50% blend over the mask (the blend cast down to 8 bits), opaque discs of
//! radius 10 at 256 px (scaled) centred on the rounded joint. Each answer is then disturbed as a
//! model's would be: the drawn colour drifts, noise, JPEG at quality 75. The sentences are this
//! project's own, written in the released model's structures, the paper's and free ones.

use std::path::Path;

use image::RgbImage;
use instructdiffusion::decode::parse::Kind;
use instructdiffusion::decode::phrasings::{blend, blobs, disc, disturb, drift, owners};
use instructdiffusion::decode::quality::square;
use instructdiffusion::decode::{read, DecodeError, Reading, Source};
use instructdiffusion::tasks::{fill, official, KEYPOINT_COLORS, MASK_COLORS};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn photos(size: u32) -> Vec<RgbImage> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples");
    ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
        .iter()
        .map(|f| square(&image::open(dir.join(f)).unwrap().to_rgb8(), size))
        .collect()
}

fn rgb(name: &str, keypoint: bool) -> [u8; 3] {
    let table = if keypoint {
        &KEYPOINT_COLORS[..]
    } else {
        &MASK_COLORS[..]
    };
    table.iter().find(|c| c.name == name).unwrap().rgb
}

fn iou(a: &[bool], b: &[bool]) -> f64 {
    let inter = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let union = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    inter as f64 / union.max(1) as f64
}

/// Reads `text` against `photo` with `masks` blended in `color` and checks the instances.
fn check_masks(
    photo: &RgbImage,
    text: &str,
    color: [u8; 3],
    masks: &[Vec<bool>],
    rng: &mut ChaCha8Rng,
) -> Reading {
    let mut out = photo.clone();
    let k = drift(rng, color);
    masks.iter().for_each(|m| blend(&mut out, m, k));
    let out = disturb(&out, rng);
    let r = read(photo, &out, text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let d = &r.decoded;
    assert!(
        matches!(d.kind, Kind::Segmentation | Kind::Detection),
        "{text}: {:?}",
        d.kind
    );
    assert_eq!(
        d.instances.len(),
        masks.len(),
        "{text}: instances {:?}",
        d.instances
            .iter()
            .map(|i| (i.color, i.area))
            .collect::<Vec<_>>()
    );
    for m in masks {
        let best = d
            .instances
            .iter()
            .map(|i| iou(&i.mask, m))
            .fold(0.0, f64::max);
        assert!(best >= 0.95, "{text}: IoU {best:.3}");
    }
    r
}

#[test]
fn released_segmentation_structures_decode_on_drawn_answers() {
    let mut rng = ChaCha8Rng::seed_from_u64(25);
    let objects = [
        "dining table",
        "person",
        "the man in the red shirt",
        "sky-other",
    ];
    for (size, photos) in [(256, photos(256)), (512, photos(512))] {
        for (i, tpl) in official::SEGMENT.iter().enumerate() {
            let photo = &photos[i % photos.len()];
            let name = official::SEGMENT_COLORS[(i + size as usize / 256) % 8];
            let object = objects[i % objects.len()];
            let text = fill(tpl, &[("target", object), ("color", name)]);
            // "person" in a semantic map covers every person: several regions.
            let n = if object == "person" { 3 } else { 1 };
            let masks = blobs(&mut rng, photo, rgb(name, false), n);
            let r = check_masks(photo, &text, rgb(name, false), &masks, &mut rng);
            assert_eq!(r.source, Source::Words, "{text}");
            let want = match object {
                "dining table" => "table",
                "the man in the red shirt" => "man",
                o => o,
            };
            assert_eq!(r.decoded.instances[0].category, want, "{text}");
        }
    }
}

#[test]
fn released_pose_clauses_decode_every_point_of_every_person() {
    let mut rng = ChaCha8Rng::seed_from_u64(26);
    let joints = ["nose", "left_wrist", "right ankle", "top_head", "neck"];
    for (size, photos) in [(256u32, photos(256)), (512, photos(512))] {
        let r = (10 * size / 256) as i32;
        for case in 0..8usize {
            let photo = &photos[case % photos.len()];
            let n_joints = 1 + case % 5;
            let n_people = 1 + case % 3;
            let colours: Vec<&str> = (0..n_joints)
                .map(|j| official::POSE_COLORS[(case + 2 * j) % 9])
                .collect();
            let marks: Vec<(&str, &str)> = (0..n_joints)
                .map(|j| (joints[(case + j) % joints.len()], colours[j]))
                .collect();
            let text = official::pose(&marks, "the people", |j| case + 3 * j);
            let mut out = photo.clone();
            let mut truth = vec![];
            let table: Vec<[u8; 3]> = colours.iter().map(|c| rgb(c, true)).collect();
            for (p, joints) in owners(&mut rng, photo, &table, n_people, r)
                .into_iter()
                .enumerate()
            {
                for (&(x, y), k) in joints.iter().zip(&table) {
                    let drawn = drift(&mut rng, *k);
                    truth.push((p, *k, disc(&mut out, x, y, r, drawn)));
                }
            }
            let out = disturb(&out, &mut rng);
            let d = read(photo, &out, &text)
                .unwrap_or_else(|e| panic!("{text}: {e}"))
                .decoded;
            assert_eq!(d.kind, Kind::Keypoints, "{text}");
            assert_eq!(d.keypoints.len(), truth.len(), "{text}: {:?}", d.keypoints);
            let mut owner_of = vec![None; n_people];
            for (person, k, (x, y)) in &truth {
                let p = d
                    .keypoints
                    .iter()
                    .filter(|p| p.color == *k)
                    .min_by(|a, b| ((a.x - x).hypot(a.y - y)).total_cmp(&(b.x - x).hypot(b.y - y)))
                    .unwrap();
                let e = (p.x - x).hypot(p.y - y);
                assert!(e <= 1.5, "{text}: {} off by {e:.2} px", p.name);
                assert_eq!(p.category, "person", "{text}");
                // One person's points share an instance, and no one else's do.
                let owner = *owner_of[*person].get_or_insert(p.instance);
                assert_eq!(p.instance, owner, "{text}: person {person}");
            }
            let mut owners: Vec<_> = owner_of.into_iter().flatten().collect();
            owners.dedup();
            assert_eq!(owners.len(), n_people, "{text}");
        }
    }
}

/// One disc per `(instruction, colour)` for the paper's keypoint structures, with the owner
/// category and point name each should export under.
#[test]
fn paper_structures_decode_with_their_owners() {
    let mut rng = ChaCha8Rng::seed_from_u64(27);
    let photo = &photos(256)[1];
    let seg =
        "Paint the pixels of puddle in yellow and maintain the current look of the other pixels.";
    let masks = blobs(&mut rng, photo, rgb("yellow", false), 1);
    check_masks(photo, seg, rgb("yellow", false), &masks, &mut rng);
    type Points<'a> = &'a [(&'a str, &'a str, &'a str)];
    let cases: &[(&str, Points)] = &[
        (
            "Please use green to encircle the right knee of the woman.",
            &[("green", "woman", "right_knee")],
        ),
        ("Mark the bus logo with a red circle.", &[("red", "bus", "logo")]),
        (
            "Create a cyan circle around the left eye of the dolphin.",
            &[("cyan", "dolphin", "left_eye")],
        ),
        (
            "Put a red circle on the nose of the brown bear and use the blue color to draw a circle around the right shoulder of the brown bear.",
            &[("red", "bear", "nose"), ("blue", "bear", "right_shoulder")],
        ),
    ];
    for (text, want) in cases {
        let mut out = photo.clone();
        let mut truth = vec![];
        for (i, (c, ..)) in want.iter().enumerate() {
            let k = drift(&mut rng, rgb(c, true));
            truth.push(disc(&mut out, 70.0 + 110.0 * i as f32, 90.0, 10, k));
        }
        let out = disturb(&out, &mut rng);
        let d = read(photo, &out, text).unwrap().decoded;
        let got: Vec<_> = d
            .keypoints
            .iter()
            .map(|p| (p.category.as_str(), p.name.as_str()))
            .collect();
        let expect: Vec<_> = want.iter().map(|(_, o, n)| (*o, *n)).collect();
        assert_eq!(got, expect, "{text}");
        for (p, (x, y)) in d.keypoints.iter().zip(&truth) {
            assert!((p.x - x).hypot(p.y - y) <= 1.5, "{text}");
        }
        // Both points belong to one bear.
        assert!(d
            .keypoints
            .iter()
            .all(|p| p.instance == d.keypoints[0].instance));
    }
}

#[test]
fn free_phrasings_decode() {
    let mut rng = ChaCha8Rng::seed_from_u64(28);
    let photo = &photos(256)[0];
    let blends: &[(&str, &str, usize)] = &[
        (
            "Shade the car green, half see-through, the rest as it was.",
            "green",
            1,
        ),
        ("tint the lamp purple", "purple", 1),
        ("Overlay gray on the sofa.", "gray", 1),
        (
            "Could you cover the horse with white? Nothing else should change.",
            "white",
            1,
        ),
        ("Highlight all the kites in black", "black", 3),
        ("Segment both players in blue.", "blue", 2),
    ];
    for (text, c, n) in blends {
        let masks = blobs(&mut rng, photo, rgb(c, false), *n);
        check_masks(photo, text, rgb(c, false), &masks, &mut rng);
    }
    // "each person's nose": three dots of one colour are three points, three people.
    let text = "Put a yellow dot on each person's nose.";
    let mut out = photo.clone();
    for i in 0..3 {
        disc(
            &mut out,
            50.0 + 75.0 * i as f32,
            60.0 + 60.0 * i as f32,
            10,
            [250, 250, 10],
        );
    }
    let d = read(photo, &disturb(&out, &mut rng), text).unwrap().decoded;
    assert_eq!(d.keypoints.len(), 3, "{text}");
    let mut inst: Vec<_> = d.keypoints.iter().map(|p| p.instance).collect();
    inst.dedup();
    assert_eq!(inst.len(), 3, "{text}");
}

/// Where the words name no colour, or are not English, the pixels say what is drawn.
#[test]
fn pixels_decide_where_the_words_do_not() {
    let mut rng = ChaCha8Rng::seed_from_u64(29);
    let photos = photos(256);
    for (i, name) in official::SEGMENT_COLORS.iter().enumerate() {
        let photo = &photos[i % 4];
        for text in [
            "Segment the dog.",
            "把狗涂成半透明的颜色",
            "Apply a blurple mask to the dog",
        ] {
            let masks = blobs(&mut rng, photo, rgb(name, false), 1 + i % 2);
            let r = check_masks(photo, text, rgb(name, false), &masks, &mut rng);
            assert_eq!(r.source, Source::Pixels, "{text}");
            let inst = &r.decoded.instances[0];
            let want = if text.starts_with('把') {
                "object"
            } else {
                "dog"
            };
            assert_eq!(inst.category, want, "{text} in {name}");
            let k = rgb(name, false);
            let off = (0..3)
                .map(|c| (inst.color[c] as i32 - k[c] as i32).abs())
                .max()
                .unwrap();
            assert!(off <= 40, "{text} in {name}: read as {:?}", inst.color);
        }
    }
    // Discs with no colour named: keypoints.
    let photo = &photos[2];
    let mut out = photo.clone();
    let truth = [
        disc(&mut out, 60.0, 70.0, 10, [0, 250, 250]),
        disc(&mut out, 180.0, 150.0, 10, [0, 250, 250]),
    ];
    let r = read(
        photo,
        &disturb(&out, &mut rng),
        "Mark the noses of the people.",
    )
    .unwrap();
    assert_eq!(
        (r.source, r.decoded.kind),
        (Source::Pixels, Kind::Keypoints)
    );
    assert_eq!(r.decoded.keypoints.len(), 2);
    for (x, y) in truth {
        assert!(r
            .decoded
            .keypoints
            .iter()
            .any(|p| (p.x - x).hypot(p.y - y) <= 1.5));
    }
}

/// Untouched photos through the same disturbance: no annotation, whatever was asked; where the
/// words found nothing either, a clear error that says both were looked at.
#[test]
fn untouched_photos_get_no_annotation() {
    let mut rng = ChaCha8Rng::seed_from_u64(30);
    let texts = [
        "Mark the pixels of cat in white and keep the rest unchanged.",
        "Set all pixels of road to black and keep the other pixels in their first state.",
        "Put gray circles on the neck of the people, Circle the nose of the people with the color white, ",
        "Segment the dog.",
        "把狗涂成蓝色",
        "Make it look like winter.",
    ];
    for photo in photos(256).iter().chain(&photos(512)) {
        for text in texts {
            let out = disturb(photo, &mut rng);
            match read(photo, &out, text) {
                Ok(r) => assert!(
                    r.decoded.instances.is_empty() && r.decoded.keypoints.is_empty(),
                    "{text}: {:?} {:?}",
                    r.parsed,
                    r.decoded.keypoints
                ),
                Err(e @ DecodeError::NothingToDecode { .. }) => {
                    let m = e.to_string();
                    assert!(m.contains("pixels show no overlay"), "{m}");
                }
                Err(e) => panic!("{text}: {e}"),
            }
        }
    }
}
