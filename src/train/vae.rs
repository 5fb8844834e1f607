//! Phase 1 of the built-in model: the image autoencoder, trained on generated scenes (sources
//! and targets alike) with an L1 + L2 reconstruction loss and a small KL term, as LDM's
//! autoencoders minus the adversarial and perceptual terms. At each checkpoint the latent
//! scaling factor (1 / std of the posterior means) is measured and written into the config.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::checkpoint::{save_weights, Checkpoint};
use super::optim::{AdamW, AdamWConfig};
use super::{
    images_to_tensor, sample_seed, step_seed, Run, TrainError, TrainEvent, HELD_OUT_FIRST_SEED,
};
use crate::data::sample::{generate, TaskWeights};
use crate::model::vae::{AutoencoderKL, VaeConfig};
use crate::sample::noise::{NoiseSource, SeededNoise};

/// A VAE training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaePlan {
    pub out: PathBuf,
    pub config: VaeConfigSer,
    pub steps: usize,
    pub batch: usize,
    pub size: u32,
    /// Train on random square crops of this size from the `size` scenes: the networks are
    /// convolutional, and a crop costs (crop/size)^2 of a whole image per step.
    #[serde(default)]
    pub crop: Option<u32>,
    pub seed: u64,
    pub kl_weight: f64,
    pub optim: AdamWConfig,
    pub checkpoint_every: usize,
    /// Train the decoder only: the encoder (and `quant_conv`) stay exactly as the checkpoint
    /// has them (their EMA), so the latent space, and every latent encoded with it, stays
    /// valid while reconstructions sharpen (as Stable Diffusion's ft-MSE decoder was tuned).
    #[serde(default)]
    pub decoder_only: bool,
}

/// Whether a VAE weight belongs to the encoder side (what defines the latent space).
pub fn is_encoder_weight(name: &str) -> bool {
    name.starts_with("encoder.") || name.starts_with("quant_conv.")
}

/// The serialisable part of [`VaeConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeConfigSer {
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
}

impl From<&VaeConfigSer> for VaeConfig {
    fn from(c: &VaeConfigSer) -> Self {
        VaeConfig {
            block_out_channels: c.block_out_channels.clone(),
            layers_per_block: c.layers_per_block,
            latent_channels: c.latent_channels,
            norm_num_groups: c.norm_num_groups,
            ..VaeConfig::tiny()
        }
    }
}

