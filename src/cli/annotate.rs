//! `instructdiffusion annotate`: one instruction over a folder, into its project state and one
//! COCO file.

use std::path::PathBuf;

use clap::Args;

use crate::imageio;

use super::{load_model, ModelArgs, SamplingArgs};

#[derive(Args, Debug, Clone)]
pub struct AnnotateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The instruction run on every image (it must ask for masks, keypoints or labels).
    #[arg(long)]
    pub prompt: String,
    /// The folder of images (never modified).
    #[arg(long)]
    pub images: PathBuf,
    /// The COCO file to write (every drafted or reviewed image of the folder).
    #[arg(long)]
    pub coco: PathBuf,
    /// Keep the project state (each image's draft and status; a rerun continues from it) in
    /// this file instead of the folder's instructdiffusion-project.json (for a folder that
    /// cannot be written).
    #[arg(long)]
    pub state: Option<PathBuf>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Refuse images with more pixels than this.
    #[arg(long, default_value_t = imageio::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
}

pub(super) fn run_annotate(args: &AnnotateArgs) -> anyhow::Result<()> {
    use crate::annotate::{self, Event};
    let model = load_model(&args.model)?;
    let plan = args.sampling.request(&args.prompt).validate(&model)?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} images {elapsed_precise} eta {eta} {msg}",
        )
        .expect("static template"),
    );
    let summary = annotate::run(
        &model,
        &plan,
        &args.images,
        &args.coco,
        args.state.as_deref(),
        args.max_pixels,
        |e| match e {
            Event::Start { total, already } => {
                bar.set_length(total as u64);
                bar.set_position(already as u64);
                if already > 0 {
                    bar.suspend(|| eprintln!("resuming: {already} of {total} images already done"));
                }
            }
            Event::Done { file, found } => {
                bar.set_message(format!("{file}: {found} found"));
                bar.inc(1);
            }
            Event::Skipped { file, reason } => {
                bar.suspend(|| eprintln!("skipped {file}: {reason}"));
                bar.inc(1);
            }
            Event::Notice(text) => bar.suspend(|| eprintln!("note: {text}")),
        },
    )?;
    bar.finish_and_clear();
    eprintln!(
        "wrote '{}': {} images, {} annotations, {} skipped",
        args.coco.display(),
        summary.drafted,
        summary.coco.annotations.len(),
        summary.skipped.len()
    );
    for (file, reason) in &summary.skipped {
        eprintln!("  skipped {file}: {reason}");
    }
    Ok(())
}
