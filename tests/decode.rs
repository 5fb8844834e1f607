//! The decoder and exporters through the command line, on a real photo with overlays drawn as
//! the training targets are; the quality set with its targets; bad inputs; batch annotation.

mod util;

use std::path::Path;

use image::RgbImage;
use instructdiffusion::data::sample::draw_disc;
use instructdiffusion::decode::quality::{self, Perturb};
use instructdiffusion::export::coco::Coco;
use instructdiffusion::export::contour;
use instructdiffusion::export::rle::Rle;
use util::{run_bin, stderr, tempdir, tiny};

fn photos() -> Vec<RgbImage> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples");
    ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
        .iter()
        .map(|f| image::open(dir.join(f)).unwrap().to_rgb8())
        .collect()
}

#[test]
fn quality_set_meets_the_targets_at_512() {
    let r = quality::run(&photos(), 6, 512, &Perturb::STANDARD, 7);
    eprintln!("{r:#?}");
    assert!(
        r.masks >= 24 && r.keypoints >= 24 && r.untouched >= 48,
        "{r:#?}"
    );
    assert!(r.mean_iou >= 0.95, "{r:#?}");
    assert!(
        r.keypoints_found as f64 >= 0.97 * r.keypoints as f64,
        "{r:#?}"
    );
    assert!(r.mean_keypoint_error_px <= 1.5, "{r:#?}");
    assert!(
        r.false_positives as f64 <= 0.01 * r.untouched as f64,
        "{r:#?}"
    );
}

/// A 256 px photo with a blue 50% ellipse (the cat) and the mask it covers (pixel centres).
fn blue_ellipse() -> (RgbImage, RgbImage, Vec<bool>) {
    let src = quality::square(&photos()[1], 256);
    let mut out = src.clone();
    let mut truth = vec![false; 256 * 256];
    for (x, y, p) in out.enumerate_pixels_mut() {
        let (dx, dy) = (
            (x as f32 + 0.5 - 120.0) / 60.0,
            (y as f32 + 0.5 - 140.0) / 40.0,
        );
        if dx * dx + dy * dy <= 1.0 {
            truth[(y * 256 + x) as usize] = true;
            p.0 = [p[0] / 2, p[1] / 2, ((p[2] as u16 + 255) / 2) as u8];
        }
    }
    (src, out, truth)
}

fn iou(a: &[bool], b: &[bool]) -> f64 {
    let inter = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let union = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    inter as f64 / union as f64
}

#[test]
fn decode_writes_every_format_and_they_agree_with_the_truth() {
    let dir = tempdir();
    let (src, out, truth) = blue_ellipse();
    let (sp, ep) = (dir.path().join("cat.png"), dir.path().join("answer.png"));
    src.save(&sp).unwrap();
    out.save(&ep).unwrap();
    let path = |n: &str| dir.path().join(n).display().to_string();
    let o = run_bin(&[
        "decode",
        "--source",
        &sp.display().to_string(),
        "--edited",
        &ep.display().to_string(),
        "--prompt",
        "Apply a blue semi-transparent mask to the cat.",
        "--coco",
        &path("coco.json"),
        "--labelme",
        &path("labelme.json"),
        "--masks",
        &path("masks"),
        "--yolo",
        &path("yolo/cat.txt"),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["kind"], "segmentation");
    assert_eq!(summary["instances"][0]["category"], "cat");

    // COCO: one annotation whose RLE decodes to the ellipse; box and area consistent.
    let coco: Coco =
        serde_json::from_str(&std::fs::read_to_string(path("coco.json")).unwrap()).unwrap();
    assert_eq!((coco.images.len(), coco.annotations.len()), (1, 1));
    assert_eq!(coco.images[0].file_name, "cat.png");
    let a = &coco.annotations[0];
    assert_eq!(coco.categories[(a.category_id - 1) as usize].name, "cat");
    let seg = a.segmentation.as_ref().unwrap();
    let rle = Rle::from_coco_string(&seg.counts, seg.size[1], seg.size[0]).unwrap();
    let mask = rle.decode();
    assert!(iou(&mask, &truth) >= 0.97, "{}", iou(&mask, &truth));
    assert_eq!(a.area, rle.area() as f64);
    assert_eq!(a.bbox, rle.bbox());
    assert!(
        (a.bbox[0] - 60.0).abs() <= 1.0 && (a.bbox[2] - 120.0).abs() <= 2.0,
        "{:?}",
        a.bbox
    );
    assert!(a.score.unwrap() > 0.5);

    // Labelme: a polygon labelled "cat" that rasterises back to the mask.
    let lm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path("labelme.json")).unwrap()).unwrap();
    assert_eq!(
        (lm["imageWidth"].as_u64(), lm["imageHeight"].as_u64()),
        (Some(256), Some(256))
    );
    let shape = &lm["shapes"][0];
    assert_eq!(
        (shape["label"].as_str(), shape["shape_type"].as_str()),
        (Some("cat"), Some("polygon"))
    );
    let poly: Vec<(f64, f64)> = shape["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    let back: Vec<bool> = (0..256 * 256)
        .map(|i| contour::contains(&poly, (i % 256) as f64 + 0.5, (i / 256) as f64 + 0.5))
        .collect();
    assert!(iou(&back, &truth) >= 0.95);

    // PNG masks: a binary mask per instance and an indexed label map.
    let inst = image::open(dir.path().join("masks/cat_001_cat.png"))
        .unwrap()
        .to_luma8();
    assert_eq!(
        inst.pixels().filter(|p| p[0] == 255).count(),
        mask.iter().filter(|m| **m).count()
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(dir.path().join("masks/cat_labels.png")).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    assert_eq!(reader.info().color_type, png::ColorType::Indexed);
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut buf).unwrap();
    assert!(buf.iter().zip(&mask).all(|(v, m)| (*v == 1) == *m));

    // YOLO: one normalised box, class 0 = cat in classes.txt.
    let line = std::fs::read_to_string(path("yolo/cat.txt")).unwrap();
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(v[0], 0.0);
    assert!(
        (v[1] - 120.0 / 256.0).abs() < 0.01 && (v[3] - 120.0 / 256.0).abs() < 0.01,
        "{line}"
    );
    assert_eq!(
        std::fs::read_to_string(path("yolo/classes.txt")).unwrap(),
        "cat\n"
    );
}

