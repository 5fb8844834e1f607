//! `instructdiffusion decode`: an answer's overlays to masks, keypoints and boxes, exported.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use crate::imageio;

#[derive(Args, Debug, Clone)]
pub struct DecodeArgs {
    /// The image that was edited (never modified).
    #[arg(long)]
    pub source: PathBuf,
    /// The model's answer.
    #[arg(long)]
    pub edited: PathBuf,
    /// The instruction that produced it, e.g. "apply a blue semi-transparent mask to the dog".
    #[arg(long)]
    pub prompt: String,
    /// Write COCO JSON (RLE masks, boxes, scores, keypoints) here.
    #[arg(long)]
    pub coco: Option<PathBuf>,
    /// Write Labelme JSON (polygons, rectangles for detection, points) here.
    #[arg(long)]
    pub labelme: Option<PathBuf>,
    /// Write PNG masks (one per instance, an indexed label map, labels.json) into this folder.
    #[arg(long)]
    pub masks: Option<PathBuf>,
    /// Write YOLO boxes here (class ids from classes.txt beside it, extended as needed).
    #[arg(long)]
    pub yolo: Option<PathBuf>,
    /// Print the result as JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Refuse images with more pixels than this.
    #[arg(long, default_value_t = imageio::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
}

pub(super) fn run_decode(args: &DecodeArgs) -> anyhow::Result<()> {
    use crate::export::{coco::Coco, labelme, masks, yolo};
    let outputs = [&args.coco, &args.labelme, &args.yolo];
    for out in outputs.into_iter().flatten() {
        imageio::check_not_source(out, &args.source)?;
        imageio::check_not_source(out, &args.edited)?;
    }
    let source = imageio::load_rgb(&args.source, args.max_pixels)?;
    let edited = imageio::load_rgb(&args.edited, args.max_pixels)?;
    // Nothing is written until the answer is read.
    let reading = crate::decode::read(&source, &edited, &args.prompt)?;
    let (parsed, d) = (&reading.parsed, &reading.decoded);
    if let Some(note) = &reading.note {
        eprintln!("note: {note}");
    }
    for out in outputs.into_iter().flatten() {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating '{}'", dir.display()))?;
        }
    }
    let file_name = args
        .source
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    if let Some(path) = &args.coco {
        let mut coco = Coco::default();
        let id = coco.add_image(&file_name, d.width, d.height);
        coco.add_decoded(id, d);
        imageio::write_atomic(path, serde_json::to_string_pretty(&coco)?.as_bytes())?;
    }
    if let Some(path) = &args.labelme {
        let doc = labelme::document(d, &args.source.to_string_lossy());
        imageio::write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    }
    if let Some(dir) = &args.masks {
        let stem = args
            .source
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy();
        masks::write(d, dir, &stem)?;
    }
    if let Some(path) = &args.yolo {
        let classes_path = path.with_file_name("classes.txt");
        let mut classes = yolo::read_classes(&classes_path)?;
        let lines = yolo::lines(d, &mut classes);
        imageio::write_atomic(path, lines.as_bytes())?;
        imageio::write_atomic(&classes_path, (classes.join("\n") + "\n").as_bytes())?;
    }
    let summary = json!({
        "kind": d.kind,
        "read_from": reading.source,
        "targets": parsed.targets,
        "instances": d.instances.iter().map(|i| json!({
            "category": i.category, "phrase": i.phrase, "color": i.color,
            "area": i.area, "bbox": i.bbox, "score": i.score,
        })).collect::<Vec<_>>(),
        "keypoints": d.keypoints,
        "label": d.label.as_ref().map(|(l, share)| json!({"label": l, "share": share})),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    for i in &d.instances {
        let [x, y, w, h] = i.bbox;
        println!(
            "mask  {:<16} area {:>7} px  box [{x:.0}, {y:.0}, {w:.0}, {h:.0}]  score {:.2}  ({})",
            i.category, i.area, i.score, i.phrase
        );
    }
    for p in &d.keypoints {
        println!(
            "point {:<16} ({:.1}, {:.1}) r {:.1}  score {:.2}  ({})",
            p.name, p.x, p.y, p.radius, p.score, p.category
        );
    }
    if let Some((label, share)) = &d.label {
        println!(
            "label {label} ({:.0}% of the image in its colour)",
            share * 100.0
        );
    }
    if d.instances.is_empty() && d.keypoints.is_empty() && d.label.is_none() {
        println!(
            "nothing marked: no {} found in the answer",
            match d.kind {
                crate::decode::parse::Kind::Keypoints => "keypoint discs",
                crate::decode::parse::Kind::Classification => "class colour",
                _ => "masks",
            }
        );
    }
    Ok(())
}
