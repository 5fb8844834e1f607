//! How many instructions of each phrasing set the reader decodes right, on answers drawn the
//! way InstructDiffusion's training code draws them: a 50% blend over the mask (cast down to 8
//! bits), opaque discs of radius 10 at 256 px (scaled) centred on the rounded point. Each
//! answer is then disturbed as a model's would be: the drawn colour off by up to 20 levels a
//! channel, noise (sigma 4), JPEG at quality 75. Marks are placed where they can show (a black
//! mask over a black background shows nothing to any reader). Used by
//! `instructdiffusion bench --decode` (the docs' table) and by the tests (its drawing helpers).

use image::RgbImage;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::read;
use crate::tasks::{fill, official, Task, KEYPOINT_COLORS, MASK_COLORS};

/// `out = 0.5 src + 0.5 k` inside `mask`, cast down to 8 bits as numpy does.
pub fn blend(img: &mut RgbImage, mask: &[bool], k: [u8; 3]) {
    for (p, m) in img.pixels_mut().zip(mask) {
        if *m {
            for c in 0..3 {
                p[c] = (0.5 * p[c] as f32 + 0.5 * k[c] as f32) as u8;
            }
        }
    }
}

/// The training code's disc: centre `int(x + 0.5)`, every pixel with `dx^2 + dy^2 <= r^2 + 1`
/// painted `k`. Returns the centre in continuous coordinates (pixel `i` spans `[i, i + 1)`).
pub fn disc(img: &mut RgbImage, x: f32, y: f32, r: i32, k: [u8; 3]) -> (f64, f64) {
    let (mx, my) = ((x + 0.5) as i32, (y + 0.5) as i32);
    for dy in -r..=r {
        for dx in -r..=r {
            let (px, py) = (mx + dx, my + dy);
            let inside =
                px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height();
            if dx * dx + dy * dy <= r * r + 1 && inside {
                img.put_pixel(px as u32, py as u32, image::Rgb(k));
            }
        }
    }
    (mx as f64 + 0.5, my as f64 + 0.5)
}

/// The pixels [`disc`] paints.
pub fn disc_mask(w: u32, h: u32, x: f32, y: f32, r: i32) -> Vec<bool> {
    let mut img = RgbImage::new(w, h);
    disc(&mut img, x, y, r, [255, 255, 255]);
    img.pixels().map(|p| p[0] > 0).collect()
}

/// An ellipse (pixel centres inside) at `(cx, cy)` with radii `(rx, ry)`.
pub fn ellipse(w: u32, h: u32, cx: f32, cy: f32, rx: f32, ry: f32) -> Vec<bool> {
    (0..w * h)
        .map(|i| {
            let (x, y) = ((i % w) as f32 + 0.5, (i / w) as f32 + 0.5);
            ((x - cx) / rx).powi(2) + ((y - cy) / ry).powi(2) <= 1.0
        })
        .collect()
}

/// Whether a mark of colour `k` over `mask` shows: at most 3% of its pixels are within 50
/// levels of `k` already (the keypoint decoder's least contrast).
pub fn visible(photo: &RgbImage, mask: &[bool], k: [u8; 3]) -> bool {
    let (mut n, mut hidden) = (0, 0);
    for (p, m) in photo.pixels().zip(mask) {
        if *m {
            n += 1;
            let d2: i32 = (0..3).map(|c| (p[c] as i32 - k[c] as i32).pow(2)).sum();
            hidden += (d2 < 50 * 50) as usize;
        }
    }
    hidden * 100 <= 3 * n
}

/// The drawn colour, off by up to 20 levels a channel.
pub fn drift(rng: &mut impl Rng, k: [u8; 3]) -> [u8; 3] {
    k.map(|v| (v as i32 + rng.random_range(-20..=20)).clamp(0, 255) as u8)
}

