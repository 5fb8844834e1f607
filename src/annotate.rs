//! Batch annotation: one instruction over a folder of images, decoded into one COCO file.
//! Resumable: after each image the progress (the COCO so far, the files done and skipped) is
//! written atomically to `OUT.partial.json`; a rerun with the same prompt and model continues
//! from there, and the final file replaces it. Unreadable images are skipped and reported.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::decode::{self, parse};
use crate::export::coco::Coco;
use crate::imageio;
use crate::model::load::Model;
use crate::sample::pipeline::{self, EditOutcome, EditPlan};

/// Image file extensions the folder scan picks up.
const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif"];

/// What has been done so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    pub prompt: String,
    pub model: String,
    pub coco: Coco,
    pub done: Vec<String>,
    /// `(file, reason)`.
    pub skipped: Vec<(String, String)>,
}

/// Where the progress of a run writing `out` lives.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial.json");
    out.with_file_name(name)
}

/// The images of `dir`, sorted by name.
pub fn list_images(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading the folder '{}'", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e.to_lowercase().as_str()))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Per-image events for a progress display.
pub enum Event<'a> {
    Start { total: usize, already: usize },
    Done { file: &'a str, found: usize },
    Skipped { file: &'a str, reason: &'a str },
}

/// Runs `plan` (its prompt) on every image of `dir` with `model` and writes the COCO file
/// `out`. Returns the final progress (with the skipped files).
pub fn run(
    model: &Model,
    plan: &EditPlan,
    dir: &Path,
    out: &Path,
    max_pixels: u64,
    mut on_event: impl FnMut(Event),
) -> anyhow::Result<Progress> {
    if parse::hints(&plan.prompt).edit {
        bail!("\"{}\" asks for an edit, not for masks, keypoints or labels: annotate needs e.g. \"apply a blue semi-transparent mask to the dog\"", plan.prompt);
    }
    // Answers are read at the model's size and exported at each photo's own.
    let plan = &EditPlan {
        keep_model_resolution: false,
        full_res: crate::fullres::FullRes::Auto,
        ..plan.clone()
    };
    let files = list_images(dir)?;
    if files.is_empty() {
        bail!(
            "no images ({}) in '{}'",
            EXTENSIONS.join(", "),
            dir.display()
        );
    }
    let partial = partial_path(out);
    let mut progress = match std::fs::read_to_string(&partial) {
        Ok(text) => {
            let p: Progress = serde_json::from_str(&text).with_context(|| {
                format!(
                    "reading the progress file '{}' (delete it to start over)",
                    partial.display()
                )
            })?;
            if p.prompt != plan.prompt || p.model != model.source {
                bail!(
                    "'{}' holds a run with another prompt or model (\"{}\", {}); rerun with those, or delete it to start over",
                    partial.display(),
                    p.prompt,
                    p.model
                );
            }
            p
        }
        Err(_) => Progress {
            prompt: plan.prompt.clone(),
            model: model.source.clone(),
            ..Default::default()
        },
    };
    let already = progress.done.len() + progress.skipped.len();
    on_event(Event::Start {
        total: files.len(),
        already,
    });
    for path in &files {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if progress.done.contains(&name) || progress.skipped.iter().any(|(f, _)| *f == name) {
            continue;
        }
        match annotate_one(model, plan, path, max_pixels) {
            Ok((w, h, decoded)) => {
                let id = progress.coco.add_image(&name, w, h);
                progress.coco.add_decoded(id, &decoded);
                progress.done.push(name.clone());
                on_event(Event::Done {
                    file: &name,
                    found: decoded.instances.len() + decoded.keypoints.len(),
                });
            }
            Err(e) => {
                let reason = crate::support::error_chain(&e);
                progress.skipped.push((name.clone(), reason.clone()));
                on_event(Event::Skipped {
                    file: &name,
                    reason: &reason,
                });
            }
        }
        imageio::write_atomic(&partial, serde_json::to_string(&progress)?.as_bytes())?;
    }
    imageio::write_atomic(
        out,
        serde_json::to_string_pretty(&progress.coco)?.as_bytes(),
    )?;
    let _ = std::fs::remove_file(&partial);
    Ok(progress)
}

fn annotate_one(
    model: &Model,
    plan: &EditPlan,
    path: &Path,
    max_pixels: u64,
) -> anyhow::Result<(usize, usize, decode::Decoded)> {
    let source = imageio::load_rgb(path, max_pixels)?;
    let outcome = pipeline::edit(model, &source, plan, None, &mut |_| {
        ControlFlow::Continue(())
    })?;
    let EditOutcome::Done(edited) = outcome else {
        bail!("cancelled");
    };
    let answer = edited
        .answer
        .ok_or_else(|| anyhow::anyhow!("the pipeline read no answer"))?;
    let decoded = match answer {
        Ok(reading) => reading.decoded,
        // The words named no colour and this answer shows no overlay: an image with nothing.
        Err(decode::DecodeError::NothingToDecode { .. }) => decode::Decoded {
            kind: parse::hints(&plan.prompt)
                .kind
                .unwrap_or(parse::Kind::Segmentation),
            width: source.width() as usize,
            height: source.height() as usize,
            instances: vec![],
            keypoints: vec![],
            label: None,
        },
        Err(e) => return Err(e.into()),
    };
    Ok((source.width() as usize, source.height() as usize, decoded))
}
