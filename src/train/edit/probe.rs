//! What the trainer prints and writes at each checkpoint: held-out sample edits, and the
//! instruction probe (how much of an edit the model predicts from pure noise, and where).

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use image::RgbImage;

use super::images_to_tensor;
use super::*;
use crate::data::sample::generate;
use crate::model::clip::{ClipTextModel, ClipTokenizer};
use crate::model::unet::UNet2DConditionModel;
use crate::model::vae::AutoencoderKL;
use crate::sample::noise::{NoiseSource, SeededNoise};
use crate::sample::schedule::{alphas_cumprod, ZERO_SNR_STAND_IN};
use crate::settings::PredictionType;
use crate::train::pool::change_map;

/// `n` held-out examples (source, target, instruction, task name): the generator's held-out
/// seeds from `first` on, or a dataset run's first lines.
pub(super) fn held_out_examples(
    plan: &EditPlan,
    first: usize,
    n: usize,
) -> anyhow::Result<Vec<(RgbImage, RgbImage, String, String)>> {
    Ok(match &plan.data {
        // A dataset has no held-out lines: its first ones.
        Some(dir) => crate::train::pool::dataset_examples(dir, plan.size, n)?,
        None => (first..first + n)
            .map(|i| {
                let x = generate(
                    crate::train::HELD_OUT_FIRST_SEED + i as u64,
                    plan.size,
                    &plan.tasks,
                );
                (x.input, x.target, x.instruction, x.task.name().to_string())
            })
            .collect(),
    })
}

/// Held-out samples of the instruction probe (after the sample edits' ones).
pub(super) const PROBE_FIRST: usize = 1000;

pub(super) const PROBE_SAMPLES: usize = 16;

/// The instruction probe's fixed inputs: the latents, the changed-cell map, noise, timesteps.
pub(super) struct Probe {
    pub(super) source: Tensor,
    pub(super) target: Tensor,
    pub(super) changed: Tensor,
    /// The noise every noisy latent is made with.
    pub(super) eps: Tensor,
    pub(super) a: Tensor,
    pub(super) b: Tensor,
    pub(super) t: Tensor,
    /// The error of "no edit" (the source latent as the answer) over the changed cells.
    pub(super) no_edit: f64,
    /// The edits' own change: the squared difference of source and target latents summed
    /// over the changed cells.
    pub(super) change: f64,
    /// `alphas_cumprod` of the schedule's last timestep (diffusers' stand-in 2^-24 for a
    /// zero-terminal-SNR schedule's 0), where the pure-noise reading is taken.
    pub(super) last_acp: f64,
    /// The schedule's number of training timesteps.
    pub(super) timesteps: usize,
    pub(super) prompts: Vec<String>,
}

/// What the probe measures with the model of one checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeResult {
    /// The error of the clean-latent estimate over the changed cells (timesteps spread over
    /// the schedule) with each sample's own instruction.
    pub matched: f64,
    /// The same with the next sample's instruction.
    pub mismatched: f64,
    /// The error with the own instruction at the schedule's last timestep with the noise alone
    /// as input (what sampling's first step sees), relative to "no edit":
    /// 1 when nothing of the edit is predicted from noise, 0 when all of it is (the edit is
    /// fixed by the source and the instruction, so a model that grounds the words needs no
    /// hint from the noisy latent).
    pub from_noise: f64,
    /// From pure noise too: the error over the cells the edits keep, summed, as a share of
    /// the edits' own change (`Probe::change`). A model unsure which object the words name
    /// paints the edit on several: `from_noise` can fall while this grows (as the loss
    /// weight on changed cells trades one for the other).
    pub spill: f64,
}

impl Probe {
    pub(super) fn new(
        plan: &EditPlan,
        vae: &AutoencoderKL,
        device: &Device,
    ) -> anyhow::Result<Option<Self>> {
        let examples = held_out_examples(plan, PROBE_FIRST, PROBE_SAMPLES)?;
        let n = examples.len();
        if n < 2 {
            return Ok(None);
        }
        let src = images_to_tensor(&examples.iter().map(|e| &e.0).collect::<Vec<_>>(), device)?;
        let tgt = images_to_tensor(&examples.iter().map(|e| &e.1).collect::<Vec<_>>(), device)?;
        let target = (vae.encode_mean(&tgt)? * vae.config.scaling_factor)?;
        // Timesteps spread over the schedule, the same every time.
        let acp = alphas_cumprod(&plan.scheduler());
        let ts: Vec<usize> = (0..n).map(|i| 100 + i * 800 / (n - 1)).collect();
        let col = |v: Vec<f32>| Tensor::from_vec(v, (n, 1, 1, 1), device);
        let source = vae.encode_mean(&src)?;
        let changed = change_map(&src, &tgt, vae.config.downscale())?;
        let scaled = (&source * vae.config.scaling_factor)?;
        let no_edit = changed_error(&scaled, &target, &changed)?;
        let change = masked_sum(&scaled, &target, &changed)?;
        Ok(Some(Self {
            a: col(ts.iter().map(|&t| acp[t].sqrt() as f32).collect())?,
            b: col(ts.iter().map(|&t| (1.0 - acp[t]).sqrt() as f32).collect())?,
            eps: SeededNoise::new(PROBE_FIRST as u64).sample(target.shape(), device)?,
            changed,
            source,
            target,
            t: Tensor::from_vec(ts.iter().map(|&t| t as f32).collect(), n, device)?,
            no_edit,
            change,
            last_acp: acp[acp.len() - 1].max(ZERO_SNR_STAND_IN),
            timesteps: acp.len(),
            prompts: examples.into_iter().map(|e| e.2).collect(),
        }))
    }

