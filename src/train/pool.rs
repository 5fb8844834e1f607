//! A pool of training samples encoded once: generated scenes stored as their VAE latents,
//! instruction and change map, so an edit-training step runs no generator and no VAE.
//!
//! Encoding a 128 px source and target through the VAE cost about a third of a training step;
//! with the pool each sample is encoded once and drawn many times. The pool lives in
//! `OUT/pool/` as chunks of [`CHUNK`] samples (`chunk_NNNNN.safetensors` + `.json`, each written
//! atomically, the JSON last), so building it resumes chunk by chunk. Every chunk records the
//! fingerprint of the VAE that encoded it: a different VAE rebuilds it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::checkpoint::save_weights;
use super::{images_to_tensor, sample_seed};
use crate::data::dataset::{read, Record};
use crate::data::sample::{generate, TaskWeights};
use crate::model::vae::AutoencoderKL;

/// Samples per chunk file.
pub const CHUNK: usize = 256;

/// The encoded samples, all in memory.
pub struct Pool {
    /// Source latents (posterior means, unscaled), `(n, c, h, w)`.
    pub source: Tensor,
    /// Target latents (posterior means times the scaling factor), `(n, c, h, w)`.
    pub target: Tensor,
    /// 1 where the edit changes the image (any channel by more than 0.04 in `[-1, 1]` within
    /// the latent cell), else 0: `(n, 1, h, w)`.
    pub changed: Tensor,
    pub prompts: Vec<String>,
    /// Dataset lines left out, with the reason (an unreadable image, ...).
    pub skipped: Vec<String>,
}

impl Pool {
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }
}

/// Where a pool's samples come from.
#[derive(Debug, Clone)]
pub enum PoolSource<'a> {
    /// `samples` generated scenes of the training seed stream of `seed`.
    Generator {
        seed: u64,
        samples: usize,
        tasks: &'a TaskWeights,
    },
    /// Every line of a dataset folder's `metadata.jsonl`.
    Dataset(&'a Path),
}

/// What a pool is built from.
#[derive(Debug, Clone)]
pub struct PoolSpec<'a> {
    pub dir: PathBuf,
    pub source: PoolSource<'a>,
    /// Side of the square images, in pixels.
    pub size: u32,
    /// The VAE folder, fingerprinted into every chunk.
    pub vae_dir: &'a Path,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ChunkMeta {
    vae: String,
    size: u32,
    /// What each sample was made from: a seed, or a dataset line with its files' sizes and
    /// modification times (an edited file rebuilds the chunk).
    keys: Vec<String>,
    tasks: Vec<String>,
    prompts: Vec<String>,
    #[serde(default)]
    skipped: Vec<String>,
}

/// One sample to encode.
enum Item {
    Seed(u64),
    Line(Box<Record>),
}

impl Item {
    fn key(&self, root: &Path) -> String {
        match self {
            // The generator's version too: a sample of the same seed from another version of
            // the generator is another sample.
            Item::Seed(s) => match crate::data::sample::GENERATOR_VERSION {
                1 => s.to_string(),
                v => format!("{s} v{v}"),
            },
            Item::Line(r) => {
                let stamp = |f: &str| {
                    std::fs::metadata(root.join(f))
                        .map(|m| {
                            let t = m
                                .modified()
                                .ok()
                                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                                .map_or(0, |d| d.as_nanos());
                            format!("{}@{t}", m.len())
                        })
                        .unwrap_or_else(|_| "missing".into())
                };
                format!(
                    "{}|{}|{}|{}|{}",
                    r.input_image,
                    stamp(&r.input_image),
                    r.edited_image,
                    stamp(&r.edited_image),
                    r.edit_prompt
                )
            }
        }
    }

    /// `(source, target, instruction, task)`, or why the line is left out.
    fn realize(
        &self,
        root: &Path,
        size: u32,
        tasks: &TaskWeights,
    ) -> Result<(RgbImage, RgbImage, String, String), String> {
        match self {
            Item::Seed(seed) => {
                let s = generate(*seed, size, tasks);
                Ok((s.input, s.target, s.instruction, s.task.name().to_string()))
            }
            Item::Line(r) => {
                let load = |f: &str| {
                    crate::imageio::load_rgb(&root.join(f), crate::imageio::DEFAULT_MAX_PIXELS)
                        .map(|img| square(&img, size))
                        .map_err(|e| e.to_string())
                };
                let task = r
                    .task
                    .map_or("dataset".to_string(), |t| t.name().to_string());
                Ok((
                    load(&r.input_image)?,
                    load(&r.edited_image)?,
                    r.edit_prompt.clone(),
                    task,
                ))
            }
        }
    }
}

