//! The `instructdiffusion` command line. Each subcommand parses into clap structs (what the user
//! typed), turns them into validated plans, runs, and reports errors once as a chain.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::fullres::FullRes;
use crate::model::load::{self, LoadOptions, ModelSource};
use crate::sample::pipeline::EditRequest;
use crate::sample::samplers::Sampler;
use crate::settings::GuidanceFormula;
pub use crate::support::{error_chain, memory_bytes, parse_device, peak_memory_bytes};

mod annotate;
mod bench;
mod data;
mod decode;
mod edit;
mod eval;
mod train;

pub use annotate::AnnotateArgs;
pub use bench::BenchArgs;
pub use data::{DataCommand, SynthArgs};
pub use decode::DecodeArgs;
pub use edit::EditArgs;
pub use eval::EvalArgs;
pub use train::{TrainArgs, TrainCommand};

#[derive(Parser)]
#[command(
    name = "instructdiffusion",
    version,
    about = "Every vision task as an instructional image edit (InstructDiffusion, in Rust)"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand: the editor opens, with this image if given.
    #[arg(value_name = "IMAGE")]
    pub image: Option<PathBuf>,
    /// With no subcommand: the model the editor loads (default: the last one used, else the
    /// built-in one).
    #[arg(long)]
    pub model: Option<String>,
    /// With no subcommand: an instruction to fill in (Ctrl+Enter runs it).
    #[arg(long)]
    pub prompt: Option<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Edit one image with an instruction.
    Edit(EditArgs),
    /// Procedural training data.
    #[command(subcommand)]
    Data(DataCommand),
    /// Train the built-in model (phase `vae`, then `edit`); resumes from the last checkpoint.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Turn an answer's coloured overlays into masks, keypoints and boxes, and export them.
    Decode(DecodeArgs),
    /// Run one instruction over a folder of images and write one COCO file (resumable).
    Annotate(AnnotateArgs),
    /// Score a model per task on held-out procedural samples (masks and keypoints decoded).
    Eval(EvalArgs),
    /// Time each stage of an edit (text encode, VAE, one guided UNet step, a whole edit).
    Bench(BenchArgs),
}

/// Where the model comes from and how it runs.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A diffusers folder, an LDM checkpoint (.ckpt/.safetensors), a hub id (org/name), or
    /// "builtin" (the default: the miniature model in models/).
    #[arg(long, default_value = "builtin")]
    pub model: String,
    /// A folder of diffusers config.json files describing a single-file checkpoint.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// cpu, cuda or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Precision of the weights: auto, f32, f16 or bf16. On the CPU, bf16 holds the weights in
    /// half the memory; its products run on AVX512-BF16 where the CPU has it (the rest in f32).
    /// auto: bf16 on such a CPU, else f32.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Compute attention in slices of this many heads to save memory on large images (bf16 on
    /// AVX512-BF16 needs none: its attention never holds the whole score matrix).
    #[arg(long)]
    pub attention_slice: Option<usize>,
}

/// How to sample (each defaults to the model's own setting).
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Sampling steps (default: the model's).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Text guidance scale (default: the model's).
    #[arg(long)]
    pub text_cfg: Option<f64>,
    /// Image guidance scale (default: the model's).
    #[arg(long)]
    pub image_cfg: Option<f64>,
    /// Guidance rescale, 0 (off) to 1 (Lin et al., 2024; diffusers' `guidance_rescale`, the
    /// "CFG rescale" of other UIs; 0.7 in the paper): pulls the guided prediction back to the
    /// spread of the fully conditioned one, against over-saturation at strong guidance
    /// (default: the model's, else 0).
    #[arg(long)]
    pub guidance_rescale: Option<f64>,
    /// euler-a (default), euler, heun or dpmpp-2m.
    #[arg(long)]
    pub sampler: Option<Sampler>,
    /// instructdiffusion or pix2pix (default: the model's).
    #[arg(long)]
    pub guidance: Option<GuidanceFormula>,
    /// Noise seed (default: random, printed and saved in the metadata).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Long side at which the model runs, a multiple of 64 (default: the model's).
    #[arg(long)]
    pub resolution: Option<usize>,
    /// Write the model's own pixels at its size instead of the photo's.
    #[arg(long)]
    pub keep_model_resolution: bool,
    /// How the result comes back at the photo's resolution: auto (by the instruction:
    /// annotation answers redrawn on the photo, edits applied as a change, enhancements in
    /// tiles at the photo's own size), change, tiled, or off (the model's picture resized).
    #[arg(long, value_enum, default_value_t = FullRes::Auto)]
    pub full_res: FullRes,
}