/// Noise (sigma 4 levels) and JPEG at quality 75.
pub fn disturb(img: &RgbImage, rng: &mut impl Rng) -> RgbImage {
    let noise = Normal::new(0.0f32, 4.0).unwrap();
    let mut out = img.clone();
    for p in out.pixels_mut() {
        for c in 0..3 {
            p[c] = (p[c] as f32 + noise.sample(rng)).round().clamp(0.0, 255.0) as u8;
        }
    }
    let mut bytes = vec![];
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 75)
        .encode_image(&out)
        .expect("in-memory JPEG");
    image::load_from_memory(&bytes).expect("own JPEG").to_rgb8()
}

/// `n` things at centres apart by more than `apart` of the side, each made by `make` from
/// its centre and the side, or refused (`None`: placed elsewhere).
fn place<R: Rng, T>(
    rng: &mut R,
    (w, h): (u32, u32),
    n: usize,
    apart: f32,
    mut make: impl FnMut(&mut R, (f32, f32), f32) -> Option<T>,
) -> Vec<T> {
    let s = w.min(h) as f32;
    let mut centres: Vec<(f32, f32)> = vec![];
    let mut made = vec![];
    while made.len() < n {
        let c = (
            rng.random_range(0.2..0.8) * w as f32,
            rng.random_range(0.2..0.8) * h as f32,
        );
        if centres
            .iter()
            .any(|d| (c.0 - d.0).hypot(c.1 - d.1) <= apart * s)
        {
            continue;
        }
        if let Some(t) = make(rng, c, s) {
            centres.push(c);
            made.push(t);
        }
    }
    made
}

/// `n` ellipses apart from each other, 6-12% of the side across each, where `k` shows.
pub fn blobs(rng: &mut impl Rng, photo: &RgbImage, k: [u8; 3], n: usize) -> Vec<Vec<bool>> {
    let (w, h) = photo.dimensions();
    place(rng, (w, h), n, 0.3, |rng, c, s| {
        let (rx, ry) = (
            rng.random_range(0.06..0.12) * s,
            rng.random_range(0.06..0.12) * s,
        );
        let m = ellipse(w, h, c.0, c.1, rx, ry);
        visible(photo, &m, k).then_some(m)
    })
}

/// The points of `n` owners far apart, point `j` of `colours` on a circle (10% of the side)
/// around its owner, placed where every disc shows.
pub fn owners(
    rng: &mut impl Rng,
    photo: &RgbImage,
    colours: &[[u8; 3]],
    n: usize,
    r: i32,
) -> Vec<Vec<(f32, f32)>> {
    let (w, h) = photo.dimensions();
    place(rng, (w, h), n, 0.35, |_, c, s| {
        let points: Vec<(f32, f32)> = (0..colours.len())
            .map(|j| {
                let a = j as f32 * std::f32::consts::TAU / colours.len() as f32;
                (c.0 + 0.1 * s * a.cos(), c.1 + 0.1 * s * a.sin())
            })
            .collect();
        let shows = points
            .iter()
            .zip(colours)
            .all(|(&(x, y), k)| visible(photo, &disc_mask(w, h, x, y, r), *k));
        shows.then_some(points)
    })
}

/// What one instruction asks to be drawn: masks in one colour, or points (joint, colour) on
/// `owners` owners.
enum Ask {
    Masks {
        color: &'static str,
        count: usize,
    },
    Points {
        marks: Vec<(&'static str, &'static str)>,
        owners: usize,
    },
}

/// A phrasing set: a name and a writer of (instruction, what it asks).
struct Set {
    name: &'static str,
    write: fn(&mut ChaCha8Rng) -> (String, Ask),
}

const OBJECTS: [&str; 6] = [
    "dog",
    "dining table",
    "the man in the red shirt",
    "boat",
    "teddy bear",
    "sky-other",
];
const JOINTS: [&str; 8] = [
    "nose",
    "left wrist",
    "left_wrist",
    "right ankle",
    "top_head",
    "neck",
    "right_shoulder",
    "left eye",
];

fn mask_color(rng: &mut ChaCha8Rng) -> &'static str {
    MASK_COLORS.choose(rng).unwrap().name
}

