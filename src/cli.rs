//! The `instructdiffusion` command line. Each subcommand parses into clap structs (what the user
//! typed), turns them into validated plans, runs, and reports errors once as a chain.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::fullres::FullRes;
use crate::imageio;
use crate::model::load::{self, LoadOptions, ModelSource};
use crate::sample::pipeline::{self, EditOutcome, EditRequest};
use crate::sample::samplers::Sampler;
use crate::settings::GuidanceFormula;
pub use crate::support::{error_chain, memory_bytes, parse_device, peak_memory_bytes};

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

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Use seeded random weights in this architecture instead of loading: sd15 or tiny.
    #[arg(long)]
    pub random: Option<String>,
    /// With --random: write those weights (f32) as a diffusers folder here, and stop.
    #[arg(long, value_name = "DIR", requires = "random")]
    pub save_random: Option<PathBuf>,
    /// Only load the model: print the load time and the peak memory after it, and stop.
    #[arg(long)]
    pub load_only: bool,
    /// Square image size in pixels (a multiple of 64).
    #[arg(long, default_value_t = 256)]
    pub resolution: usize,
    /// Timed runs per stage (after one warm-up run).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Euler steps of the whole-edit row.
    #[arg(long, default_value_t = 4)]
    pub edit_steps: usize,
    /// Also write the report as JSON here (tools/bench/pytorch_bench.py reads it for ratios).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Instead of the model: measure the overlay decoder (quality set and time per 512 px
    /// image) on the photos in this folder (e.g. assets/samples).
    #[arg(long, value_name = "PHOTOS")]
    pub decode: Option<PathBuf>,
    /// Instead: the editor's frame time and preview latency while it edits this image with
    /// the model (`--edit-steps` steps), headless.
    #[arg(long, value_name = "IMAGE")]
    pub ui: Option<PathBuf>,
    /// Instead: the editor's frame time and memory on a project of this many procedural
    /// images while it drafts them all (`--edit-steps` steps each) and moves through the list.
    #[arg(long, value_name = "N")]
    pub ui_folder: Option<usize>,
    /// How long `--ui-folder` runs, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// Also save the whole-edit row's result here (PNG), to compare devices or precisions.
    #[arg(long, value_name = "PNG")]
    pub save_edit: Option<PathBuf>,
    /// Instead: results at the photo's resolution against the model's picture resized, on
    /// the photos in this folder (a segmentation, a local and a global edit each,
    /// `--edit-steps` steps).
    #[arg(long, value_name = "PHOTOS")]
    pub full_res: Option<PathBuf>,
    /// Instead: a tiled denoise of a synthetic noisy photo of this size (e.g. 4000x3000),
    /// `--edit-steps` steps: time and peak memory.
    #[arg(long, value_name = "WxH")]
    pub tiled: Option<String>,
}

