//! Results at the photo's resolution: a 1600-px photo whose model-size answer changes one
//! region comes back with the source's exact pixels outside it and the upsampled answer
//! inside; annotation answers are redrawn at full size exactly where the decoded masks are.

use std::ops::ControlFlow;
use std::sync::OnceLock;

use image::{Rgb, RgbImage};
use instructdiffusion::decode::{parse::Kind, Decoded, Instance, Point};
use instructdiffusion::fullres::{change, redraw, Applied, FullRes, Placement};
use instructdiffusion::imageio;
use instructdiffusion::model::load::{self, LoadOptions, Model, ModelSource};
use instructdiffusion::sample::pipeline::{self, EditOutcome, EditRequest};

fn builtin() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| load::load(&ModelSource::Builtin, LoadOptions::default()).unwrap())
}

/// One of the sample photos in `assets/samples`.
fn sample(name: &str) -> RgbImage {
    let path = std::path::Path::new("assets/samples").join(name);
    imageio::load_rgb(&path, imageio::DEFAULT_MAX_PIXELS).unwrap()
}

/// A photo-like 1600 x 1000 picture with detail at every scale: smooth shading, stripes a few
/// pixels wide and per-pixel grain.
fn photo(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let stripes = ((x as f32 * 0.9).sin() * (y as f32 * 0.35).cos()) * 25.0;
        let grain = ((x.wrapping_mul(7919) ^ y.wrapping_mul(104729)) % 23) as f32 - 11.0;
        let v = |base: f32| (base + stripes + grain).clamp(0.0, 255.0) as u8;
        Rgb([
            v(60.0 + 120.0 * fx),
            v(90.0 + 80.0 * fy),
            v(140.0 - 60.0 * fx * fy),
        ])
    })
}

/// A 3x3 box blur: what an autoencoder's round trip does to detail, roughly.
fn blurred(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let mut acc = [0u32; 3];
        for dy in -1i32..=1 {
            for dx in -1i32..=1 {
                let px = (x as i32 + dx).clamp(0, w as i32 - 1) as u32;
                let py = (y as i32 + dy).clamp(0, h as i32 - 1) as u32;
                let p = img.get_pixel(px, py);
                (0..3).for_each(|c| acc[c] += p[c] as u32);
            }
        }
        Rgb(acc.map(|v| (v / 9) as u8))
    })
}

/// The 1600 x 1000 photo, where a 512-px model sees it, and its round trip there.
fn photo_and_round_trip() -> (RgbImage, Placement, RgbImage) {
    let source = photo(1600, 1000);
    let (mw, mh) = imageio::fit_size(1600, 1000, 512);
    let roundtrip = blurred(&imageio::fit(&source, mw, mh));
    (source, Placement::new((1600, 1000), (mw, mh)), roundtrip)
}

#[test]
fn a_local_change_is_applied_inside_and_the_source_kept_exactly_outside() {
    let (source, place, roundtrip) = photo_and_round_trip();
    let (mw, mh) = place.model;
    // The model's answer: the round trip with one region (an object added) changed.
    let mut result = roundtrip.clone();
    let inside = |x: u32, y: u32| (x as i32 - 300).pow(2) + (y as i32 - 150).pow(2) < 40 * 40;
    for (x, y, p) in result.enumerate_pixels_mut() {
        if inside(x, y) {
            *p = Rgb([230, (x % 40 * 5) as u8, 40]);
        }
    }
    let found = change::find(&roundtrip, &result, &change::ChangeParams::default());
    assert!(!found.global);
    let disc_share = std::f64::consts::PI * 1600.0 / (mw * mh) as f64;
    assert!(
        (found.share / disc_share - 1.0).abs() < 0.15,
        "changed share {} for a disc of {disc_share}",
        found.share
    );
    let out = change::apply(&source, &place, &roundtrip, &result, &found);
    assert_eq!(out.dimensions(), (1600, 1000));
    // Outside the change and its feather (grow 1 + feather 2, spread 2 more: within 8 model
    // pixels of the disc, 25 source pixels): the source, exactly.
    let (sx, sy) = place.scale();
    let (mut outside, mut core, mut core_err, mut core_max) = (0usize, 0usize, 0f64, 0u8);
    let reference =
        image::imageops::resize(&result, 1600, 1000, image::imageops::FilterType::CatmullRom);
    for (x, y, p) in out.enumerate_pixels() {
        let (u, v) = ((x as f64 + 0.5) / sx, (y as f64 + 0.5) / sy);
        let d = ((u - 300.5).powi(2) + (v - 150.5).powi(2)).sqrt();
        if d > 48.0 {
            assert_eq!(
                p,
                source.get_pixel(x, y),
                "({x}, {y}) is outside the change"
            );
            outside += 1;
        } else if d < 36.0 {
            // Inside: the answer upsampled (checked against the image crate's Catmull-Rom).
            let r = reference.get_pixel(x, y);
            for c in 0..3 {
                let e = p[c].abs_diff(r[c]);
                core_err += e as f64;
                core_max = core_max.max(e);
            }
            core += 1;
        }
    }
    assert!(outside > 1_400_000, "{outside} pixels checked outside");
    let mean = core_err / (3 * core) as f64;
    assert!(
        mean <= 1.0 && core_max <= 8,
        "inside: {mean:.2} levels mean, {core_max} max off the upsampled answer"
    );
}