fn marks(rng: &mut ChaCha8Rng, n: usize) -> Vec<(&'static str, &'static str)> {
    let mut colours: Vec<&str> = official::POSE_COLORS.to_vec();
    let mut out = vec![];
    for _ in 0..n {
        let c = colours.remove(rng.random_range(0..colours.len()));
        out.push((*JOINTS.choose(rng).unwrap(), c));
    }
    out
}

fn sets() -> Vec<Set> {
    vec![
        Set {
            name: "this project's segmentation templates",
            write: |rng| {
                let c = mask_color(rng);
                let tpl = Task::ReferringSegmentation.templates().choose(rng).unwrap();
                let text = fill(tpl, &[("target", "the dog"), ("color", c)]);
                (text, Ask::Masks { color: c, count: 1 })
            },
        },
        Set {
            name: "held-out segmentation paraphrases",
            write: |rng| {
                let c = mask_color(rng);
                let tpl = Task::ReferringSegmentation
                    .paraphrases()
                    .choose(rng)
                    .unwrap();
                let text = fill(tpl, &[("target", "the dog"), ("color", c)]);
                (text, Ask::Masks { color: c, count: 1 })
            },
        },
        Set {
            name: "InstructDiffusion segmentation structures",
            write: |rng| {
                let c = mask_color(rng);
                let object = *OBJECTS.choose(rng).unwrap();
                let tpl = official::SEGMENT.choose(rng).unwrap();
                let text = fill(tpl, &[("target", object), ("color", c)]);
                (
                    text,
                    Ask::Masks {
                        color: c,
                        count: rng.random_range(1..=3),
                    },
                )
            },
        },
        Set {
            name: "InstructDiffusion pose clauses (1-5 joined)",
            write: |rng| {
                let n = rng.random_range(1..=5);
                let m = marks(rng, n);
                let text = official::random_pose(rng, &m, "the people");
                (
                    text,
                    Ask::Points {
                        marks: m,
                        owners: rng.random_range(1..=3),
                    },
                )
            },
        },
        Set {
            name: "the paper's structures",
            write: |rng| {
                let m = marks(rng, 2);
                let ((j1, c1), (j2, c2)) = (m[0], m[1]);
                let c = mask_color(rng);
                match rng.random_range(0..5) {
                    0 => (
                        format!("Paint the pixels of puddle in {c} and keep the current look of the other pixels."),
                        Ask::Masks { color: c, count: 1 },
                    ),
                    1 => (
                        format!("Please use {c1} to encircle the {j1} of the woman."),
                        Ask::Points { marks: vec![m[0]], owners: 1 },
                    ),
                    2 => (
                        format!("Mark the bus logo with a {c1} circle."),
                        Ask::Points { marks: vec![("logo", c1)], owners: 1 },
                    ),
                    3 => (
                        format!("Create a {c1} circle around the {j1} of the dolphin."),
                        Ask::Points { marks: vec![m[0]], owners: 1 },
                    ),
                    _ => (
                        format!("Put a {c1} circle on the {j1} of the brown bear and use the {c2} color to draw a circle around the {j2} of the brown bear."),
                        Ask::Points { marks: m.clone(), owners: 1 },
                    ),
                }
            },
        },
        Set {
            name: "free phrasings",
            write: |rng| {
                let c = mask_color(rng);
                let m = marks(rng, 1);
                let (j, k) = m[0];
                let text = match rng.random_range(0..6) {
                    0 => format!("Shade the car {c}, half see-through, the rest as it was."),
                    1 => format!("tint the lamp {c}"),
                    2 => format!("Overlay {c} on the sofa."),
                    3 => format!("Could you cover the horse with {c}? Nothing else should change."),
                    4 => format!("highlight both players in {c} please"),
                    _ => {
                        let text = format!("Put a {k} dot on each person's {j}.");
                        return (
                            text,
                            Ask::Points {
                                marks: m,
                                owners: rng.random_range(2..=3),
                            },
                        );
                    }
                };
                let count = if text.contains("both") { 2 } else { 1 };
                (text, Ask::Masks { color: c, count })
            },
        },
        Set {
            name: "no colour named (the pixels decide)",
            write: |rng| {
                let c = mask_color(rng);
                let m = marks(rng, 1);
                if rng.random_bool(0.5) {
                    ("Segment the dog.".into(), Ask::Masks { color: c, count: 1 })
                } else {
                    (
                        "Mark the noses of the people.".into(),
                        Ask::Points {
                            marks: m,
                            owners: 2,
                        },
                    )
                }
            },
        },
        Set {
            name: "other languages (the pixels decide)",
            write: |rng| {
                let c = mask_color(rng);
                let text = [
                    "把狗涂成半透明的颜色",
                    "Markiere den Hund farbig.",
                    "Colorea el perro.",
                ]
                .choose(rng)
                .unwrap();
                (text.to_string(), Ask::Masks { color: c, count: 1 })
            },
        },
    ]
}

