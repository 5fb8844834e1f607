//! Batch annotation: one instruction over a folder of images, decoded into one COCO file.
//! The work is the folder's project state ([`crate::project`], the file the editor opens the
//! folder with): after each image its draft (or why it failed) is written there atomically; a
//! rerun with the same instruction and model continues from there. Unreadable images are
//! skipped and reported.

use std::ops::ControlFlow;
use std::path::Path;

use anyhow::{bail, Context};

use crate::decode::{self, parse};
use crate::export::coco::Coco;
use crate::imageio;
use crate::model::load::Model;
use crate::project::{Notice, Project, Status, STATE_FILE};
use crate::sample::pipeline::{self, EditOutcome, EditPlan};

/// Per-image events for a progress display.
pub enum Event<'a> {
    Start {
        total: usize,
        already: usize,
    },
    Done {
        file: &'a str,
        found: usize,
    },
    Skipped {
        file: &'a str,
        reason: &'a str,
    },
    /// Something about the project state worth telling.
    Notice(String),
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The COCO file written: every drafted or reviewed image of the project.
    pub coco: Coco,
    /// Images drafted (by this run and earlier ones).
    pub drafted: usize,
    /// `(file, reason)` of the images that could not be drafted.
    pub skipped: Vec<(String, String)>,
}

/// Runs `plan` (its prompt) on every image of `dir` not drafted yet with `model`, keeping the
/// work in the folder's project state (`state`, else `dir/instructdiffusion-project.json`, the
/// file the editor opens the folder with), and writes the COCO file `out` of every drafted or
/// reviewed image. A rerun continues where a stopped one ended.
pub fn run(
    model: &Model,
    plan: &EditPlan,
    dir: &Path,
    out: &Path,
    state: Option<&Path>,
    max_pixels: u64,
    mut on_event: impl FnMut(Event),
) -> anyhow::Result<Summary> {
    if parse::hints(&plan.prompt).edit {
        bail!("\"{}\" asks for an edit, not for masks, keypoints or labels: annotate needs e.g. \"apply a blue semi-transparent mask to the dog\"", plan.prompt);
    }
    let state_path = state.map_or_else(|| dir.join(STATE_FILE), Path::to_path_buf);
    let (mut project, notices) = Project::open_at(dir, &state_path)?;
    for n in &notices {
        if let Notice::UnreadableState { moved_to, reason } = n {
            on_event(Event::Notice(format!(
                "the project state was unreadable ({reason}); kept as '{}', starting over",
                moved_to.display()
            )));
        }
    }
    let files = crate::imageio::list_images(dir)?;
    if files.is_empty() {
        bail!(
            "no images ({}) in '{}'",
            crate::imageio::EXTENSIONS.join(", "),
            dir.display()
        );
    }
    let drafted_before = project.state.items.iter().any(|i| i.answer.is_some());
    let same = project.state.instruction.as_deref() == Some(plan.prompt.as_str())
        && project.state.model.as_deref() == Some(model.source.as_str());
    if drafted_before && !same {
        bail!(
            "'{}' holds drafts from another instruction or model (\"{}\", {}); rerun with those, or move the file away to start over",
            state_path.display(),
            project.state.instruction.as_deref().unwrap_or("?"),
            project.state.model.as_deref().unwrap_or("?")
        );
    }
    project.state.instruction = Some(plan.prompt.clone());
    project.state.model = Some(model.source.clone());
    let todo = |i: &crate::project::Item| i.status == Status::NotRun && i.error.is_none();
    let names: Vec<String> = files
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string()
        })
        .collect();
    let already = project
        .state
        .items
        .iter()
        .filter(|i| names.contains(&i.file) && !todo(i))
        .count();
    on_event(Event::Start {
        total: files.len(),
        already,
    });
    project.save().with_context(|| {
        format!(
            "keeping the project state in '{}' (a folder that cannot be written: choose a file with --state)",
            state_path.display()
        )
    })?;
    for (path, name) in files.iter().zip(&names) {
        if !project
            .state
            .items
            .iter()
            .any(|i| i.file == *name && todo(i))
        {
            continue;
        }
        let drafted = draft_one(model, plan, path, max_pixels, &mut |_| {
            ControlFlow::Continue(())
        });
        match drafted.and_then(|d| d.ok_or_else(|| anyhow::anyhow!("cancelled"))) {
            Ok(decoded) => {
                project.set_draft(name, &decoded)?;
                on_event(Event::Done {
                    file: name,
                    found: decoded.instances.len() + decoded.keypoints.len(),
                });
            }
            Err(e) => {
                let reason = crate::support::error_chain(&e);
                project.set_failed(name, &reason)?;
                on_event(Event::Skipped {
                    file: name,
                    reason: &reason,
                });
            }
        }
    }
    let coco = project.coco(false)?;
    imageio::write_atomic(out, serde_json::to_string_pretty(&coco)?.as_bytes())?;
    Ok(Summary {
        drafted: coco.images.len(),
        coco,
        skipped: project
            .state
            .items
            .iter()
            .filter_map(|i| Some((i.file.clone(), i.error.clone()?)))
            .collect(),
    })
}

/// Drafts one image: `plan` run on it, its answer read at the model's size and brought to
/// the image's (an image whose answer shows no overlay gets an empty one). `None` when
/// `on_step` cancelled. Used by `annotate` and by the editor's workbench alike.
pub fn draft_one(
    model: &Model,
    plan: &EditPlan,
    path: &Path,
    max_pixels: u64,
    on_step: &mut dyn FnMut(&pipeline::StepEvent) -> ControlFlow<()>,
) -> anyhow::Result<Option<decode::Decoded>> {
    // Answers are read at the model's size and exported at the image's own.
    let plan = &EditPlan {
        keep_model_resolution: false,
        full_res: crate::fullres::FullRes::Auto,
        ..plan.clone()
    };
    let source = imageio::load_rgb(path, max_pixels)?;
    let EditOutcome::Done(edited) = pipeline::edit(model, &source, plan, None, on_step)? else {
        return Ok(None);
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
    Ok(Some(decoded))
}