    /// The errors of the model's clean-latent estimates over the cells the edits change
    /// ([`ProbeResult`]).
    pub(super) fn measure(
        &self,
        unet: &UNet2DConditionModel,
        clip: &ClipTextModel,
        tokenizer: &ClipTokenizer,
        prediction: PredictionType,
    ) -> anyhow::Result<ProbeResult> {
        let n = self.prompts.len();
        let device = self.t.device();
        let text = |offset: usize| -> anyhow::Result<Tensor> {
            let mut ids = Vec::new();
            for i in 0..n {
                ids.extend(
                    tokenizer
                        .encode(&self.prompts[(i + offset) % n])
                        .map_err(anyhow::Error::msg)?,
                );
            }
            let len = ids.len() / n;
            Ok(clip
                .forward(&Tensor::from_vec(ids, (n, len), device)?)?
                .detach())
        };
        // The clean-latent estimate; `a` scales the target into the noisy latent, `leak` of
        // it (0: pure noise).
        let estimate = |text: &Tensor,
                        a: &Tensor,
                        b: &Tensor,
                        t: &Tensor,
                        leak: f64|
         -> anyhow::Result<Tensor> {
            let noisy = ((self.target.broadcast_mul(a)? * leak)? + self.eps.broadcast_mul(b)?)?;
            let input = Tensor::cat(&[&noisy, &self.source], 1)?;
            let out = unet.forward(&input, t, text)?.detach();
            Ok(match prediction {
                PredictionType::Epsilon => (&noisy - out.broadcast_mul(b)?)?.broadcast_div(a)?,
                PredictionType::VPrediction => (noisy.broadcast_mul(a)? - out.broadcast_mul(b)?)?,
            })
        };
        let error = |text: &Tensor, leak: f64| -> anyhow::Result<f64> {
            let x0 = estimate(text, &self.a, &self.b, &self.t, leak)?;
            changed_error(&x0, &self.target, &self.changed)
        };
        let (own, other) = (text(0)?, text(1)?);
        // What sampling's first step sees: the last timestep, and noise alone (a training
        // sample there still holds sqrt(acp) of the target unless the schedule ends at zero
        // SNR).
        let fill = |v: f64| Tensor::full(v as f32, (n, 1, 1, 1), device);
        let x0 = estimate(
            &own,
            &fill(self.last_acp.sqrt())?,
            &fill((1.0 - self.last_acp).sqrt())?,
            &Tensor::full((self.timesteps - 1) as f32, n, device)?,
            0.0,
        )?;
        let from_noise = changed_error(&x0, &self.target, &self.changed)?;
        let kept = (1.0 - &self.changed)?;
        Ok(ProbeResult {
            matched: error(&own, 1.0)?,
            mismatched: error(&other, 1.0)?,
            from_noise: from_noise / self.no_edit.max(1e-12),
            spill: masked_sum(&x0, &self.target, &kept)? / self.change.max(1e-12),
        })
    }
}

/// The mean squared difference of two latents over the changed cells (per cell and channel).
pub(super) fn changed_error(x: &Tensor, target: &Tensor, changed: &Tensor) -> anyhow::Result<f64> {
    let cells = (changed.sum_all()?.to_scalar::<f32>()? as f64).max(1.0);
    let channels = target.dim(1)? as f64;
    Ok(masked_sum(x, target, changed)? / (cells * channels))
}

/// The squared difference of two latents summed over the cells where `mask` (`(n, 1, h, w)`)
/// is 1.
pub(super) fn masked_sum(x: &Tensor, target: &Tensor, mask: &Tensor) -> anyhow::Result<f64> {
    let err = (x - target)?.sqr()?.broadcast_mul(mask)?;
    Ok(err.sum_all()?.to_scalar::<f32>()? as f64)
}

/// Edits `plan.sample_edits` held-out samples with the model just saved (20 steps, its default
/// guidance) and writes `samples/step_NNNNNN.png`, one row per sample: source | target | result,
/// with the instructions beside it in a `.txt`.
pub(super) fn write_sample_edits(plan: &EditPlan, step: usize) -> anyhow::Result<PathBuf> {
    use crate::model::load::{load, ModelSource};
    use crate::sample::pipeline::{edit, EditOutcome, EditRequest};
    let model = load(
        &ModelSource::Diffusers(plan.out.join("model")),
        Default::default(),
    )?;
    let s = plan.size;
    let mut text = String::new();
    let examples = held_out_examples(plan, 0, plan.sample_edits)?;
    let mut sheet = image::RgbImage::new(3 * s, examples.len() as u32 * s);
    for (i, (input, target, instruction, task)) in examples.iter().enumerate() {
        let req = EditRequest {
            prompt: instruction.clone(),
            seed: Some(i as u64),
            full_res: crate::fullres::FullRes::Off,
            ..Default::default()
        };
        let edit_plan = req.validate(&model)?;
        let out = match edit(&model, input, &edit_plan, None, &mut |_| {
            std::ops::ControlFlow::Continue(())
        })? {
            EditOutcome::Done(e) => e.image,
            EditOutcome::Cancelled { .. } => anyhow::bail!("sample edit cancelled"),
        };
        for (col, img) in [input, target, &out].into_iter().enumerate() {
            image::imageops::replace(
                &mut sheet,
                img,
                (col as u32 * s) as i64,
                (i as u32 * s) as i64,
            );
        }
        text.push_str(&format!("{i}: [{task}] {instruction}\n"));
    }
    let path = plan.out.join("samples").join(format!("step_{step:06}.png"));
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    crate::imageio::save(&sheet, &path, &[])?;
    crate::imageio::write_atomic(&path.with_extension("txt"), text.as_bytes())?;
    Ok(path)
}
