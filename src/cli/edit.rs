//! `instructdiffusion edit`: one image, one instruction, one result file.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device};
use clap::Args;
use serde_json::json;

use crate::imageio;
use crate::sample::pipeline::{self, EditOutcome};
use crate::support::peak_memory_bytes;

use super::{load_model, ModelArgs, SamplingArgs};

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

pub(super) fn run_edit(args: &EditArgs) -> anyhow::Result<()> {
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
            "mapped_tensors": crate::model::load::mapped::mapped_count(),
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
