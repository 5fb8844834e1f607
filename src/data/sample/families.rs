//! Each task family's sample builder: a fresh scene, the instruction that poses the task on it,
//! and the target drawn the way InstructDiffusion draws its answers, with the ground truth.

use image::RgbImage;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::data::degrade::{add_noise, add_watermark};
use crate::data::scene::{random_shape, Item, Shape, ShapeKind, KEYPOINT_NAMES, OBJECT_COLORS};
use crate::tasks::{self, Task, KEYPOINT_COLORS, MASK_COLORS};

/// What a family's builder returns: instruction, source, target, ground truth.
pub(super) type Posed = (String, RgbImage, RgbImage, Truth);

/// Targets smaller than this many pixels are not asked for.
pub(super) fn min_area(size: u32) -> usize {
    (size * size / 400) as usize
}

/// A referring segmentation sample on a fresh scene, or `None` if this scene cannot pose it.
pub(super) fn referring_segmentation(rng: &mut ChaCha8Rng, size: u32, task: Task) -> Option<Posed> {
    let people = if rng.random_bool(0.3) {
        rng.random_range(1..=2)
    } else {
        0
    };
    let scene = random_scene(rng, size, 2..=5, people);
    let idx = rng.random_range(0..scene.items.len());
    let (target, category) = match &scene.items[idx] {
        Item::Shape(s) => (describe_shape(rng, &scene, idx)?, s.kind.name()),
        Item::Person(_) => (describe_person(&scene, idx)?, "person"),
    };
    let mask = scene.visible_mask(idx);
    if area(&mask) < min_area(size) {
        return None;
    }
    let drawn = *MASK_COLORS.choose(rng)?;
    let input = scene.render();
    let color = shown_color(&MASK_COLORS, drawn, &input, &mask);
    let out = blend_mask(&input, &mask, color.rgb);
    let text = tasks::instruction(rng, task, &[("target", &target), ("color", color.name)]);
    Some((
        text,
        input,
        out,
        Truth {
            masks: vec![(category.to_string(), mask)],
            phrase: Some(target),
            mask_color: Some(color.rgb),
            keypoints: vec![],
            object_size: None,
        },
    ))
}

/// A semantic segmentation sample on a fresh scene, or `None` if this scene cannot pose it.
pub(super) fn semantic_segmentation(rng: &mut ChaCha8Rng, size: u32, task: Task) -> Option<Posed> {
    let scene = random_scene(rng, size, 2..=6, 0);
    let present: Vec<ShapeKind> = ShapeKind::ALL
        .iter()
        .copied()
        .filter(|k| scene.shapes().any(|(_, s)| s.kind == *k))
        .collect();
    let absent = rng.random_bool(0.2);
    let kind = if absent {
        *ShapeKind::ALL
            .iter()
            .filter(|k| !present.contains(k))
            .collect::<Vec<_>>()
            .choose(rng)?
    } else {
        present.choose(rng)?
    };
    let phrase = match rng.random_range(0..3) {
        0 => format!("all the {}", kind.plural()),
        1 => format!("every {}", kind.name()),
        _ => format!("the {}", kind.plural()),
    };
    let drawn = *MASK_COLORS.choose(rng)?;
    let input = scene.render();
    let masks: Vec<(String, Vec<bool>)> = scene
        .shapes()
        .filter(|(_, s)| s.kind == *kind)
        .map(|(i, _)| (kind.name().to_string(), scene.visible_mask(i)))
        .filter(|(_, m)| area(m) > 0)
        .collect();
    let mut union = vec![false; (size * size) as usize];
    for (_, m) in &masks {
        for (u, v) in union.iter_mut().zip(m) {
            *u |= *v;
        }
    }
    let color = shown_color(&MASK_COLORS, drawn, &input, &union);
    let out = blend_mask(&input, &union, color.rgb);
    let text = tasks::instruction(rng, task, &[("target", &phrase), ("color", color.name)]);
    Some((
        text,
        input,
        out,
        Truth {
            masks,
            phrase: Some(phrase),
            mask_color: Some(color.rgb),
            keypoints: vec![],
            object_size: None,
        },
    ))
}

