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
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::checkpoint::save_weights;
use super::{images_to_tensor, sample_seed};
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
}

impl Pool {
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }
}

/// What a pool is built from.
#[derive(Debug, Clone)]
pub struct PoolSpec<'a> {
    pub dir: PathBuf,
    pub samples: usize,
    pub size: u32,
    pub seed: u64,
    pub tasks: &'a TaskWeights,
    /// The VAE folder, fingerprinted into every chunk.
    pub vae_dir: &'a Path,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ChunkMeta {
    vae: String,
    size: u32,
    seeds: Vec<u64>,
    tasks: Vec<String>,
    prompts: Vec<String>,
}

/// FNV-1a over the VAE's config and weights: which VAE encoded a chunk.
pub fn vae_fingerprint(dir: &Path) -> anyhow::Result<String> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        let path = dir.join(f);
        let bytes = std::fs::read(&path)
            .map_err(|e| anyhow::anyhow!("reading the VAE '{}': {e}", path.display()))?;
        for b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
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
pub fn build_or_load(
    spec: &PoolSpec,
    vae: &AutoencoderKL,
    device: &Device,
    on_progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Pool> {
    let fingerprint = vae_fingerprint(spec.vae_dir)?;
    let chunks = spec.samples.div_ceil(CHUNK);
    let (mut source, mut target, mut changed, mut prompts) = (vec![], vec![], vec![], vec![]);
    for i in 0..chunks {
        let seeds: Vec<u64> = (i * CHUNK..((i + 1) * CHUNK).min(spec.samples))
            .map(|k| sample_seed(spec.seed, 0, 1, k))
            .collect();
        let path = spec.dir.join(format!("chunk_{i:05}.safetensors"));
        let meta_path = path.with_extension("json");
        let meta: Option<ChunkMeta> = std::fs::read_to_string(&meta_path)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok());
        let fresh = meta
            .as_ref()
            .is_some_and(|m| m.vae == fingerprint && m.size == spec.size && m.seeds == seeds);
        let tensors = if fresh {
            candle_core::safetensors::load(&path, device).ok()
        } else {
            None
        };
        let (tensors, meta) = match (tensors, meta) {
            (Some(t), Some(m)) if fresh => (t, m),
            _ => build_chunk(spec, vae, device, &seeds, &fingerprint, &path)?,
        };
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
        anyhow::bail!("the sample pool is empty: ask for at least one sample")
    }
    Ok(Pool {
        source: Tensor::cat(&source, 0)?,
        target: Tensor::cat(&target, 0)?,
        changed: Tensor::cat(&changed, 0)?,
        prompts,
    })
}

fn build_chunk(
    spec: &PoolSpec,
    vae: &AutoencoderKL,
    device: &Device,
    seeds: &[u64],
    fingerprint: &str,
    path: &Path,
) -> anyhow::Result<(std::collections::HashMap<String, Tensor>, ChunkMeta)> {
    let samples: Vec<_> = seeds
        .par_iter()
        .map(|&s| generate(s, spec.size, spec.tasks))
        .collect();
    let scale = vae.config.scaling_factor;
    let f = vae.config.downscale();
    let (mut src, mut tgt, mut chg) = (vec![], vec![], vec![]);
    // Sixteen at a time: the encoder's activations at 128 px are a few MB per image.
    for group in samples.chunks(16) {
        let s = images_to_tensor(&group.iter().map(|s| &s.input).collect::<Vec<_>>(), device)?;
        let t = images_to_tensor(&group.iter().map(|s| &s.target).collect::<Vec<_>>(), device)?;
        chg.push(change_map(&s, &t, f)?);
        src.push(vae.encode_mean(&s)?);
        tgt.push((vae.encode_mean(&t)? * scale)?);
    }
    let tensors: std::collections::HashMap<String, Tensor> = [
        ("source", Tensor::cat(&src, 0)?),
        ("target", Tensor::cat(&tgt, 0)?),
        ("changed", Tensor::cat(&chg, 0)?),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    save_weights(&tensors, path, false)?;
    let meta = ChunkMeta {
        vae: fingerprint.to_string(),
        size: spec.size,
        seeds: seeds.to_vec(),
        tasks: samples.iter().map(|s| s.task.name().to_string()).collect(),
        prompts: samples.iter().map(|s| s.instruction.clone()).collect(),
    };
    crate::imageio::write_atomic(
        &path.with_extension("json"),
        serde_json::to_string(&meta)?.as_bytes(),
    )?;
    Ok((tensors, meta))
}