impl From<&VaeConfig> for VaeConfigSer {
    fn from(c: &VaeConfig) -> Self {
        Self {
            block_out_channels: c.block_out_channels.clone(),
            layers_per_block: c.layers_per_block,
            latent_channels: c.latent_channels,
            norm_num_groups: c.norm_num_groups,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    step: usize,
    plan: VaePlan,
    scaling_factor: f64,
}

fn batch_images(plan: &VaePlan, seed_base: impl Fn(usize) -> u64) -> Vec<image::RgbImage> {
    let weights = TaskWeights::default();
    (0..plan.batch)
        .map(|i| {
            let seed = seed_base(i);
            let s = generate(seed, plan.size, &weights);
            let img = if i % 2 == 0 { s.input } else { s.target };
            match plan.crop {
                Some(c) if c < plan.size => {
                    use rand::{Rng, SeedableRng};
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_c409);
                    let (x, y) = (
                        rng.random_range(0..=plan.size - c),
                        rng.random_range(0..=plan.size - c),
                    );
                    image::imageops::crop_imm(&img, x, y, c, c).to_image()
                }
                _ => img,
            }
        })
        .collect()
}

/// 1 / std of the posterior means over 32 held-out images.
fn measure_scale(vae: &AutoencoderKL, plan: &VaePlan, device: &Device) -> candle_core::Result<f64> {
    let probe = VaePlan {
        batch: 32,
        crop: None,
        ..plan.clone()
    };
    let imgs = batch_images(&probe, |i| HELD_OUT_FIRST_SEED + 1_000_000 + i as u64);
    // Four images at a time: one batch of 32 at 128 px peaked at several GiB in the encoder.
    let means = imgs
        .chunks(4)
        .map(|chunk| {
            let refs: Vec<&image::RgbImage> = chunk.iter().collect();
            vae.encode_mean(&images_to_tensor(&refs, device)?)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let mean = Tensor::cat(&means, 0)?;
    let var: f64 = mean
        .broadcast_sub(&mean.mean_all()?)?
        .sqr()?
        .mean_all()?
        .to_dtype(DType::F64)?
        .to_scalar()?;
    Ok(1.0 / var.sqrt().max(1e-6))
}

/// Writes `out/vae/` (config + EMA weights) for the pipeline and the next phase.
fn export(plan: &VaePlan, opt: &AdamW, scale: f64) -> anyhow::Result<()> {
    let dir = plan.out.join("vae");
    std::fs::create_dir_all(&dir)?;
    let mut cfg = VaeConfig::from(&plan.config);
    cfg.scaling_factor = scale;
    // f16 on disk like the other parts of the shipped model (half the size); the training
    // state in the checkpoint stays f32.
    save_weights(
        &opt.ema_weights(),
        &dir.join("diffusion_pytorch_model.safetensors"),
        true,
    )?;
    crate::imageio::write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&cfg.to_json())?.as_bytes(),
    )?;
    Ok(())
}

/// Trains (or resumes) the VAE of `plan`.
pub fn train(
    plan: &VaePlan,
    device: &Device,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<(), TrainError> {
    let cfg = VaeConfig::from(&plan.config);
    let varmap = VarMap::new();
    let vae = AutoencoderKL::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    let ckpt = Checkpoint::new(&plan.out.join("checkpoint"));
    let mut opt = super::start(
        &varmap,
        plan.seed,
        &plan.optim,
        &ckpt,
        None,
        super::Missing::Refuse,
    )?;
    if plan.decoder_only {
        opt.freeze(is_encoder_weight)?;
    }
    // One share per CPU thread for a narrow network; a GPU takes the batch whole.
    let split = crate::model::kernels::splits_batches(&cfg.block_out_channels) && device.is_cpu();
    let mut run = Run::new(opt.step);
    while opt.step < plan.steps {
        let step = opt.step;
        let imgs = batch_images(plan, |i| sample_seed(plan.seed, step, plan.batch, i));
        let refs: Vec<&image::RgbImage> = imgs.iter().collect();
        let x = images_to_tensor(&refs, device)?;
        let n = refs.len();
        let f = cfg.downscale();
        let latent = (n, cfg.latent_channels, x.dim(2)? / f, x.dim(3)? / f);
        let eps = SeededNoise::new(step_seed(plan.seed, step)).sample(&latent.into(), device)?;
        // Means over the whole batch, as sums of each share divided by the batch's counts.
        let (pixels, latents) = (x.elem_count() as f64, eps.elem_count() as f64);
        let (loss, grads) = super::backward_in_shares(n, split, |r| {
            let x = x.narrow(0, r.start, r.len())?;
            let (mean, logvar) = vae.encode_moments(&x)?;
            let eps = eps.narrow(0, r.start, r.len())?;
            let z = (&mean + ((&logvar * 0.5)?.exp()? * eps)?)?;
            let diff = (vae.decode(&z)? - &x)?;
            let rec_loss = ((diff.abs()?.sum_all()? + diff.sqr()?.sum_all()?)? / pixels)?;
            let kl = ((mean.sqr()? + logvar.exp()?)? - 1.0)?
                .sub(&logvar)?
                .sum_all()?
                .affine(0.5 / latents, 0.0)?;
            rec_loss + (kl * plan.kl_weight)?
        })?;
        run.optimize(&mut opt, loss, &grads, plan.steps, &ckpt.dir, on_event)?;
        if opt.step % plan.checkpoint_every == 0 || opt.step == plan.steps {
            // Measured with the weights that are saved (the EMA), not the live ones.
            let saved = AutoencoderKL::new(
                &cfg,
                VarBuilder::from_tensors(opt.ema_weights(), DType::F32, device),
            )?;
            let scale = measure_scale(&saved, plan, device)?;
            ckpt.save(
                &opt.state()?,
                &Meta {
                    step: opt.step,
                    plan: plan.clone(),
                    scaling_factor: scale,
                },
            )?;
            export(plan, &opt, scale)?;
            run.kept = opt.step;
            on_event(&TrainEvent::Checkpoint {
                step: opt.step,
                dir: ckpt.dir.clone(),
            });
        }
    }
    Ok(())
}

/// The default plan for the built-in model's VAE.
pub fn default_plan(out: PathBuf) -> VaePlan {
    VaePlan {
        out,
        config: (&VaeConfig::tiny()).into(),
        steps: 3000,
        batch: 8,
        size: 128,
        crop: Some(64),
        seed: 1,
        kl_weight: 1e-6,
        optim: AdamWConfig {
            lr: 4e-4,
            warmup_steps: 200,
            ema_decay: 0.999,
            weight_decay: 0.0,
            ..Default::default()
        },
        checkpoint_every: 250,
        decoder_only: false,
    }
}

/// Loads a trained VAE folder (`config.json` + weights) for the next phase.
pub fn load_frozen(dir: &std::path::Path, device: &Device) -> anyhow::Result<AutoencoderKL> {
    let cfg_json: crate::model::vae::VaeConfigJson =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let cfg = VaeConfig::from(cfg_json);
    let path = dir.join("diffusion_pytorch_model.safetensors");
    let tensors = candle_core::safetensors::load(&path, device)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    Ok(AutoencoderKL::new(&cfg, vb)?)
}

/// Live-preview factors for `vae` (see [`crate::sample::preview::fit_latent_rgb`]), fitted on
/// 16 held-out scenes of `size` pixels.
pub fn preview_factors(
    vae: &AutoencoderKL,
    size: u32,
    device: &Device,
) -> anyhow::Result<Vec<[f32; 3]>> {
    let weights = TaskWeights::default();
    let imgs: Vec<image::RgbImage> = (0..16)
        .map(|i| generate(HELD_OUT_FIRST_SEED + 2_000_000 + i, size, &weights).input)
        .collect();
    let x = images_to_tensor(&imgs.iter().collect::<Vec<_>>(), device)?;
    let latents = (vae.encode_mean(&x)? * vae.config.scaling_factor)?;
    let pooled = x.avg_pool2d(vae.config.downscale())?;
    Ok(crate::sample::preview::fit_latent_rgb(&latents, &pooled)?)
}
