//! `instructdiffusion bench`: times each stage of an edit (text encode, VAE encode, one guided
//! UNet step on a batch of three, VAE decode, a whole edit) with repeats, and reports medians,
//! spread, peak memory and thread settings. `tools/bench/pytorch_bench.py` times the same work
//! in PyTorch + diffusers and prints the ratio per row.
//!
//! Models can be loaded or built with seeded random weights in a named architecture
//! (`sd15`, `tiny`), so the SD 1.5-size figures need no download.

pub mod products;

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::Serialize;

use crate::model::clip::{ClipConfig, ClipTextModel, ClipTokenizer};
use crate::model::load::Model;
use crate::model::unet::{UNet2DConditionModel, UNetConfig};
use crate::model::vae::{AutoencoderKL, VaeConfig};
use crate::sample::denoiser::{Denoiser, EpsDenoiser};
use crate::sample::guidance::Guided;
use crate::sample::pipeline::{self, EditRequest};
use crate::sample::samplers::Sampler;
use crate::sample::schedule::DiscreteSchedule;
use crate::settings::{GuidanceFormula, SamplingDefaults, SchedulerConfig};

/// Weights given out once each (then dropped here).
struct Handover(std::sync::Mutex<std::collections::HashMap<String, Tensor>>);

impl candle_nn::var_builder::SimpleBackend for Handover {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!("random weight '{name}': {:?}, built as {s:?}", t.dims())
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut map = self
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        match map.remove(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => candle_core::bail!("random weight '{name}' missing or asked for twice"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.lock().is_ok_and(|m| m.contains_key(name))
    }
}

/// A model with seeded random weights in a named architecture, computing in `dtype`. The
/// weights are drawn on the host, so every device gets the same model.
/// Seeded random weights in a named architecture: the configs and every tensor, under
/// `unet.`, `vae.` and `text_encoder.` prefixes.
#[allow(clippy::type_complexity)]
pub fn random_weights(
    arch: &str,
    device: &Device,
) -> anyhow::Result<(
    (UNetConfig, VaeConfig, ClipConfig),
    std::collections::HashMap<String, Tensor>,
)> {
    let (unet_cfg, vae_cfg, clip_cfg) = match arch {
        "sd15" => (
            UNetConfig::sd15_instruct(),
            VaeConfig::sd15(),
            ClipConfig::vit_l_14(),
        ),
        "tiny" => (
            UNetConfig::tiny(),
            VaeConfig {
                scaling_factor: 1.0,
                ..VaeConfig::tiny()
            },
            ClipConfig::tiny(),
        ),
        other => anyhow::bail!("unknown architecture '{other}' (use sd15 or tiny)"),
    };
    let varmap = VarMap::new();
    {
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        UNet2DConditionModel::new(&unet_cfg, None, vb.pp("unet"))?;
        AutoencoderKL::new(&vae_cfg, vb.pp("vae"))?;
        ClipTextModel::new(&clip_cfg, vb.pp("text_encoder"))?;
    }
    crate::train::init_weights(&varmap, 0)?;
    let tensors: std::collections::HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("the random weights' lock was poisoned"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    Ok(((unet_cfg, vae_cfg, clip_cfg), tensors))
}

/// Writes seeded random weights in `arch` as a diffusers folder at `dir`, in f32 (the loading
/// benchmark's input: `bench --model DIR --load-only`).
pub fn save_random(arch: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    let ((unet_cfg, vae_cfg, clip_cfg), tensors) = random_weights(arch, &Device::Cpu)?;
    let write_json = |p: std::path::PathBuf, v: &serde_json::Value| -> anyhow::Result<()> {
        std::fs::create_dir_all(p.parent().expect("has a parent"))?;
        Ok(crate::imageio::write_atomic(
            &p,
            serde_json::to_string_pretty(v)?.as_bytes(),
        )?)
    };
    for (prefix, file) in [
        ("unet.", "unet/diffusion_pytorch_model.safetensors"),
        ("vae.", "vae/diffusion_pytorch_model.safetensors"),
        ("text_encoder.", "text_encoder/model.safetensors"),
    ] {
        let part: std::collections::HashMap<String, Tensor> = tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
            .collect();
        crate::train::checkpoint::save_weights(&part, &dir.join(file), false)?;
    }
    write_json(dir.join("unet/config.json"), &unet_cfg.to_json())?;
    write_json(dir.join("vae/config.json"), &vae_cfg.to_json())?;
    write_json(dir.join("text_encoder/config.json"), &clip_cfg.to_json())?;
    write_json(
        dir.join("model_index.json"),
        &serde_json::json!({
            "_class_name": "StableDiffusionInstructPix2PixPipeline",
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"]
        }),
    )?;
    Ok(())
}

pub fn random_model(arch: &str, device: &Device, dtype: DType) -> anyhow::Result<Model> {
    let ((unet_cfg, vae_cfg, clip_cfg), tensors) = random_weights(arch, device)?;
    // Built again on plain tensors: weights that are trainable variables would send every
    // forward pass down the gradient-tracking paths (composed softmax and layer norm), which
    // a loaded model never takes.
    // Each weight handed over once and forgotten, as a load from disk does: a map kept whole
    // would hold the originals of the transposed linear weights until the end (1 GB at SD 1.5).
    let vb = VarBuilder::from_backend(
        Box::new(Handover(std::sync::Mutex::new(tensors))),
        dtype,
        device.clone(),
    );
    let unet = UNet2DConditionModel::new(&unet_cfg, None, vb.pp("unet"))?;
    let vae = AutoencoderKL::new(&vae_cfg, vb.pp("vae"))?;
    let text_encoder = ClipTextModel::new(&clip_cfg, vb.pp("text_encoder"))?;
    Ok(Model {
        unet,
        vae,
        text_encoder,
        tokenizer: ClipTokenizer::bundled(clip_cfg.max_position_embeddings),
        scheduler: SchedulerConfig::default(),
        defaults: SamplingDefaults::instructdiffusion(),
        device: device.clone(),
        dtype: crate::model::nn::compute_dtype_for(dtype, device),
        weights_dtype: dtype,
        source: format!("random {arch}"),
        notes: vec![],
    })
}

/// Times one training step of the `tiny` architecture's UNet and text encoder (the built-in
/// model's edit phase, without its VAE: latents of `latent` x `latent`): forward, backward,
/// AdamW with gradient clipping and EMA, on `batch` random samples with per-sample timesteps.
pub fn train_step(
    latent: usize,
    batch: usize,
    repeats: usize,
    device: &Device,
) -> anyhow::Result<Row> {
    use crate::train::optim::{AdamW, AdamWConfig};
    let (unet_cfg, clip_cfg) = (UNetConfig::tiny(), ClipConfig::tiny());
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let unet = UNet2DConditionModel::new(&unet_cfg, None, vb.pp("unet"))?;
    let clip = ClipTextModel::new(&clip_cfg, vb.pp("text_encoder"))?;
    crate::train::init_weights(&varmap, 0)?;
    let cfg = AdamWConfig {
        warmup_steps: 0,
        ..Default::default()
    };
    let mut opt = AdamW::over(&varmap, cfg)?;
    let tokenizer = ClipTokenizer::bundled(clip_cfg.max_position_embeddings);
    let prompts = [
        "paint the red circle blue",
        "remove the star",
        "mark the left knee",
    ];
    let mut ids = Vec::new();
    for i in 0..batch {
        ids.extend(
            tokenizer
                .encode(prompts[i % prompts.len()])
                .map_err(anyhow::Error::msg)?,
        );
    }
    let ids = Tensor::from_vec(ids, (batch, clip_cfg.max_position_embeddings), device)?;
    let c = unet_cfg.out_channels;
    let shape = (batch, c, latent, latent);
    let (noisy, source) = (
        Tensor::randn(0f32, 1.0, shape, device)?,
        Tensor::randn(0f32, 1.0, shape, device)?,
    );
    let target = Tensor::randn(0f32, 1.0, shape, device)?;
    let t = Tensor::from_vec(
        (0..batch).map(|i| (i * 997 % 1000) as f32).collect(),
        batch,
        device,
    )?;
    time(
        &format!("train step, batch {batch} (unet + text encoder)"),
        repeats,
        device,
        || {
            // As the trainer runs it: one share of the batch per thread on this narrow model.
            let input = Tensor::cat(&[&noisy, &source], 1)?;
            let elems = target.elem_count() as f64;
            let (_, grads) = crate::train::backward_in_shares(batch, true, |r| {
                let share = |x: &Tensor| x.narrow(0, r.start, r.len());
                let text = clip.forward(&share(&ids)?)?;
                let pred = unet.forward(&share(&input)?, &share(&t)?, &text)?;
                (pred - share(&target)?)?.sqr()?.sum_all()? / elems
            })?;
            opt.step(&grads)?;
            Ok(())
        },
    )
}

/// One timed row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub runs_s: Vec<f64>,
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    /// The weights' precision ("f32", "bf16", ...) and how the products run.
    pub precision: String,
    pub resolution: usize,
    pub threads: String,
    pub rows: Vec<Row>,
    pub peak_memory_bytes: Option<u64>,
    /// The whole-edit row's result (the last run), for comparing devices.
    #[serde(skip)]
    pub edited: Option<image::RgbImage>,
}

/// Times `f`; on a GPU each run waits for the device's queued work before the clock stops.
fn time(
    name: &str,
    repeats: usize,
    dev: &Device,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Row> {
    f()?; // warm-up, not counted
    dev.synchronize()?;
    let mut runs = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t0 = Instant::now();
        f()?;
        dev.synchronize()?;
        runs.push(t0.elapsed().as_secs_f64());
    }
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(Row {
        name: name.to_string(),
        median_s: sorted[sorted.len() / 2],
        min_s: sorted[0],
        max_s: sorted[sorted.len() - 1],
        runs_s: runs,
    })
}

/// Times every stage at `resolution` (a square image), `repeats` times each after a warm-up;
/// the whole edit runs `edit_steps` euler steps.
pub fn run(
    model: &Model,
    resolution: usize,
    repeats: usize,
    edit_steps: usize,
) -> anyhow::Result<Report> {
    let n = resolution as u32;
    let image = image::RgbImage::from_fn(n, n, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let prompt = "turn the cat into a tiger";
    let dev = &model.device;
    let mut rows = Vec::new();
    rows.push(time("text encode (2 prompts)", repeats, dev, || {
        pipeline::condition_text(model, prompt)?;
        Ok(())
    })?);
    let pixels = pipeline::image_to_tensor(&image, dev, model.dtype)?;
    rows.push(time("vae encode", repeats, dev, || {
        model.vae.encode_mean(&pixels)?;
        Ok(())
    })?);
    let (cond, _, _) = pipeline::condition(model, prompt, &image)?;
    let eps = EpsDenoiser {
        unet: &model.unet,
        schedule: DiscreteSchedule::new(&model.scheduler),
        prediction: model.scheduler.prediction_type,
    };
    let guided = Guided::new(&eps, &cond, GuidanceFormula::InstructDiffusion, 5.0, 1.25)?;
    let x = Tensor::randn(0f32, 1.0, cond.image.shape(), dev)?.to_dtype(model.dtype)?;
    rows.push(time(
        "unet step, 3-way guidance (batch 3)",
        repeats,
        dev,
        || {
            guided.denoise(&x, 1.5)?;
            Ok(())
        },
    )?);
    rows.push(time("vae decode", repeats, dev, || {
        pipeline::decode(model, &x)?;
        Ok(())
    })?);
    let req = EditRequest {
        prompt: prompt.into(),
        steps: Some(edit_steps),
        sampler: Some(Sampler::Euler),
        seed: Some(0),
        resolution: Some(resolution),
        keep_model_resolution: true,
        ..Default::default()
    };
    let plan = req.validate(model)?;
    let mut edited = None;
    rows.push(time(
        &format!("whole edit, {edit_steps} euler steps"),
        repeats,
        dev,
        || {
            let outcome = pipeline::edit(model, &image, &plan, None, &mut |_| {
                std::ops::ControlFlow::Continue(())
            })?;
            if let pipeline::EditOutcome::Done(done) = outcome {
                edited = Some(done.image);
            }
            Ok(())
        },
    )?);
    let threads = format!(
        "CANDLE_NUM_THREADS={} RAYON_NUM_THREADS={} (cores: {})",
        std::env::var("CANDLE_NUM_THREADS").unwrap_or_else(|_| "unset".into()),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into()),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    Ok(Report {
        model: model.source.clone(),
        precision: precision(model),
        resolution,
        threads,
        rows,
        peak_memory_bytes: crate::support::peak_memory_bytes(),
        edited,
    })
}

/// The weights' dtype, and for bf16 on the CPU which kernel runs the products.
pub fn precision(model: &Model) -> String {
    let name = format!("{:?}", model.weights_dtype).to_lowercase();
    if model.device.is_cpu() && model.weights_dtype == DType::BF16 {
        let kernel = crate::model::kernels::bf16::Bf16Kernel::detect();
        return format!("{name} ({kernel:?} products)");
    }
    name
}

/// The report as a table for stderr.
pub fn table(r: &Report) -> String {
    let mut s = format!(
        "model: {}, {}, {}x{} px, {}\n",
        r.model, r.precision, r.resolution, r.resolution, r.threads
    );
    s.push_str(&rows_table(&r.rows, "s", 1.0, 3));
    if let Some(p) = r.peak_memory_bytes {
        s.push_str(&format!(
            "peak memory: {:.2} GiB\n",
            p as f64 / (1u64 << 30) as f64
        ));
    }
    s
}

/// The decoder's figures: quality on the perturbed set and time per answer.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeReport {
    pub photos: usize,
    pub quality: crate::decode::quality::Report,
    pub untouched_quality: crate::decode::quality::Report,
    /// Instructions of each phrasing set decoded right (256 px, as the released model works).
    pub phrasings: Vec<crate::decode::phrasings::Rate>,
    pub rows: Vec<Row>,
}

/// Measures the decoder on the photos in `dir` at 512 px.
pub fn decode(dir: &std::path::Path, repeats: usize) -> anyhow::Result<DecodeReport> {
    use crate::decode::{parse::Kind, quality};
    let mut photos = vec![];
    let entries = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read the photo folder '{}': {e}", dir.display()))?;
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if let Ok(img) = crate::imageio::load_rgb(&path, 64 << 20) {
            photos.push(img);
        }
    }
    if photos.is_empty() {
        anyhow::bail!("no readable images in '{}'", dir.display());
    }
    let quality = quality::run(&photos, 10, 512, &quality::Perturb::STANDARD, 1);
    let untouched_quality = quality::run(&photos, 10, 512, &quality::Perturb::NONE, 1);
    let base = quality::square(&photos[0], 512);
    let mut rows = vec![];
    for (name, kind) in [
        ("decode segmentation 512 px (1-3 masks)", Kind::Segmentation),
        ("decode keypoints 512 px (1-5 discs)", Kind::Keypoints),
    ] {
        let pairs: Vec<_> = (0..8).map(|s| quality::example(&base, kind, s)).collect();
        let mut i = 0;
        rows.push(time(name, repeats.max(8), &Device::Cpu, || {
            let (answer, parsed) = &pairs[i % pairs.len()];
            i += 1;
            crate::decode::decode(&base, answer, parsed)?;
            Ok(())
        })?);
    }
    // The whole reading of a typed instruction: the words, then the pixels where they name no
    // colour (every candidate colour tried).
    for (name, text) in [
        (
            "read + decode 512 px (an InstructDiffusion sentence)",
            "Mark the pixels of dog in blue and keep the rest unchanged.",
        ),
        (
            "read by the pixels 512 px (no colour named)",
            "Segment the dog.",
        ),
    ] {
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(5);
        use crate::decode::phrasings as ph;
        let masks = ph::blobs(&mut rng, &base, [0, 0, 255], 2);
        let mut answer = base.clone();
        masks
            .iter()
            .for_each(|m| ph::blend(&mut answer, m, [0, 0, 255]));
        let answer = ph::disturb(&answer, &mut rng);
        rows.push(time(name, repeats.max(8), &Device::Cpu, || {
            crate::decode::read(&base, &answer, text)?;
            Ok(())
        })?);
    }
    let phrasings = crate::decode::phrasings::rates(&photos, 256, 40, 1);
    Ok(DecodeReport {
        photos: photos.len(),
        quality,
        untouched_quality,
        phrasings,
        rows,
    })
}