#[derive(Subcommand)]
pub enum TrainCommand {
    /// Phase 1: the autoencoder.
    Vae(TrainArgs),
    /// Phase 2: the UNet and the text encoder, with the phase-1 VAE frozen.
    Edit(TrainArgs),
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Run folder: checkpoint/, and vae/ or model/ (a loadable diffusers folder).
    #[arg(long)]
    pub out: PathBuf,
    /// The trained VAE folder (phase `edit`; default: BASE/vae with --base, else OUT/../vae/vae).
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// Phase `edit`: fine-tune this diffusers folder (its UNet and text encoder) instead of
    /// training the built-in architecture from scratch.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Phase `edit` with --base: train LoRA adapters of this rank on the UNet's attention
    /// (everything else frozen; the merged model and the adapters alone are written).
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// Phase `edit` with --base: the base folder's unet/config.json describes a grown
    /// architecture (e.g. a DownBlock2D made a CrossAttnDownBlock2D): take the weights the base
    /// has, start the new attention blocks as the identity, and train it all.
    #[arg(long)]
    pub grow: bool,
    /// Phase `edit` from scratch: the UNet's architecture, a diffusers UNet2DConditionModel
    /// config.json (default: the built-in model's). It takes the noisy and the source latents
    /// (in_channels twice the VAE's latent channels); a run keeps the architecture it started with.
    #[arg(long, value_name = "CONFIG_JSON", conflicts_with = "base")]
    pub unet_config: Option<PathBuf>,
    /// Phase `edit` from scratch: the text encoder's architecture, a transformers CLIPTextModel
    /// config.json (default: the built-in model's; its hidden_size is the UNet's
    /// cross_attention_dim).
    #[arg(long, value_name = "CONFIG_JSON", conflicts_with = "base")]
    pub text_encoder_config: Option<PathBuf>,
    /// Phase `edit` from scratch: start the text encoder from this diffusers folder's trained
    /// one (its weights and config; e.g. `models/builtin`) and the UNet from scratch, so a new
    /// UNet (--unet-config) learns to read an encoder that already tells instructions apart.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["base", "text_encoder_config"])]
    pub text_encoder_from: Option<PathBuf>,
    /// Phase `edit`: what the UNet predicts, `epsilon` or `v` (default: v from scratch, the
    /// base's with --base; a run resumes only with the one it started with).
    #[arg(long)]
    pub prediction: Option<String>,
    /// Phase `edit`: train on this dataset folder (metadata.jsonl, InstructPix2Pix format)
    /// instead of the generator.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Total optimizer steps (a resumed run continues to this).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub batch: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    /// Cosine learning-rate decay from this step to 0 at --steps (default: none, constant
    /// after the warmup). A resumed run may add it to finish a long run.
    #[arg(long)]
    pub lr_decay_from: Option<usize>,
    /// Steps between checkpoints.
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Phase `vae`: train on random square crops of this many pixels (0: whole images).
    #[arg(long)]
    pub crop: Option<u32>,
    /// Phase `vae`: freeze the encoder (as the checkpoint has it) and train the decoder only,
    /// so latents encoded before stay valid.
    #[arg(long)]
    pub decoder_only: bool,
    /// Phase `edit`: generate and encode this many samples once (OUT/pool/) and draw from them
    /// (0: fresh samples at every step).
    #[arg(long)]
    pub pool: Option<usize>,
    /// Print a progress line every this many steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: usize,
    /// cpu, cuda or metal (a build with that cargo feature): where the networks train.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Phase `edit`: rescale the noise schedule to zero terminal SNR (diffusers'
    /// `rescale_betas_zero_snr`): the last timestep trains on pure noise, which is what
    /// sampling's first step sees (use with --min-snr-gamma 0, which gives that timestep its
    /// weight). Default: the base model's setting with --base, else off; a run keeps it.
    #[arg(long)]
    pub zero_terminal_snr: bool,
    /// Phase `edit`: min-SNR loss weighting's gamma (default 5): each timestep's loss weighted
    /// as min(SNR, gamma) on the clean latent, which all but ignores the noisiest timesteps;
    /// 0 trains on the prediction type's plain loss (for v-prediction, every timestep's
    /// clean-latent error weighted by at least 1). A resumed run may change it.
    #[arg(long)]
    pub min_snr_gamma: Option<f64>,
    /// Phase `edit`: extra loss weight on the latent cells the edit changes (default 4: those
    /// cells count 5 times). 0 trains on the plain loss, whose optimum is the true mean of the
    /// answers: a weight that depends on the target biases the model towards painting an edit
    /// on every candidate it is unsure of. A resumed run may change it.
    #[arg(long)]
    pub change_weight: Option<f64>,
    /// Phase `edit`: the text encoder's learning rate (default: --lr, as the UNet's), under
    /// the same warmup and decay; kohya's `--text_encoder_lr`. Give it again when resuming.
    #[arg(long)]
    pub text_encoder_lr: Option<f64>,
    /// Phase `edit` on the generator: draw only these task families, comma-separated, each
    /// `name` or `name=weight` (e.g. referring_segmentation=2,keypoints); default: all, with
    /// the built-in recipe's weights. A new set needs a new run folder (its pool differs).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Phase `edit`: time each step's phases (batch, forward and backward, update), waiting
    /// for the device between them, and print their means with the progress lines.
    #[arg(long)]
    pub timing: bool,
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Write a dataset folder (diffusers InstructPix2Pix format) of generated samples.
    Synth(SynthArgs),
}