/// A keypoint sample on a fresh scene, or `None` if this scene cannot pose it.
pub(super) fn keypoints(rng: &mut ChaCha8Rng, size: u32, task: Task) -> Option<Posed> {
    let people = rng.random_range(1..=2);
    let scene = random_scene(rng, size, 0..=3, people);
    let (idx, person) = scene.people().collect::<Vec<_>>().choose(rng).copied()?;
    let owner = describe_person(&scene, idx)?;
    let visible = scene.visible_mask(idx);
    let n = rng.random_range(1..=5);
    let mut joints: Vec<usize> = (0..17)
        .filter(|&j| {
            let (x, y) = person.joints[j];
            let (xi, yi) = (x as i64, y as i64);
            xi >= 0
                && yi >= 0
                && xi < size as i64
                && yi < size as i64
                && (j < 5 || visible[(yi as u32 * size + xi as u32) as usize])
        })
        .collect();
    joints.shuffle(rng);
    // Discs must not overlap, so that each keypoint stays readable in the target.
    let r = 10.0 * size as f32 / 256.0;
    let mut chosen: Vec<usize> = Vec::new();
    for j in joints {
        let (x, y) = person.joints[j];
        let apart = chosen.iter().all(|&c| {
            let (cx, cy) = person.joints[c];
            (x - cx).powi(2) + (y - cy).powi(2) >= (2.0 * r + 1.0).powi(2)
        });
        if apart && chosen.len() < n {
            chosen.push(j);
        }
    }
    let joints = chosen;
    if joints.is_empty() {
        return None;
    }
    let mut colors = KEYPOINT_COLORS.to_vec();
    colors.shuffle(rng);
    let input = scene.render();
    // A disc in the colour of the limb or background under it would not show: it takes the
    // first unused colour that does (no draw, so the rest of the sample stays as it was).
    for (i, j) in joints.iter().enumerate() {
        let (x, y) = person.joints[*j];
        // The disc's interior, where it is wholly opaque (its rim is anti-aliased).
        let under = disc_mask(size, size, x, y, r - 1.0);
        if contrast(&input, &under, colors[i].rgb) < MIN_CONTRAST {
            let spare = (joints.len()..colors.len())
                .find(|&k| contrast(&input, &under, colors[k].rgb) >= MIN_CONTRAST);
            if let Some(k) = spare {
                colors.swap(i, k);
            }
        }
    }
    let mut out = input.clone();
    let mut marks = Vec::new();
    let mut kps = Vec::new();
    for (j, color) in joints.iter().zip(&colors) {
        let (x, y) = person.joints[*j];
        draw_disc(&mut out, x, y, r, color.rgb);
        marks.push(format!(
            "a {} circle on the {}",
            color.name,
            KEYPOINT_NAMES[*j].replace('_', " ")
        ));
        kps.push(Keypoint {
            name: KEYPOINT_NAMES[*j].into(),
            x,
            y,
            color: color.rgb,
        });
    }
    let marks = tasks::join_and(&marks);
    // Held out, half the samples ask in InstructDiffusion's pose clauses instead.
    let text = if tasks::held_out() && rng.random_bool(0.5) {
        let named: Vec<(String, &str)> = kps
            .iter()
            .zip(&colors)
            .map(|(k, c)| (k.name.replace('_', " "), c.name))
            .collect();
        let named: Vec<(&str, &str)> = named.iter().map(|(j, c)| (j.as_str(), *c)).collect();
        tasks::official::random_pose(rng, &named, &owner)
    } else {
        tasks::instruction(rng, task, &[("marks", &marks), ("owner", &owner)])
    };
    Some((
        text,
        input,
        out,
        Truth {
            masks: vec![],
            phrase: Some(owner),
            mask_color: None,
            keypoints: kps,
            object_size: Some(person.head_radius / 0.09),
        },
    ))
}