#[test]
fn a_global_change_keeps_the_sources_detail() {
    let (source, place, roundtrip) = photo_and_round_trip();
    // "Make it look like winter": everything lighter and bluer.
    let mut result = roundtrip.clone();
    for p in result.pixels_mut() {
        *p = Rgb([p[0] / 2 + 100, p[1] / 2 + 110, p[2] / 2 + 127]);
    }
    let found = change::find(&roundtrip, &result, &change::ChangeParams::default());
    assert!(found.global && found.share > 0.9);
    let out = change::apply(&source, &place, &roundtrip, &result, &found);
    let upscaled = imageio::resize_exact(&result, 1600, 1000);
    let kept = change::detail_kept(&source, &out);
    let kept_by_upscale = change::detail_kept(&source, &upscaled);
    assert!(
        kept > 0.8 && kept_by_upscale < 0.3,
        "detail kept: {kept:.2} (the upscaled answer: {kept_by_upscale:.2})"
    );
    // The change itself arrived: the colour moved as the answer's did.
    let mean = |img: &RgbImage, c: usize| {
        img.pixels().map(|p| p[c] as f64).sum::<f64>() / (img.width() * img.height()) as f64
    };
    for c in 0..3 {
        let (want, got) = (mean(&upscaled, c), mean(&out, c));
        assert!(
            (want - got).abs() < 4.0,
            "channel {c}: {got:.1}, the answer {want:.1}"
        );
    }
}

/// The change is found against the source's own round trip through the model's autoencoder:
/// its blur is not an edit. (Comparing with the resized source instead marks the whole photo.)
#[test]
fn the_autoencoders_blur_is_not_taken_for_a_change() {
    let model = builtin();
    let source = sample("coffee.png");
    let (mw, mh) = imageio::fit_size(source.width(), source.height(), 128);
    let resized = imageio::fit(&source, mw, mh);
    let (cond, _, _) = pipeline::condition(model, "", &resized).unwrap();
    let mut result = pipeline::roundtrip(model, &cond.image).unwrap();
    for y in 20..40 {
        for x in 30..60 {
            result.put_pixel(x, y, Rgb([250, 20, 200]));
        }
    }
    let (out, found) = pipeline::apply_change(model, &source, &cond.image, &result).unwrap();
    let share = 600.0 / (mw * mh) as f64;
    assert!(
        found.share < 2.0 * share,
        "{:.1}% of the photo taken for a change (the edit is {:.1}%)",
        found.share * 100.0,
        share * 100.0
    );
    let place = Placement::new(source.dimensions(), (mw, mh));
    let (sx, sy) = place.scale();
    let mut same = 0usize;
    let mut far = 0usize;
    for (x, y, p) in out.enumerate_pixels() {
        let (u, v) = (x as f64 / sx, y as f64 / sy);
        if !(20.0..72.0).contains(&u) || !(10.0..52.0).contains(&v) {
            far += 1;
            same += (p == source.get_pixel(x, y)) as usize;
        }
    }
    assert!(
        same as f64 >= 0.99 * far as f64,
        "{same} of {far} pixels away from the edit kept the source's"
    );
}