/// One set's rate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rate {
    pub set: &'static str,
    pub cases: usize,
    /// Decoded right: every mask at IoU >= 0.95 with no extra instance, or every point within
    /// 1.5 px with none extra.
    pub right: usize,
}

/// `per_set` instructions of each set on `photos` (square crops at `size`).
pub fn rates(photos: &[RgbImage], size: u32, per_set: usize, seed: u64) -> Vec<Rate> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let photos: Vec<RgbImage> = photos
        .iter()
        .map(|p| super::quality::square(p, size))
        .collect();
    sets()
        .into_iter()
        .map(|set| {
            let right = (0..per_set)
                .filter(|i| {
                    let photo = &photos[i % photos.len()];
                    let (text, ask) = (set.write)(&mut rng);
                    case(photo, &text, &ask, &mut rng)
                })
                .count();
            Rate {
                set: set.name,
                cases: per_set,
                right,
            }
        })
        .collect()
}

fn table_rgb(name: &str, keypoint: bool) -> [u8; 3] {
    let table = if keypoint {
        &KEYPOINT_COLORS[..]
    } else {
        &MASK_COLORS[..]
    };
    table
        .iter()
        .find(|c| c.name == name)
        .expect("a table colour")
        .rgb
}

/// Draws what `ask` asks on `photo`, disturbs it, reads `text` against it: right or not.
fn case(photo: &RgbImage, text: &str, ask: &Ask, rng: &mut ChaCha8Rng) -> bool {
    let mut out = photo.clone();
    let (w, h) = photo.dimensions();
    match ask {
        Ask::Masks { color, count } => {
            let k = table_rgb(color, false);
            let masks = blobs(rng, photo, k, *count);
            let drawn = drift(rng, k);
            masks.iter().for_each(|m| blend(&mut out, m, drawn));
            let Ok(r) = read(photo, &disturb(&out, rng), text) else {
                return false;
            };
            let d = r.decoded;
            d.instances.len() == masks.len()
                && masks.iter().all(|m| {
                    d.instances.iter().any(|i| {
                        let inter = i.mask.iter().zip(m).filter(|(a, b)| **a && **b).count();
                        let union = i.mask.iter().zip(m).filter(|(a, b)| **a || **b).count();
                        inter as f64 >= 0.95 * union as f64
                    })
                })
        }
        Ask::Points { marks, owners: n } => {
            let r = (10 * w.min(h) / 256) as i32;
            let ks: Vec<[u8; 3]> = marks.iter().map(|(_, c)| table_rgb(c, true)).collect();
            let mut truth = vec![];
            for points in owners(rng, photo, &ks, *n, r) {
                for (&(x, y), k) in points.iter().zip(&ks) {
                    let drawn = drift(rng, *k);
                    truth.push(disc(&mut out, x, y, r, drawn));
                }
            }
            let Ok(reading) = read(photo, &disturb(&out, rng), text) else {
                return false;
            };
            let d = reading.decoded;
            d.keypoints.len() == truth.len()
                && truth
                    .iter()
                    .all(|(x, y)| d.keypoints.iter().any(|p| (p.x - x).hypot(p.y - y) <= 1.5))
        }
    }
}
