//! `instructdiffusion bench`: timings and memory of each stage, the decoder, full resolution,
//! loading and the editor's frames.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use crate::imageio;
use crate::support::parse_device;

use super::{load_model, parse_dtype, ModelArgs};

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
    /// Instead: the layers' bf16 products alone on SD 1.5's shapes at 256 px (GFLOP/s each;
    /// `tools/bench/pytorch_products.py` times PyTorch's on the same shapes).
    #[arg(long)]
    pub products: bool,
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

pub(super) fn run_full_res_bench(args: &BenchArgs) -> anyhow::Result<()> {
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

pub(super) fn run_bench(args: &BenchArgs) -> anyhow::Result<()> {
    if let Some(n) = args.ui_folder {
        let report = crate::app::bench::folder_frames(
            &args.model.model,
            n,
            args.edit_steps.max(1),
            args.resolution,
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
    if args.products {
        let report = crate::bench::products::run(args.repeats)?;
        eprint!("{}", crate::bench::products::table(&report));
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
            "loaded {} ({}) in {load_s:.2} s; peak memory {}",
            model.source,
            crate::bench::precision(&model),
            peak.map_or("unknown".into(), |b| format!(
                "{:.2} GiB",
                b as f64 / (1u64 << 30) as f64
            ))
        );
        if let Some(path) = &args.json {
            let j = json!({
                "model": model.source,
                "precision": crate::bench::precision(&model),
                "load_s": load_s,
                "peak_memory_bytes": peak,
            });
            imageio::write_atomic(path, j.to_string().as_bytes())?;
        }
        return Ok(());
    }
    if !args.resolution.is_multiple_of(64) || args.resolution == 0 || args.repeats == 0 {
        anyhow::bail!("--resolution must be a positive multiple of 64 and --repeats at least 1");
    }
    let model = match &args.random {
        Some(arch) => {
            let device = parse_device(&args.model.device)?;
            let dtype = parse_dtype(&args.model.dtype, &device)?;
            crate::bench::random_model(arch, &device, dtype)?
        }
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