/// A remove, recolour or replace sample on a fresh scene, or `None` if this scene cannot pose it.
pub(super) fn object_edit(rng: &mut ChaCha8Rng, size: u32, task: Task) -> Option<Posed> {
    let scene = random_scene(rng, size, 2..=5, 0);
    let idx = rng.random_range(0..scene.items.len());
    let target = describe_shape(rng, &scene, idx)?;
    if area(&scene.visible_mask(idx)) < min_area(size) {
        return None;
    }
    let Item::Shape(shape) = scene.items[idx].clone() else {
        return None;
    };
    let mut edited = scene.clone();
    let text = match task {
        Task::Remove => {
            edited.items.remove(idx);
            tasks::instruction(rng, task, &[("target", &target)])
        }
        Task::Recolor => {
            let color = *OBJECT_COLORS
                .iter()
                .filter(|c| c.name != shape.color.name)
                .collect::<Vec<_>>()
                .choose(rng)?;
            edited.items[idx] = Item::Shape(Shape {
                color: *color,
                ..shape
            });
            tasks::instruction(rng, task, &[("target", &target), ("color", color.name)])
        }
        _ => {
            let kind = *ShapeKind::ALL
                .iter()
                .filter(|k| **k != shape.kind)
                .collect::<Vec<_>>()
                .choose(rng)?;
            edited.items[idx] = Item::Shape(Shape {
                kind: *kind,
                ..shape
            });
            tasks::instruction(rng, task, &[("target", &target), ("kind", kind.name())])
        }
    };
    Some((text, scene.render(), edited.render(), Truth::default()))
}

/// An add-an-object sample on a fresh scene, or `None` if this scene cannot pose it.
pub(super) fn add_object(rng: &mut ChaCha8Rng, size: u32, task: Task) -> Option<Posed> {
    let scene = random_scene(rng, size, 1..=4, 0);
    const PLACES: [(&str, f32, f32); 9] = [
        ("in the top left corner", 0.2, 0.2),
        ("at the top", 0.5, 0.2),
        ("in the top right corner", 0.8, 0.2),
        ("on the left", 0.2, 0.5),
        ("in the center", 0.5, 0.5),
        ("on the right", 0.8, 0.5),
        ("in the bottom left corner", 0.2, 0.8),
        ("at the bottom", 0.5, 0.8),
        ("in the bottom right corner", 0.8, 0.8),
    ];
    let (place, px, py) = *PLACES.choose(rng)?;
    let kind = *ShapeKind::ALL.choose(rng)?;
    let color = *OBJECT_COLORS.choose(rng)?;
    let s = size as f32;
    let mut shape = random_shape(rng, size, kind, color);
    shape.size = rng.random_range(0.08..0.13) * s;
    shape.cx = (px + rng.random_range(-0.06..0.06)) * s;
    shape.cy = (py + rng.random_range(-0.06..0.06)) * s;
    let mut edited = scene.clone();
    edited.items.push(Item::Shape(shape));
    let text = tasks::instruction(
        rng,
        task,
        &[
            ("color", color.name),
            ("kind", kind.name()),
            ("place", place),
        ],
    );
    Some((text, scene.render(), edited.render(), Truth::default()))
}

/// A denoise, deblur or watermark-removal sample on a fresh scene, or `None` if this scene cannot pose it.
pub(super) fn enhancement(rng: &mut ChaCha8Rng, size: u32, task: Task) -> Option<Posed> {
    let people = rng.random_range(0..=1);
    let scene = random_scene(rng, size, 1..=5, people);
    let clean = scene.render();
    let degraded = match task {
        Task::Denoise => {
            let sigma = rng.random_range(15.0..50.0);
            add_noise(rng, &clean, sigma)
        }
        Task::Deblur => {
            image::imageops::blur(&clean, rng.random_range(1.2..3.0) * size as f32 / 128.0)
        }
        _ => add_watermark(rng, &clean),
    };
    let text = tasks::instruction(rng, task, &[]);
    Some((text, degraded, clean, Truth::default()))
}