#[test]
fn annotation_answers_are_redrawn_exactly_where_the_masks_are() {
    let (mw, mh) = (128usize, 80usize);
    let place = Placement::new((1600, 1000), (mw as u32, mh as u32));
    // An ellipse as the model draws it: blocks of model pixels.
    let (cx, cy, rx, ry) = (60.0, 40.0, 30.0, 18.0);
    let ellipse = |x: f64, y: f64| ((x - cx) / rx).powi(2) + ((y - cy) / ry).powi(2) <= 1.0;
    let mask: Vec<bool> = (0..mw * mh)
        .map(|i| ellipse((i % mw) as f64 + 0.5, (i / mw) as f64 + 0.5))
        .collect();
    let d = Decoded {
        kind: Kind::Segmentation,
        width: mw,
        height: mh,
        instances: vec![Instance {
            category: "dog".into(),
            phrase: "the dog".into(),
            color: [0, 0, 255],
            area: mask.iter().filter(|&&m| m).count() as u64,
            mask,
            bbox: [0.0; 4],
            score: 1.0,
        }],
        keypoints: vec![Point {
            category: "dog".into(),
            name: "nose".into(),
            color: [255, 0, 0],
            x: 100.5,
            y: 20.5,
            radius: 2.0,
            score: 1.0,
            instance: 0,
        }],
        label: None,
    };
    let full = redraw::to_source(&d, &place);
    assert_eq!((full.width, full.height), (1600, 1000));
    // The upsampled mask follows the true outline closer than blocks of model pixels do.
    let s = 12.5;
    let truth = |x: usize, y: usize| ellipse((x as f64 + 0.5) / s, (y as f64 + 0.5) / s);
    let blocks = |x: usize, y: usize| d.instances[0].mask[(y * 2 / 25) * mw + x * 2 / 25];
    let (mut wrong, mut wrong_blocks) = (0usize, 0usize);
    for y in 0..1000 {
        for x in 0..1600 {
            let t = truth(x, y);
            wrong += (full.instances[0].mask[y * 1600 + x] != t) as usize;
            wrong_blocks += (blocks(x, y) != t) as usize;
        }
    }
    assert!(
        (wrong as f64) < 0.7 * wrong_blocks as f64,
        "{wrong} pixels off the outline, blocks: {wrong_blocks}"
    );
    let p = &full.keypoints[0];
    assert_eq!((p.x, p.y, p.radius), (1256.25, 256.25, 25.0));

    // Drawn on a source that shares no colour with the overlays: the blend lands exactly on
    // the mask, the disc on the point, the rest is the source.
    let source = RgbImage::from_fn(1600, 1000, |x, y| {
        Rgb([200, (x % 97) as u8 + 100, (y % 50) as u8])
    });
    let drawn = redraw::draw(&source, &full);
    for (i, (a, b)) in source.pixels().zip(drawn.pixels()).enumerate() {
        let (x, y) = ((i % 1600) as f64 + 0.5, (i / 1600) as f64 + 0.5);
        let in_disc = (x - p.x).powi(2) + (y - p.y).powi(2) <= p.radius * p.radius;
        if in_disc {
            assert_eq!(b.0, [255, 0, 0]);
        } else if full.instances[0].mask[i] {
            let want = [0, 1, 2].map(|c| (0.5 * a[c] as f32 + 0.5 * [0f32, 0., 255.][c]) as u8);
            assert_eq!(b.0, want);
        } else {
            assert_eq!(a, b);
        }
    }
}

/// A real run: the built-in model segments at its 128 px, the answer comes back on the photo
/// at its own size, decoded at that size, drawn exactly where the decoded mask is.
#[test]
fn a_segmentation_comes_back_on_the_full_resolution_photo() {
    let model = builtin();
    let source = sample("chelsea.png");
    let plan = EditRequest {
        prompt: "Apply a blue semi-transparent mask to the cat.".into(),
        seed: Some(1),
        steps: Some(8),
        ..Default::default()
    }
    .validate(model)
    .unwrap();
    assert_eq!(plan.full_res, FullRes::Auto);
    let EditOutcome::Done(e) = pipeline::edit(model, &source, &plan, None, &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap() else {
        panic!("not cancelled")
    };
    assert_eq!(e.applied, Applied::Redrawn);
    assert_eq!(e.image.dimensions(), source.dimensions());
    let own = e.model_image.as_ref().unwrap();
    assert_eq!(own.dimensions(), e.model_size);
    let decoded = e.answer.unwrap().unwrap().decoded;
    assert_eq!((decoded.width, decoded.height), (451, 300));
    assert!(!decoded.instances.is_empty());
    let mut any = vec![false; 451 * 300];
    for inst in &decoded.instances {
        for (a, m) in any.iter_mut().zip(&inst.mask) {
            *a |= *m;
        }
    }
    for (i, (a, b)) in source.pixels().zip(e.image.pixels()).enumerate() {
        if !any[i] {
            assert_eq!(a, b, "pixel {i} is outside the answer");
        }
    }
    let changed = source
        .pixels()
        .zip(e.image.pixels())
        .filter(|(a, b)| a != b)
        .count();
    let masked = any.iter().filter(|&&m| m).count();
    assert!(
        changed as f64 > 0.9 * masked as f64,
        "{changed} of {masked} masked pixels drawn"
    );
}

/// `annotate` reads each answer at the model's size and exports it at the photo's.
#[test]
fn annotate_exports_at_the_photos_size() {
    let model = builtin();
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::copy("assets/samples/chelsea.png", images.join("chelsea.png")).unwrap();
    let plan = EditRequest {
        prompt: "Apply a blue semi-transparent mask to the cat.".into(),
        seed: Some(1),
        steps: Some(8),
        ..Default::default()
    }
    .validate(model)
    .unwrap();
    let out = dir.path().join("coco.json");
    instructdiffusion::annotate::run(model, &plan, &images, &out, None, 1 << 26, |_| {}).unwrap();
    let coco: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(coco["images"][0]["width"], 451);
    assert_eq!(coco["images"][0]["height"], 300);
    let anns = coco["annotations"].as_array().unwrap();
    assert!(!anns.is_empty());
    for a in anns {
        assert_eq!(a["segmentation"]["size"], serde_json::json!([300, 451]));
        let b: Vec<f64> = serde_json::from_value(a["bbox"].clone()).unwrap();
        assert!(b[0] + b[2] <= 451.0 && b[1] + b[3] <= 300.0, "{b:?}");
    }
}