#[derive(Args, Debug, Clone)]
pub struct SynthArgs {
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of samples.
    #[arg(long, default_value_t = 100)]
    pub count: u64,
    /// First seed (samples are seeds first..first+count).
    #[arg(long, default_value_t = 0)]
    pub first_seed: u64,
    /// Image size in pixels.
    #[arg(long, default_value_t = 128)]
    pub size: u32,
    /// Only these task families, comma-separated, each `name` or `name=weight` (as
    /// `train edit --tasks`); default: all, with the built-in recipe's weights.
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
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
    /// Compute precision: f32, f16 or bf16 (f16/bf16 are for GPUs).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Compute attention in slices of this many heads to save memory on large images.
    #[arg(long)]
    pub attention_slice: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct EditArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The image to edit (never modified).
    #[arg(long)]
    pub image: PathBuf,
    /// The instruction, e.g. "make it snow".
    #[arg(long)]
    pub prompt: String,
    /// Where to write the result (.png keeps the settings as metadata).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// float32 .npy of unit-normal noise [1,4,H/8,W/8], used instead of the seeded noise.
    #[arg(long)]
    pub init_noise: Option<PathBuf>,
    /// Write settings, timings and peak memory as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Also write the model's own pixels, at the size it ran at, here.
    #[arg(long)]
    pub model_image: Option<PathBuf>,
    /// Refuse images with more pixels than this.
    #[arg(long, default_value_t = imageio::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
}

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

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Samples per task family.
    #[arg(long, default_value_t = 50)]
    pub per_task: usize,
    /// Scene size in pixels (the built-in model's is 128).
    #[arg(long, default_value_t = 128)]
    pub size: u32,
    /// Only these task families (comma-separated names, e.g. keypoints,remove).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Ask with held-out phrasings (never trained on) instead of the training templates.
    #[arg(long)]
    pub paraphrased: bool,
    /// Each task family with the model's guidance for it (the table `--save-guidance` wrote in
    /// its instructdiffusion.json, else the official recipe: segmentation 7.5 / 1.5, keypoints
    /// 6.0 / 0.5, watermark removal 1.0 / 1.0, the rest 5.0 / 1.25) instead of one setting.
    #[arg(long, conflicts_with_all = ["text_cfg", "image_cfg"])]
    pub task_guidance: bool,
    /// Evaluate at each of these guidance settings, TEXT:IMAGE (e.g. 1:1.25,5:1.25,7.5:1.5),
    /// and print each family's headline score per setting.
    #[arg(long, value_delimiter = ',', value_parser = parse_guidance_pair,
          conflicts_with_all = ["text_cfg", "image_cfg", "task_guidance"])]
    pub grid: Vec<(f64, f64)>,
    /// With --grid: record each family's best setting in the model folder's
    /// instructdiffusion.json, where the editor's task picker and `eval --task-guidance` read it,
    /// with the guidance rescale the grid ran at as the model's default.
    #[arg(long, requires = "grid")]
    pub save_guidance: bool,
    /// Score samples the model was trained on instead of held-out ones: each family's among
    /// the first N of the trainer's generated pool (`train edit --pool N`). Far above the
    /// held-out score: the network memorises; the same: it cannot fit even what it saw.
    #[arg(long, value_name = "N")]
    pub trained_on: Option<usize>,
    /// Score the targets passed through the model's autoencoder alone (no UNet): the ceiling
    /// the VAE sets on every metric.
    #[arg(long)]
    pub autoencoder_only: bool,
    /// Also keep every answer for the eye: DIR/TASK/NNN.png (source, target and answer side by
    /// side) and DIR/samples.jsonl (each sample's seed, instruction, the phrase a segmentation
    /// names, and its own score).
    #[arg(long, value_name = "DIR", conflicts_with = "grid")]
    pub samples_out: Option<PathBuf>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
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
            Command::Edit(args) => run_edit(&args),
            Command::Data(DataCommand::Synth(args)) => run_synth(&args),
            Command::Train(cmd) => run_train(&cmd),
            Command::Bench(args) => run_bench(&args),
            Command::Decode(args) => run_decode(&args),
            Command::Annotate(args) => run_annotate(&args),
            Command::Eval(args) => run_eval(&args),
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