/// The centre square of `img`, resized to `size` pixels.
fn square(img: &RgbImage, size: u32) -> RgbImage {
    let side = img.width().min(img.height());
    let crop = image::imageops::crop_imm(
        img,
        (img.width() - side) / 2,
        (img.height() - side) / 2,
        side,
        side,
    )
    .to_image();
    if side == size {
        crop
    } else {
        crate::imageio::resize_exact(&crop, size, size)
    }
}

/// Which encoder made a chunk's latents: FNV-1a over the VAE's config (the scaling factor to
/// four digits) and its encoder-side weights. A decoder trained on (`train vae
/// --decoder-only`) leaves it unchanged, so the pool stays valid.
pub fn vae_fingerprint(dir: &Path) -> anyhow::Result<String> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    };
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path)
            .map_err(|e| anyhow::anyhow!("reading the VAE '{}': {e}", cfg_path.display()))?,
    )?;
    if let Some(f) = cfg.get("scaling_factor").and_then(|v| v.as_f64()) {
        cfg["scaling_factor"] = format!("{f:.4e}").into();
    }
    eat(cfg.to_string().as_bytes());
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
        .map_err(|e| anyhow::anyhow!("reading the VAE '{}': {e}", weights.display()))?;
    let mut names: Vec<&String> = tensors
        .keys()
        .filter(|k| super::vae::is_encoder_weight(k))
        .collect();
    names.sort();
    for name in names {
        eat(name.as_bytes());
        let values = tensors[name]
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for v in values {
            eat(&v.to_le_bytes());
        }
    }
    Ok(format!("{h:016x}"))
}

/// `(n, 1, h/f, w/f)` 0/1 map of the latent cells where `source` and `target` differ.
pub fn change_map(src: &Tensor, tgt: &Tensor, f: usize) -> candle_core::Result<Tensor> {
    (src - tgt)?
        .abs()?
        .max_keepdim(1)?
        .gt(0.04)?
        .to_dtype(DType::F32)?
        .max_pool2d(f)
}

/// Loads the pool of `spec`, first building (or rebuilding) the chunks it lacks;
/// `on_progress(done, total)` after each chunk.
/// The seeds of a generated pool of `samples` from the trainer's seed `seed`, in pool order.
pub fn generator_seeds(seed: u64, samples: usize) -> impl Iterator<Item = u64> {
    (0..samples).map(move |k| sample_seed(seed, 0, 1, k))
}