/// The decoder's report as a table for stderr.
pub fn decode_table(r: &DecodeReport) -> String {
    let mut s = format!("overlay decoder, {} photos at 512 px\n", r.photos);
    s.push_str(&format!(
        "{:<28} {:>9} {:>9} {:>11} {:>13} {:>10}\n",
        "set", "mean IoU", "min IoU", "kp found", "kp err px", "false pos"
    ));
    for (name, q) in [("perturbed", &r.quality), ("clean", &r.untouched_quality)] {
        s.push_str(&format!(
            "{:<28} {:>9.4} {:>9.4} {:>5}/{:<5} {:>6.2} (max {:.1}) {:>4}/{:<4}\n",
            name,
            q.mean_iou,
            q.min_iou,
            q.keypoints_found,
            q.keypoints,
            q.mean_keypoint_error_px,
            q.max_keypoint_error_px,
            q.false_positives,
            q.untouched
        ));
    }
    s.push_str(&format!(
        "{:<48} {:>9}\n",
        "phrasing set (256 px)", "decoded"
    ));
    for p in &r.phrasings {
        s.push_str(&format!("{:<48} {:>4}/{:<4}\n", p.set, p.right, p.cases));
    }
    s.push_str(&rows_table(&r.rows, "ms", 1e3, 2));
    s
}

/// Timed rows as a table: median, min and max in `unit` (seconds times `scale`).
fn rows_table(rows: &[Row], unit: &str, scale: f64, decimals: usize) -> String {
    let mut s = format!(
        "{:<40} {:>10} {:>10} {:>10}\n",
        "stage",
        format!("median {unit}"),
        format!("min {unit}"),
        format!("max {unit}")
    );
    for row in rows {
        s.push_str(&format!(
            "{:<40} {:>10.d$} {:>10.d$} {:>10.d$}\n",
            row.name,
            row.median_s * scale,
            row.min_s * scale,
            row.max_s * scale,
            d = decimals
        ));
    }
    s
}