#[test]
fn decode_keypoints_to_coco_and_untouched_answers_to_nothing() {
    let dir = tempdir();
    let src = quality::square(&photos()[0], 256);
    let mut out = src.clone();
    draw_disc(&mut out, 100.3, 80.6, 10.0, [255, 0, 0]);
    draw_disc(&mut out, 180.0, 150.0, 10.0, [0, 255, 0]);
    let (sp, ep, cp) = (
        dir.path().join("s.png"),
        dir.path().join("e.png"),
        dir.path().join("k.json"),
    );
    src.save(&sp).unwrap();
    out.save(&ep).unwrap();
    let args = |edited: &Path| {
        vec![
            "decode".to_string(),
            "--source".into(),
            sp.display().to_string(),
            "--edited".into(),
            edited.display().to_string(),
            "--prompt".into(),
            "Put a red circle on the man's left shoulder and a green circle on the right knee."
                .into(),
            "--coco".into(),
            cp.display().to_string(),
        ]
    };
    let o = run_bin(&args(&ep).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let coco: Coco = serde_json::from_str(&std::fs::read_to_string(&cp).unwrap()).unwrap();
    assert_eq!(coco.categories[0].name, "person");
    let k = coco.annotations[0].keypoints.as_ref().unwrap();
    let (ls, rk) = (5 * 3, 14 * 3); // left_shoulder, right_knee
    assert!(
        (k[ls] - 100.3).abs() < 0.3 && (k[ls + 1] - 80.6).abs() < 0.3,
        "{k:?}"
    );
    assert_eq!((k[ls + 2], k[rk + 2]), (2.0, 2.0));
    assert!((k[rk] - 180.0).abs() < 0.3 && (k[rk + 1] - 150.0).abs() < 0.3);
    assert_eq!(coco.annotations[0].num_keypoints, Some(2));

    // The source itself as the answer: nothing marked is a valid, empty result.
    let mut a = args(&sp);
    a.truncate(7);
    let o = run_bin(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing marked"));
}

#[test]
fn detection_gives_boxes_and_classification_a_label() {
    use instructdiffusion::decode::{decode, parse::parse};
    let (src, out, truth) = blue_ellipse();
    let d = decode(
        &src,
        &out,
        &parse("Detect the cat with a blue semi-transparent mask").unwrap(),
    )
    .unwrap();
    assert_eq!(d.instances.len(), 1);
    let b = d.instances[0].bbox;
    assert!(
        (b[0] - 60.0).abs() <= 1.0 && (b[1] - 100.0).abs() <= 1.0,
        "{b:?}"
    );
    assert!(
        (b[2] - 120.0).abs() <= 2.0 && (b[3] - 80.0).abs() <= 2.0,
        "{b:?}"
    );
    assert_eq!(
        d.instances[0].area as usize,
        truth.iter().filter(|t| **t).count()
    );
    // The whole image tinted half red: "cat"; untouched: no label.
    let rule = parse("Paint the image red if it is a cat, blue if it is a dog").unwrap();
    let mut red = src.clone();
    red.pixels_mut()
        .for_each(|p| p.0 = [((p[0] as u16 + 255) / 2) as u8, p[1] / 2, p[2] / 2]);
    let d = decode(&src, &red, &rule).unwrap();
    let (label, share) = d.label.unwrap();
    assert_eq!(label, "cat");
    assert!(share > 0.8, "{share}");
    assert_eq!(decode(&src, &src, &rule).unwrap().label, None);
}

#[test]
fn bad_inputs_get_clear_errors() {
    let dir = tempdir();
    let (src, out, _) = blue_ellipse();
    let sp = dir.path().join("s.png");
    src.save(&sp).unwrap();
    let wide = dir.path().join("wide.png");
    image::imageops::resize(&out, 256, 128, image::imageops::FilterType::Triangle)
        .save(&wide)
        .unwrap();
    let half = dir.path().join("half.png");
    image::imageops::resize(&out, 128, 128, image::imageops::FilterType::Triangle)
        .save(&half)
        .unwrap();
    let broken = dir.path().join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let decode = |edited: &Path, prompt: &str| {
        run_bin(&[
            "decode",
            "--source",
            &sp.display().to_string(),
            "--edited",
            &edited.display().to_string(),
            "--prompt",
            prompt,
        ])
    };
    let seg = "Apply a blue semi-transparent mask to the cat";
    let o = decode(&wide, seg);
    assert!(
        !o.status.success() && stderr(&o).contains("shapes differ"),
        "{}",
        stderr(&o)
    );
    let o = decode(&broken, seg);
    assert!(
        !o.status.success() && stderr(&o).contains("broken.png"),
        "{}",
        stderr(&o)
    );
    // An unknown colour word: the pixels say which colour was drawn, and a note says so.
    let o = decode(&half, "Apply a blurple semi-transparent mask to the cat");
    assert!(
        o.status.success() && stderr(&o).contains("'blurple'") && stderr(&o).contains("blue"),
        "{}",
        stderr(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("mask  cat"));
    // No task in the words and no overlay in the pixels: one clear line, nothing written.
    let o = run_bin(&[
        "decode",
        "--source",
        &sp.display().to_string(),
        "--edited",
        &sp.display().to_string(),
        "--prompt",
        "Make it snow",
        "--coco",
        &dir.path().join("out/snow.json").display().to_string(),
    ]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("nothing to decode: the instruction asks for an edit")
            && err.contains("the pixels show no overlay"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!dir.path().join("out").exists(), "nothing is written");
    // A smaller answer of the same shape is resized to the source and decodes.
    let o = decode(&half, seg);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("mask  cat"));
    // Exports never overwrite the inputs.
    let o = run_bin(&[
        "decode",
        "--source",
        &sp.display().to_string(),
        "--edited",
        &half.display().to_string(),
        "--prompt",
        seg,
        "--coco",
        &sp.display().to_string(),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("refusing to overwrite"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn annotate_runs_a_folder_skips_unreadable_files_and_resumes() {
    let dir = tempdir();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let input = image::open(tiny().join("input.png")).unwrap().to_rgb8();
    input.save(images.join("a.png")).unwrap();
    image::imageops::flip_horizontal(&input)
        .save(images.join("b.png"))
        .unwrap();
    std::fs::write(images.join("c.jpg"), b"not a jpeg").unwrap();
    std::fs::write(images.join("notes.txt"), b"ignored").unwrap();
    let out = dir.path().join("coco.json");
    let model = tiny().join("diffusers").display().to_string();
    let run = |prompt: &str| {
        run_bin(&[
            "annotate",
            "--model",
            &model,
            "--prompt",
            prompt,
            "--images",
            &images.display().to_string(),
            "--coco",
            &out.display().to_string(),
            "--steps",
            "2",
            "--seed",
            "1",
            "--resolution",
            "64",
        ])
    };
    let prompt = "Apply a blue semi-transparent mask to the cat";
    let o = run(prompt);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("skipped c.jpg"), "{}", stderr(&o));
    let coco: Coco = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let names: Vec<_> = coco.images.iter().map(|i| i.file_name.as_str()).collect();
    assert_eq!(names, ["a.png", "b.png"]);
    // The work is the folder's project state: the editor opens the folder with it.
    use instructdiffusion::project::{Project, Status};
    let (project, _) = Project::open(&images).unwrap();
    let status: Vec<_> = project
        .state
        .items
        .iter()
        .map(|i| (i.status, i.error.is_some()))
        .collect();
    assert_eq!(
        status,
        [
            (Status::Drafted, false),
            (Status::Drafted, false),
            (Status::NotRun, true)
        ]
    );

    // An interrupted run: the state says a.png is drafted (as a 1x1 image) and b.png is not
    // run yet; the rerun drafts only b.png.
    let mut state = project.state.clone();
    let mut tiny_answer = state.items[0].answer.clone().unwrap();
    (tiny_answer.width, tiny_answer.height) = (1, 1);
    tiny_answer.instances.clear();
    state.items[0].answer = Some(tiny_answer);
    state.items[1].status = Status::NotRun;
    state.items[1].answer = None;
    let state_file = images.join(instructdiffusion::project::STATE_FILE);
    std::fs::write(&state_file, serde_json::to_string(&state).unwrap()).unwrap();
    let o = run(prompt);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("resuming: 2 of 3"), "{err}");
    let coco: Coco = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(
        coco.images[0].width, 1,
        "a.png came from the project state, not a rerun"
    );
    assert_eq!(coco.images.len(), 2);

    // Drafts from another instruction are not mixed in.
    let o = run("Apply a red semi-transparent mask to the dog");
    assert!(
        !o.status.success() && stderr(&o).contains("another instruction"),
        "{}",
        stderr(&o)
    );
    // An edit instruction is refused before any work.
    let o = run("Make it snow");
    assert!(
        !o.status.success() && stderr(&o).contains("annotate needs"),
        "{}",
        stderr(&o)
    );
}

/// `annotate` killed mid-folder (SIGKILL, no chance to clean up): the project state on disk is
/// whole, the images drafted before the kill are kept, the images themselves are untouched,
/// and the rerun drafts only the rest.
#[cfg(unix)]
#[test]
fn annotate_killed_mid_folder_keeps_its_drafts_and_resumes() {
    use instructdiffusion::project::{Project, Status};
    let dir = tempdir();
    let images = dir.path().join("photos");
    std::fs::create_dir(&images).unwrap();
    const N: usize = 40;
    for i in 0..N {
        image::RgbImage::from_fn(48, 40, |x, y| {
            image::Rgb([x as u8 * 5, y as u8 * 6, i as u8])
        })
        .save(images.join(format!("p{i:02}.png")))
        .unwrap();
    }
    let before: Vec<Vec<u8>> = (0..N)
        .map(|i| std::fs::read(images.join(format!("p{i:02}.png"))).unwrap())
        .collect();
    let model = tiny().join("diffusers").display().to_string();
    let out = dir.path().join("coco.json");
    let args = |steps: &str| -> Vec<String> {
        [
            "annotate",
            "--model",
            &model,
            "--prompt",
            "Apply a blue semi-transparent mask to the cat",
            "--images",
            &images.display().to_string(),
            "--coco",
            &out.display().to_string(),
            "--steps",
            steps,
            "--seed",
            "1",
            "--resolution",
            "64",
        ]
        .map(String::from)
        .to_vec()
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_instructdiffusion"))
        .args(args("6"))
        .env("HF_HUB_OFFLINE", "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state_file = images.join(instructdiffusion::project::STATE_FILE);
    let drafted = |p: &Project| p.counts()[Status::Drafted as usize];
    let t0 = std::time::Instant::now();
    loop {
        if let Ok((p, _)) = Project::open(&images) {
            if state_file.exists() && drafted(&p) >= 2 {
                break;
            }
        }
        assert!(t0.elapsed().as_secs() < 120, "no drafts within two minutes");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let (p, notices) = Project::open(&images).unwrap();
    assert!(notices.is_empty(), "the state file is whole: {notices:?}");
    let kept = drafted(&p);
    assert!(
        (2..N).contains(&kept),
        "killed midway: {kept} of {N} drafted"
    );
    for (i, bytes) in before.iter().enumerate() {
        let now = std::fs::read(images.join(format!("p{i:02}.png"))).unwrap();
        assert_eq!(&now, bytes, "p{i:02}.png is untouched");
    }
    let o = run_bin(&args("6").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("resuming: {kept} of {N}")),
        "{}",
        stderr(&o)
    );
    let (done, _) = Project::open(&images).unwrap();
    assert_eq!(drafted(&done), N);
    for (a, b) in p.state.items.iter().zip(&done.state.items) {
        if a.status == Status::Drafted {
            assert_eq!(a.answer, b.answer, "{} was not redrafted", a.file);
        }
    }
}