impl SamplingArgs {
    fn request(&self, prompt: &str) -> EditRequest {
        EditRequest {
            prompt: prompt.to_string(),
            steps: self.steps,
            text_cfg: self.text_cfg,
            image_cfg: self.image_cfg,
            guidance_rescale: self.guidance_rescale,
            sampler: self.sampler,
            guidance: self.guidance,
            seed: self.seed,
            resolution: self.resolution,
            keep_model_resolution: self.keep_model_resolution,
            full_res: self.full_res,
        }
    }
}

/// Runs the command line; prints an error chain and returns exit code 2 on failure.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        // The window stays on the main thread; its worker runs in a pool of its own.
        None => crate::app::run(crate::app::Options {
            image: cli.image,
            model: cli.model,
            prompt: cli.prompt,
            session_dir: None,
        }),
        Some(command) => crate::support::in_compute_pool(|| match command {
            Command::Edit(args) => edit::run_edit(&args),
            Command::Data(DataCommand::Synth(args)) => data::run_synth(&args),
            Command::Train(cmd) => train::run_train(&cmd),
            Command::Bench(args) => bench::run_bench(&args),
            Command::Decode(args) => decode::run_decode(&args),
            Command::Annotate(args) => annotate::run_annotate(&args),
            Command::Eval(args) => eval::run_eval(&args),
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
}

pub use crate::support::parse_dtype;

/// Loads the model named by `args`, with a download bar on stderr.
pub fn load_model(args: &ModelArgs) -> anyhow::Result<load::Model> {
    let source = ModelSource::parse(&args.model)?;
    let bar = indicatif::ProgressBar::hidden();
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    }
    let shown = bar.clone();
    let mut progress = move |file: &str, done: u64, total: u64| {
        let bar = &shown;
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(file.to_string());
    };
    let device = parse_device(&args.device)?;
    let opts = LoadOptions {
        dtype: parse_dtype(&args.dtype, &device)?,
        device,
        config_dir: args.config.clone(),
        attention_slice: args.attention_slice,
        progress: Some(&mut progress),
        hub: None,
    };
    let model =
        load::load(&source, opts).with_context(|| format!("loading model '{}'", args.model))?;
    bar.finish_and_clear();
    Ok(model)
}

/// A task family by name.
pub(super) fn parse_task(name: &str) -> anyhow::Result<crate::tasks::Task> {
    use crate::tasks::Task;
    Task::ALL
        .iter()
        .copied()
        .find(|t| t.name() == name.trim())
        .ok_or_else(|| {
            let names: Vec<_> = Task::ALL.iter().map(|t| t.name()).collect();
            anyhow::anyhow!(
                "unknown task '{name}'; the families are: {}",
                names.join(", ")
            )
        })
}

/// `--tasks` of `train edit` and `data synth`: `name` or `name=weight`, comma-separated.
pub(super) fn parse_task_weights(
    items: &[String],
) -> anyhow::Result<crate::data::sample::TaskWeights> {
    let weights = items
        .iter()
        .map(|item| {
            let (name, weight) = match item.split_once('=') {
                Some((n, w)) => (
                    n,
                    w.trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|w| *w > 0.0)
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "'{item}': the weight after '=' must be a positive number"
                            )
                        })?,
                ),
                None => (item.as_str(), 1.0),
            };
            Ok((parse_task(name)?, weight))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(crate::data::sample::TaskWeights(weights))
}