pub fn build_or_load(
    spec: &PoolSpec,
    vae: &AutoencoderKL,
    device: &Device,
    on_progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Pool> {
    let fingerprint = vae_fingerprint(spec.vae_dir)?;
    let (items, root, tasks): (Vec<Item>, PathBuf, TaskWeights) = match &spec.source {
        PoolSource::Generator {
            seed,
            samples,
            tasks,
        } => (
            generator_seeds(*seed, *samples).map(Item::Seed).collect(),
            PathBuf::new(),
            (*tasks).clone(),
        ),
        PoolSource::Dataset(dir) => (
            read(dir)?
                .into_iter()
                .map(|r| Item::Line(Box::new(r)))
                .collect(),
            dir.to_path_buf(),
            TaskWeights::default(),
        ),
    };
    // A generated sample depends on the task weights too: a pool drawn with other weights is
    // rebuilt (the built-in recipe's weights keep the plain seed keys of earlier pools).
    let suffix = if tasks == TaskWeights::default() {
        String::new()
    } else {
        format!(" {}", serde_json::to_string(&tasks)?)
    };
    let chunks = items.len().div_ceil(CHUNK);
    let (mut source, mut target, mut changed) = (vec![], vec![], vec![]);
    let (mut prompts, mut skipped) = (vec![], vec![]);
    for (i, group) in items.chunks(CHUNK).enumerate() {
        let keys: Vec<String> = group.iter().map(|it| it.key(&root) + &suffix).collect();
        let path = spec.dir.join(format!("chunk_{i:05}.safetensors"));
        let meta: Option<ChunkMeta> = std::fs::read_to_string(path.with_extension("json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok());
        let fresh = meta
            .as_ref()
            .is_some_and(|m| m.vae == fingerprint && m.size == spec.size && m.keys == keys);
        let loaded = match (fresh, meta) {
            (true, Some(m)) if m.prompts.is_empty() => Some((Tensors::new(), m)),
            (true, Some(m)) => candle_core::safetensors::load(&path, device)
                .ok()
                .map(|t| (t, m)),
            _ => None,
        };
        let (tensors, meta) = match loaded {
            Some(x) => x,
            None => {
                let ctx = ChunkContext {
                    spec,
                    root: &root,
                    tasks: &tasks,
                    fingerprint: &fingerprint,
                };
                build_chunk(&ctx, vae, device, group, keys, &path)?
            }
        };
        skipped.extend(meta.skipped);
        if meta.prompts.is_empty() {
            on_progress(i + 1, chunks);
            continue;
        }
        let get = |k: &str| -> anyhow::Result<Tensor> {
            let t = tensors.get(k).ok_or_else(|| {
                anyhow::anyhow!("pool chunk '{}' lacks '{k}': delete it", path.display())
            })?;
            Ok(t.to_dtype(DType::F32)?)
        };
        source.push(get("source")?);
        target.push(get("target")?);
        changed.push(get("changed")?);
        prompts.extend(meta.prompts);
        on_progress(i + 1, chunks);
    }
    if prompts.is_empty() {
        anyhow::bail!(
            "no training samples: {}",
            match skipped.first() {
                Some(why) => format!("every line was left out ({why})"),
                None => "the pool is empty".to_string(),
            }
        )
    }
    // `cat` of one part returns it as it is, and an encoder's mean is a view of its moments.
    let join = |parts: &[Tensor]| Tensor::cat(parts, 0)?.contiguous();
    Ok(Pool {
        source: join(&source)?,
        target: join(&target)?,
        changed: join(&changed)?,
        prompts,
        skipped,
    })
}

struct ChunkContext<'a> {
    spec: &'a PoolSpec<'a>,
    root: &'a Path,
    tasks: &'a TaskWeights,
    fingerprint: &'a str,
}

type Tensors = std::collections::HashMap<String, Tensor>;

fn build_chunk(
    ctx: &ChunkContext,
    vae: &AutoencoderKL,
    device: &Device,
    items: &[Item],
    keys: Vec<String>,
    path: &Path,
) -> anyhow::Result<(Tensors, ChunkMeta)> {
    let size = ctx.spec.size;
    let made: Vec<_> = items
        .par_iter()
        .map(|it| it.realize(ctx.root, size, ctx.tasks))
        .collect();
    let (mut samples, mut skipped) = (vec![], vec![]);
    for (r, key) in made.into_iter().zip(&keys) {
        match r {
            Ok(s) => samples.push(s),
            Err(why) => skipped.push(format!("{}: {why}", key.split('|').next().unwrap_or(key))),
        }
    }
    let scale = vae.config.scaling_factor;
    let f = vae.config.downscale();
    let (mut src, mut tgt, mut chg) = (vec![], vec![], vec![]);
    // Sixteen at a time: the encoder's activations at 128 px are a few MB per image.
    for group in samples.chunks(16) {
        let s = images_to_tensor(&group.iter().map(|s| &s.0).collect::<Vec<_>>(), device)?;
        let t = images_to_tensor(&group.iter().map(|s| &s.1).collect::<Vec<_>>(), device)?;
        chg.push(change_map(&s, &t, f)?);
        src.push(vae.encode_mean(&s)?);
        tgt.push((vae.encode_mean(&t)? * scale)?);
    }
    let mut tensors = Tensors::new();
    if !samples.is_empty() {
        tensors.insert("source".into(), Tensor::cat(&src, 0)?);
        tensors.insert("target".into(), Tensor::cat(&tgt, 0)?);
        tensors.insert("changed".into(), Tensor::cat(&chg, 0)?);
        save_weights(&tensors, path, false)?;
    }
    let meta = ChunkMeta {
        vae: ctx.fingerprint.to_string(),
        size,
        keys,
        tasks: samples.iter().map(|s| s.3.clone()).collect(),
        prompts: samples.iter().map(|s| s.2.clone()).collect(),
        skipped,
    };
    crate::imageio::write_atomic(
        &path.with_extension("json"),
        serde_json::to_string(&meta)?.as_bytes(),
    )?;
    Ok((tensors, meta))
}

/// The first `n` readable lines of a dataset folder as `(source, target, instruction, task)`
/// at `size` pixels (the trainer's sample sheets).
pub fn dataset_examples(
    dir: &Path,
    size: u32,
    n: usize,
) -> anyhow::Result<Vec<(RgbImage, RgbImage, String, String)>> {
    Ok(read(dir)?
        .into_iter()
        .filter_map(|r| {
            Item::Line(Box::new(r))
                .realize(dir, size, &TaskWeights::default())
                .ok()
        })
        .take(n)
        .collect())
}