/// Parses `--dtype`.
pub fn parse_dtype(name: &str) -> anyhow::Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => anyhow::bail!("unknown dtype '{other}' (use f32, f16 or bf16)"),
    }
}

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
    let opts = LoadOptions {
        device: parse_device(&args.device)?,
        dtype: parse_dtype(&args.dtype)?,
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

fn read_init_noise(path: &Path, device: &Device) -> anyhow::Result<candle_core::Tensor> {
    let t = candle_core::Tensor::read_npy(path).with_context(|| {
        format!(
            "reading initial noise '{}' (a float32 .npy)",
            path.display()
        )
    })?;
    if t.dtype() != DType::F32 {
        anyhow::bail!(
            "initial noise '{}' is {:?}, expected float32",
            path.display(),
            t.dtype()
        );
    }
    Ok(t.to_device(device)?)
}

fn run_edit(args: &EditArgs) -> anyhow::Result<()> {
    imageio::check_not_source(&args.out, &args.image)?;
    if let Some(p) = &args.model_image {
        imageio::check_not_source(p, &args.image)?;
    }
    let source = imageio::load_rgb(&args.image, args.max_pixels)?;
    let t_load = Instant::now();
    let model = load_model(&args.model)?;
    let load_s = t_load.elapsed().as_secs_f64();
    for note in &model.notes {
        eprintln!("note: {note}");
    }
    let plan = args.sampling.request(&args.prompt).validate(&model)?;
    if args.model_image.is_some() && pipeline::runs_tiled(&source, &plan) {
        anyhow::bail!(
            "--model-image: a tiled run has no picture at the model's size (it runs the photo at its own); add --full-res change or off for one"
        );
    }
    let init_noise = match &args.init_noise {
        Some(p) => Some(read_init_noise(p, &model.device)?),
        None => None,
    };
    let bar = indicatif::ProgressBar::new(plan.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps {elapsed_precise} eta {eta} {msg}",
        )
        .expect("static template"),
    );
    let mut on_step = |e: &pipeline::StepEvent| {
        match e.tile {
            Some((i, n)) => bar.set_message(format!("tile {i}/{n}")),
            None => bar.inc(1),
        }
        ControlFlow::Continue(())
    };
    let outcome = pipeline::edit(&model, &source, &plan, init_noise.as_ref(), &mut on_step)?;
    bar.finish_and_clear();
    let EditOutcome::Done(edited) = outcome else {
        anyhow::bail!("the edit was cancelled");
    };
    if edited.truncated_tokens > 0 {
        eprintln!(
            "note: the prompt is {} tokens too long for the text encoder; the end was ignored",
            edited.truncated_tokens
        );
    }
    let (mw, mh) = edited.model_size;
    let mut parameters = format!(
        "{}\nSteps: {}, Sampler: {}, CFG scale: {}, Image CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}, Guidance: {}",
        plan.prompt,
        plan.steps,
        plan.sampler.a1111_name(),
        plan.text_cfg,
        plan.image_cfg,
        plan.seed,
        mw,
        mh,
        model.source,
        plan.guidance.name()
    );
    if plan.guidance_rescale > 0.0 {
        // The key the CFG-rescale extension for AUTOMATIC1111 writes.
        parameters.push_str(&format!(", CFG Rescale: {}", plan.guidance_rescale));
    }
    parameters.push_str(&format!(", Full res: {}", edited.applied.describe()));
    let settings = json!({
        "plan": plan,
        "model": model.source,
        "model_size": [mw, mh],
        "full_res": edited.applied,
    });
    imageio::save(
        &edited.image,
        &args.out,
        &[
            ("parameters", parameters.clone()),
            ("instructdiffusion", settings.to_string()),
        ],
    )?;
    eprintln!(
        "wrote '{}' (seed {}, {} steps in {:.2} s; {})",
        args.out.display(),
        plan.seed,
        plan.steps,
        edited.timings.total_s,
        edited.applied.describe()
    );
    if let Some(path) = &args.model_image {
        let Some(own) = &edited.model_image else {
            unreachable!("checked before the run: tiled runs have no model-size picture");
        };
        imageio::save(own, path, &[("parameters", parameters)])?;
    }
    if let Some(path) = &args.report {
        let report = json!({
            "settings": plan,
            "model": model.source,
            "model_notes": model.notes,
            "device": args.model.device,
            "dtype": args.model.dtype,
            "input_size": [source.width(), source.height()],
            "model_size": [mw, mh],
            "output_size": [edited.image.width(), edited.image.height()],
            "full_res": edited.applied,
            "timings": {
                "load_s": load_s,
                "text_encode_s": edited.timings.text_encode_s,
                "vae_encode_s": edited.timings.vae_encode_s,
                "steps_s": edited.timings.steps_s,
                "vae_decode_s": edited.timings.vae_decode_s,
                "full_res_s": edited.timings.full_res_s,
                "edit_total_s": edited.timings.total_s,
            },
            "peak_memory_bytes": peak_memory_bytes(),
        });
        let text = serde_json::to_string_pretty(&report)?;
        imageio::write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}

fn run_synth(args: &SynthArgs) -> anyhow::Result<()> {
    if !(16..=1024).contains(&args.size) {
        anyhow::bail!("size must be between 16 and 1024, got {}", args.size);
    }
    let bar = indicatif::ProgressBar::new(args.count);
    let weights = if args.tasks.is_empty() {
        crate::data::sample::TaskWeights::default()
    } else {
        parse_task_weights(&args.tasks)?
    };
    let seeds = args.first_seed..args.first_seed + args.count;
    crate::data::dataset::write(&args.out, seeds, args.size, &weights, &mut |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    eprintln!("wrote {} samples to '{}'", args.count, args.out.display());
    Ok(())
}

/// `--lr-decay-from FROM` as the optimizer's `[from, to]`, checked against the run's length.
fn decay_until(from: Option<usize>, steps: usize) -> anyhow::Result<Option<[usize; 2]>> {
    match from {
        Some(from) if from >= steps => anyhow::bail!(
            "--lr-decay-from {from} is not before --steps {steps}: the decay runs from that step to the last"
        ),
        other => Ok(other.map(|from| [from, steps])),
    }
}

fn run_train(cmd: &TrainCommand) -> anyhow::Result<()> {
    use crate::train::{edit, vae, TrainEvent};
    let args = match cmd {
        TrainCommand::Vae(a) | TrainCommand::Edit(a) => a,
    };
    // The two phases share their flags; one meant for the other phase would do nothing.
    let (phase, other, foreign) = match cmd {
        TrainCommand::Vae(a) => (
            "vae",
            "edit",
            vec![
                ("--vae", a.vae.is_some()),
                ("--base", a.base.is_some()),
                ("--lora-rank", a.lora_rank.is_some()),
                ("--grow", a.grow),
                ("--unet-config", a.unet_config.is_some()),
                ("--text-encoder-config", a.text_encoder_config.is_some()),
                ("--text-encoder-from", a.text_encoder_from.is_some()),
                ("--prediction", a.prediction.is_some()),
                ("--data", a.data.is_some()),
                ("--pool", a.pool.is_some()),
                ("--tasks", !a.tasks.is_empty()),
                ("--min-snr-gamma", a.min_snr_gamma.is_some()),
                ("--change-weight", a.change_weight.is_some()),
                ("--text-encoder-lr", a.text_encoder_lr.is_some()),
                ("--zero-terminal-snr", a.zero_terminal_snr),
                ("--timing", a.timing),
            ],
        ),
        TrainCommand::Edit(a) => (
            "edit",
            "vae",
            vec![
                ("--crop", a.crop.is_some()),
                ("--decoder-only", a.decoder_only),
            ],
        ),
    };
    if let Some((flag, _)) = foreign.iter().find(|(_, given)| *given) {
        anyhow::bail!("{flag} is for `train {other}`, not `train {phase}`");
    }
    let device = crate::support::parse_device(&args.device)?;
    let log_every = args.log_every.max(1);
    let mut on_event = |e: &TrainEvent| match e {
        TrainEvent::Step {
            step,
            total,
            loss,
            grad_norm,
            lr,
            steps_per_s,
            eta_s,
        } => {
            if step % log_every == 0 || step == total {
                eprintln!(
                    "step {step}/{total} loss {loss:.5} grad-norm {grad_norm:.3} lr {lr:.2e} {steps_per_s:.2} steps/s eta {:.0} min",
                    eta_s / 60.0
                );
            }
        }
        TrainEvent::Checkpoint { step, dir } => {
            eprintln!("checkpoint at step {step} in '{}'", dir.display())
        }
        TrainEvent::Instructions { step, probe } => eprintln!(
            "instruction probe at step {step}: changed-cell error {:.4} with the \
             sample's own instruction, {:.4} with another's (ratio {:.2}); from pure noise \
             {:.3} of no edit's, spill {:.2}",
            probe.matched,
            probe.mismatched,
            probe.mismatched / probe.matched.max(1e-12),
            probe.from_noise,
            probe.spill
        ),
        TrainEvent::Samples { step, path } => {
            eprintln!("samples at step {step}: '{}'", path.display())
        }
        TrainEvent::Skipped { count, first } => {
            eprintln!("warning: {count} dataset line(s) left out, the first: {first}")
        }
        TrainEvent::Stopped { step } => eprintln!("stopped at step {step} (run again to resume)"),
        TrainEvent::Phases {
            step,
            steps,
            batch_s,
            passes_s,
            update_s,
        } => {
            if step % log_every == 0 {
                eprintln!(
                    "  mean step time over {steps} steps: batch {:.1} ms, forward and backward \
                     {:.1} ms, update {:.1} ms",
                    batch_s * 1e3,
                    passes_s * 1e3,
                    update_s * 1e3
                )
            }
        }
        TrainEvent::Pool { done, total } => {
            eprintln!(
                "sample pool: {done}/{total} chunks of {} samples ready",
                crate::train::pool::CHUNK
            )
        }
    };
    let result = match cmd {
        TrainCommand::Vae(a) => {
            let mut plan = vae::default_plan(a.out.clone());
            if let Some(c) = a.crop {
                plan.crop = (c > 0).then_some(c);
            }
            plan.decoder_only = a.decoder_only;
            plan.steps = a.steps.unwrap_or(plan.steps);
            plan.batch = a.batch.unwrap_or(plan.batch);
            plan.optim.lr = a.lr.unwrap_or(plan.optim.lr);
            plan.optim.decay = decay_until(a.lr_decay_from, plan.steps)?;
            plan.checkpoint_every = a.checkpoint_every.unwrap_or(plan.checkpoint_every).max(1);
            vae::train(&plan, &device, &mut on_event)
        }
        TrainCommand::Edit(a) => {
            let vae_dir = a.vae.clone().unwrap_or_else(|| match &a.base {
                Some(base) => base.join("vae"),
                None => a.out.join("../vae/vae"),
            });
            let mut plan = edit::default_plan(a.out.clone(), vae_dir);
            if let Some(base) = &a.base {
                let sched = edit::base_scheduler(base);
                plan.prediction = sched.prediction_type;
                plan.zero_terminal_snr = sched.rescale_betas_zero_snr;
            }
            plan.zero_terminal_snr |= a.zero_terminal_snr;
            if let Some(p) = &a.prediction {
                plan.prediction = match p.as_str() {
                    "epsilon" | "eps" => crate::settings::PredictionType::Epsilon,
                    "v" | "v_prediction" => crate::settings::PredictionType::VPrediction,
                    other => anyhow::bail!("--prediction is epsilon or v, not '{other}'"),
                };
            }
            plan.base = a.base.clone();
            if a.grow && (a.base.is_none() || a.lora_rank.is_some()) {
                anyhow::bail!(
                    "--grow fine-tunes a base model in full: pass --base, without --lora-rank"
                );
            }
            plan.grow = a.grow;
            plan.text_encoder_from = a.text_encoder_from.clone();
            plan.timing = a.timing;
            plan.data = a.data.clone();
            plan.lora_rank = a.lora_rank.unwrap_or(0);
            plan.steps = a.steps.unwrap_or(plan.steps);
            plan.batch = a.batch.unwrap_or(plan.batch);
            plan.pool = a.pool.unwrap_or(plan.pool);
            plan.min_snr_gamma = match a.min_snr_gamma {
                Some(g) if !g.is_finite() || g < 0.0 => {
                    anyhow::bail!("--min-snr-gamma is 0 (off) or a positive number, not {g}")
                }
                g => g.unwrap_or(plan.min_snr_gamma),
            };
            plan.change_weight = match a.change_weight {
                Some(w) if !w.is_finite() || w < 0.0 => {
                    anyhow::bail!("--change-weight is 0 (plain loss) or a positive number, not {w}")
                }
                w => w.unwrap_or(plan.change_weight),
            };
            if !a.tasks.is_empty() {
                plan.tasks = parse_task_weights(&a.tasks)?;
            }
            plan.optim.lr = a.lr.unwrap_or(plan.optim.lr);
            if let Some(lr) = a.text_encoder_lr {
                if !lr.is_finite() || lr < 0.0 {
                    anyhow::bail!("--text-encoder-lr is 0 (frozen) or a positive rate, not {lr}");
                }
                if plan.optim.lr <= 0.0 {
                    anyhow::bail!("--text-encoder-lr is relative to a positive --lr");
                }
                plan.optim.lr_scales = vec![("text_encoder.".into(), lr / plan.optim.lr)];
            }
            if a.base.is_some() {
                // A fine-tune's few hundred steps reach the rate asked for (as in the Training
                // window), not 500 steps of warmup.
                plan.optim.warmup_steps = plan.optim.warmup_steps.min(plan.steps / 10);
            }
            plan.optim.decay = decay_until(a.lr_decay_from, plan.steps)?;
            plan.checkpoint_every = a.checkpoint_every.unwrap_or(plan.checkpoint_every).max(1);
            let (unet, clip) = match &a.base {
                Some(base) => edit::base_configs(base)?,
                None => {
                    let from = a.text_encoder_from.as_ref();
                    let clip_config = from.map(|dir| dir.join("text_encoder/config.json"));
                    edit::scratch_configs(
                        &a.out,
                        a.unet_config.as_deref(),
                        a.text_encoder_config.as_deref().or(clip_config.as_deref()),
                    )?
                }
            };
            let never = std::sync::atomic::AtomicBool::new(false);
            edit::train(&plan, &unet, &clip, &device, &never, &mut on_event)
        }
    };
    result.map_err(|e| anyhow::anyhow!(e))
}

fn run_decode(args: &DecodeArgs) -> anyhow::Result<()> {
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

/// A task family by name.
fn parse_task(name: &str) -> anyhow::Result<crate::tasks::Task> {
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
fn parse_task_weights(items: &[String]) -> anyhow::Result<crate::data::sample::TaskWeights> {
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

fn parse_guidance_pair(s: &str) -> Result<(f64, f64), String> {
    let err = || format!("'{s}' is not TEXT:IMAGE guidance (e.g. 5:1.25)");
    let (t, i) = s.split_once(':').ok_or_else(err)?;
    let (t, i): (f64, f64) = (
        t.trim().parse().map_err(|_| err())?,
        i.trim().parse().map_err(|_| err())?,
    );
    if !(t.is_finite() && i.is_finite() && t >= 0.0 && i >= 0.0) {
        return Err(err());
    }
    Ok((t, i))
}

/// Writes the best settings of the `evaluated` families (`table`; one left out of it keeps the
/// official recipe) into a model folder's `instructdiffusion.json`, keeping the rest of it,
/// other families' recorded settings included.
fn save_task_guidance(
    spec: &str,
    model: &load::Model,
    evaluated: &[crate::tasks::Task],
    table: &std::collections::BTreeMap<crate::tasks::Task, [f64; 2]>,
    rescale: f64,
) -> anyhow::Result<PathBuf> {
    let dir = match ModelSource::parse(spec)? {
        ModelSource::Diffusers(dir) => dir,
        ModelSource::Builtin => load::builtin_dir(),
        other => anyhow::bail!(
            "--save-guidance writes into a diffusers folder; '{spec}' is {}",
            other.describe()
        ),
    };
    let mut defaults = model.defaults.clone();
    defaults.phrasing = Some(model.defaults.phrasing());
    // The table holds for the rescale it was measured with.
    defaults.guidance_rescale = rescale;
    for task in evaluated {
        match table.get(task) {
            Some(best) => defaults.task_guidance.insert(*task, *best),
            None => defaults.task_guidance.remove(task),
        };
    }
    let path = dir.join(crate::settings::DEFAULTS_FILE);
    let mut json = serde_json::to_string_pretty(&defaults)?;
    json.push('\n');
    imageio::write_atomic(&path, json.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn run_eval(args: &EvalArgs) -> anyhow::Result<()> {
    use crate::tasks::Task;
    let tasks = if args.tasks.is_empty() {
        Task::ALL.to_vec()
    } else {
        args.tasks
            .iter()
            .map(|n| parse_task(n))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    if args.trained_on == Some(0) {
        anyhow::bail!("--trained-on N takes the pool's size, at least 1");
    }
    if args.per_task == 0 || args.size < 64 {
        anyhow::bail!("--per-task must be at least 1 and --size at least 64");
    }
    let model = load_model(&args.model)?;
    let mut request = args.sampling.request("");
    // The report names the rescale a model's defaults bring, as one asked for.
    let rescale = model.defaults.guidance_rescale;
    if request.guidance_rescale.is_none() && rescale > 0.0 {
        request.guidance_rescale = Some(rescale);
    }
    let plan = crate::eval::EvalPlan {
        per_task: args.per_task,
        size: args.size,
        tasks,
        request: request.clone(),
        paraphrased: args.paraphrased,
        task_guidance: args.task_guidance,
        trained_on: args.trained_on,
    };
    let points: Vec<Option<(f64, f64)>> = if args.grid.is_empty() {
        vec![None]
    } else {
        args.grid.iter().copied().map(Some).collect()
    };
    let bar = indicatif::ProgressBar::new((plan.per_task * plan.tasks.len() * points.len()) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} samples {elapsed_precise} eta {eta} {msg}",
        )
        .expect("static template"),
    );
    let name = if args.autoencoder_only {
        format!("{} (autoencoder only)", model.source)
    } else {
        model.source.clone()
    };
    let mut reports = vec![];
    let mut lines = String::new();
    for point in &points {
        let mut plan = plan.clone();
        if let Some((t, i)) = point {
            (plan.request.text_cfg, plan.request.image_cfg) = (Some(*t), Some(*i));
        }
        let report = crate::eval::run(
            &plan,
            &name,
            |s| {
                if args.autoencoder_only {
                    crate::eval::autoencoder_answer(&model, s)
                } else {
                    crate::eval::edit_answer(&model, &plan.request_for(s.task, &model.defaults), s)
                }
            },
            |x| {
                bar.set_message(match point {
                    Some((t, i)) => format!("{} at {t}/{i}", x.task.name()),
                    None => x.task.name().to_string(),
                });
                bar.inc(1);
                if let Some(dir) = &args.samples_out {
                    lines.push_str(&keep_sample(dir, x)?);
                    lines.push('\n');
                }
                Ok(())
            },
        )?;
        bar.suspend(|| {
            if let Some((t, i)) = point {
                println!("guidance text {t} / image {i}");
            }
            print!("{}", crate::eval::table(&report));
        });
        reports.push(report);
    }
    bar.finish_and_clear();
    if let Some(dir) = &args.samples_out {
        let path = dir.join("samples.jsonl");
        imageio::write_atomic(&path, lines.as_bytes())?;
        println!("answers: {} (sheets), {}", dir.display(), path.display());
    }
    if let Some(path) = &args.json {
        // One report, or with --grid one per setting (an array, however many).
        let json = match reports.as_slice() {
            [one] if args.grid.is_empty() => serde_json::to_string_pretty(one)?,
            all => serde_json::to_string_pretty(all)?,
        };
        imageio::write_atomic(path, json.as_bytes())?;
    }
    if !args.grid.is_empty() {
        let grid: Vec<((f64, f64), crate::eval::Report)> =
            args.grid.iter().copied().zip(reports).collect();
        print!(
            "\nheadline score per guidance (text/image), best marked *\n{}",
            crate::eval::grid_table(&grid)
        );
        if args.save_guidance {
            let best = crate::eval::best_guidance(&grid);
            let rescale = plan.request.guidance_rescale.unwrap_or(0.0);
            let path = save_task_guidance(&args.model.model, &model, &plan.tasks, &best, rescale)?;
            println!(
                "saved {} families' guidance to {}",
                best.len(),
                path.display()
            );
        }
    }
    Ok(())
}

/// Writes `x`'s sheet under `dir` and returns its `samples.jsonl` line.
fn keep_sample(dir: &Path, x: &crate::eval::Scored) -> anyhow::Result<String> {
    let name = format!("{}/{:03}.png", x.task.name(), x.index);
    let path = dir.join(&name);
    std::fs::create_dir_all(path.parent().expect("has a folder"))
        .with_context(|| format!("creating {}", dir.display()))?;
    imageio::save(&crate::eval::sheet(x.sample, x.answer), &path, &[])?;
    Ok(serde_json::json!({
        "task": x.task.name(),
        "index": x.index,
        "seed": x.sample.seed,
        "instruction": x.sample.instruction,
        "phrase": x.sample.truth.phrase,
        "measure": crate::eval::sample_measure(x.task),
        "value": x.value,
        "sheet": name,
    })
    .to_string())
}

fn run_annotate(args: &AnnotateArgs) -> anyhow::Result<()> {
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

fn run_full_res_bench(args: &BenchArgs) -> anyhow::Result<()> {
    let model = load_model(&args.model)?;
    let steps = args.edit_steps.max(1);
    let json = if let Some(dir) = &args.full_res {
        let rows = crate::fullres::bench::photos(&model, dir, steps)?;
        eprint!("{}", crate::fullres::bench::photos_table(&rows));
        serde_json::to_string_pretty(&rows)?
    } else {
        let size = args.tiled.as_deref().unwrap_or_default();
        let (w, h) = size
            .split_once('x')
            .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
            .filter(|&(w, h)| w > 0 && h > 0)
            .ok_or_else(|| anyhow::anyhow!("--tiled wants a size like 4000x3000, got '{size}'"))?;
        let row = crate::fullres::bench::tiled(&model, w, h, steps)?;
        eprint!("{}", crate::fullres::bench::tiled_table(&row));
        serde_json::to_string_pretty(&row)?
    };
    if let Some(path) = &args.json {
        imageio::write_atomic(path, json.as_bytes())?;
    }
    Ok(())
}

fn run_bench(args: &BenchArgs) -> anyhow::Result<()> {
    if let Some(n) = args.ui_folder {
        let report = crate::app::bench::folder_frames(
            &args.model.model,
            n,
            args.edit_steps.max(1),
            args.seconds,
        )?;
        eprint!("{}", crate::app::bench::folder_table(&report));
        if let Some(path) = &args.json {
            imageio::write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
        }
        return Ok(());
    }
    if let Some(image) = &args.ui {
        let report = crate::app::bench::ui_frames(
            &args.model.model,
            image,
            args.edit_steps.max(1),
            args.resolution,
        )?;
        eprint!("{}", crate::app::bench::table(&report));
        if let Some(path) = &args.json {
            imageio::write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
        }
        return Ok(());
    }
    if let Some(dir) = &args.decode {
        let report = crate::bench::decode(dir, args.repeats)?;
        eprint!("{}", crate::bench::decode_table(&report));
        if let Some(path) = &args.json {
            imageio::write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
        }
        return Ok(());
    }
    if args.full_res.is_some() || args.tiled.is_some() {
        return run_full_res_bench(args);
    }
    if let (Some(arch), Some(dir)) = (&args.random, &args.save_random) {
        crate::bench::save_random(arch, dir)?;
        eprintln!("wrote random {arch} weights to '{}'", dir.display());
        return Ok(());
    }
    if args.load_only {
        let t0 = Instant::now();
        let model = load_model(&args.model)?;
        let load_s = t0.elapsed().as_secs_f64();
        let peak = crate::support::peak_memory_bytes();
        eprintln!(
            "loaded {} ({:?}) in {load_s:.2} s; peak memory {}",
            model.source,
            model.dtype,
            peak.map_or("unknown".into(), |b| format!(
                "{:.2} GiB",
                b as f64 / (1u64 << 30) as f64
            ))
        );
        if let Some(path) = &args.json {
            let j = json!({ "model": model.source, "load_s": load_s, "peak_memory_bytes": peak });
            imageio::write_atomic(path, j.to_string().as_bytes())?;
        }
        return Ok(());
    }
    if !args.resolution.is_multiple_of(64) || args.resolution == 0 || args.repeats == 0 {
        anyhow::bail!("--resolution must be a positive multiple of 64 and --repeats at least 1");
    }
    let model = match &args.random {
        Some(arch) => crate::bench::random_model(
            arch,
            &parse_device(&args.model.device)?,
            parse_dtype(&args.model.dtype)?,
        )?,
        None => load_model(&args.model)?,
    };
    let mut report = crate::bench::run(
        &model,
        args.resolution,
        args.repeats,
        args.edit_steps.max(1),
    )?;
    if args.random.as_deref() == Some("tiny") {
        let latent = args.resolution / crate::model::vae::VaeConfig::tiny().downscale();
        report.rows.push(crate::bench::train_step(
            latent,
            8,
            args.repeats,
            &model.device,
        )?);
        report.peak_memory_bytes = crate::support::peak_memory_bytes();
    }
    eprint!("{}", crate::bench::table(&report));
    if let Some(path) = &args.json {
        imageio::write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    if let (Some(path), Some(image)) = (&args.save_edit, &report.edited) {
        imageio::save(image, path, &[])?;
    }
    Ok(())
}
