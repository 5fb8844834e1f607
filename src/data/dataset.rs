//! Dataset folders in the format diffusers' `train_instruct_pix2pix.py` reads: `metadata.jsonl`
//! with `input_image`, `edit_prompt`, `edited_image` per line, plus the image files. The image
//! keys are written `input_image_file_name` and `edited_image_file_name`: Hugging Face
//! `datasets`' `imagefolder` loader (which that script uses for `--train_data_dir`) needs the
//! `_file_name` suffix, and loads them as image columns named `input_image` and `edited_image`.
//! Both spellings are read.
//!
//! The ground truth of the sources (masks of segmentation targets, keypoints) goes to
//! `annotations.json` in COCO format. Every file is written through a temporary file and a
//! rename; `metadata.jsonl` last, so an interrupted run never leaves a folder that looks complete.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::sample::{generate, Sample, TaskWeights};
use crate::export::coco::Coco;
use crate::imageio;
use crate::tasks::Task;

/// One line of `metadata.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(rename = "input_image_file_name", alias = "input_image")]
    pub input_image: String,
    pub edit_prompt: String,
    #[serde(rename = "edited_image_file_name", alias = "edited_image")]
    pub edited_image: String,
    /// Not read by diffusers; kept for evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// Writes the samples of `seeds` at `size` px into `dir`, calling `progress(done, total)`.
pub fn write(
    dir: &Path,
    seeds: std::ops::Range<u64>,
    size: u32,
    weights: &TaskWeights,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Vec<Record>> {
    let images = dir.join("images");
    std::fs::create_dir_all(&images)
        .map_err(|e| anyhow::anyhow!("creating '{}': {e}", images.display()))?;
    let total = (seeds.end - seeds.start) as usize;
    let mut records = Vec::with_capacity(total);
    let mut coco = Coco::default();
    for (i, seed) in seeds.enumerate() {
        let s: Sample = generate(seed, size, weights);
        let (a, b) = (
            format!("images/{seed:09}_source.png"),
            format!("images/{seed:09}_edited.png"),
        );
        imageio::save(&s.input, &dir.join(&a), &[])?;
        imageio::save(&s.target, &dir.join(&b), &[])?;
        let (w, h) = (s.input.width() as usize, s.input.height() as usize);
        let image_id = coco.add_image(&a, w, h);
        for (category, mask) in &s.truth.masks {
            coco.add_mask(image_id, category, mask, w, h, None);
        }
        if !s.truth.keypoints.is_empty() {
            let points: Vec<(String, f64, f64)> = s
                .truth
                .keypoints
                .iter()
                .map(|k| (k.name.clone(), k.x as f64, k.y as f64))
                .collect();
            coco.add_keypoints(image_id, &points, None);
        }
        records.push(Record {
            input_image: a,
            edit_prompt: s.instruction,
            edited_image: b,
            task: Some(s.task),
            seed: Some(seed),
        });
        progress(i + 1, total);
    }
    let mut jsonl = String::new();
    for r in &records {
        jsonl.push_str(&serde_json::to_string(r)?);
        jsonl.push('\n');
    }
    imageio::write_atomic(
        &dir.join("annotations.json"),
        serde_json::to_string(&coco)?.as_bytes(),
    )?;
    imageio::write_atomic(&dir.join("metadata.jsonl"), jsonl.as_bytes())?;
    Ok(records)
}

/// Reads `metadata.jsonl`, reporting the line number of any broken line.
pub fn read(dir: &Path) -> anyhow::Result<Vec<Record>> {
    let path = dir.join("metadata.jsonl");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("reading '{}': {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| anyhow::anyhow!("'{}' line {}: {e}", path.display(), i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_broken_lines() {
        let dir = tempfile::tempdir().unwrap();
        let written = write(
            dir.path(),
            10..14,
            32,
            &TaskWeights::default(),
            &mut |_, _| {},
        )
        .unwrap();
        let read_back = read(dir.path()).unwrap();
        assert_eq!(written, read_back);
        // `datasets`' imagefolder needs `*_file_name` keys; the plain names read too.
        let first = std::fs::read_to_string(dir.path().join("metadata.jsonl")).unwrap();
        let line: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
        assert!(
            line["input_image_file_name"].is_string() && line["edited_image_file_name"].is_string()
        );
        let plain = r#"{"input_image": "a.png", "edit_prompt": "p", "edited_image": "b.png"}"#;
        let r: Record = serde_json::from_str(plain).unwrap();
        assert_eq!(
            (r.input_image.as_str(), r.edited_image.as_str()),
            ("a.png", "b.png")
        );
        for r in &read_back {
            let a = image::open(dir.path().join(&r.input_image))
                .unwrap()
                .to_rgb8();
            let s = generate(r.seed.unwrap(), 32, &TaskWeights::default());
            assert_eq!(a, s.input);
        }
        std::fs::write(
            dir.path().join("metadata.jsonl"),
            "{\"input_image\": \"a\"}\n",
        )
        .unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("line 1") && err.contains("missing field"),
            "{err}"
        );
    }
}
