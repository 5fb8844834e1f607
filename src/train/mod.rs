//! The trainer: the built-in model from scratch (VAE first, then UNet and text encoder
//! together), and fine-tunes of any model the core loads.
//!
//! Runs are resumable exactly: the data of step `s` is a pure function of `(seed, s)`, and a
//! checkpoint holds the weights, both Adam moments and the EMA. Checkpoints are written
//! atomically, next to a loadable diffusers folder of the EMA weights; a NaN or exploding loss
//! stops the run and keeps the last good checkpoint.

pub mod checkpoint;
pub mod edit;
pub mod optim;
pub mod pool;
pub mod vae;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

/// What the trainer reports as it goes (stderr lines in the CLI, a plot in the app).
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    Step {
        step: usize,
        total: usize,
        loss: f64,
        grad_norm: f64,
        lr: f64,
        steps_per_s: f64,
        eta_s: f64,
    },
    Checkpoint {
        step: usize,
        dir: PathBuf,
    },
    Samples {
        step: usize,
        path: PathBuf,
    },
    /// How much the model relies on the instruction, measured at each checkpoint on fixed
    /// held-out samples: the error of its clean-latent estimate over the cells the edits
    /// change, with each sample's own instruction and with another sample's (while the text
    /// is ignored the two are equal), and how much of the edit it predicts from pure noise.
    Instructions {
        step: usize,
        probe: edit::ProbeResult,
    },
    /// Building the sample pool: `done` of `total` chunks ready.
    Pool {
        done: usize,
        total: usize,
    },
    /// Dataset lines left out of the pool (unreadable images, ...): how many, and the first.
    Skipped {
        count: usize,
        first: String,
    },
    /// The run was asked to stop and did, after writing a checkpoint at `step` (start it
    /// again to resume).
    Stopped {
        step: usize,
    },
    /// With timing on: the mean seconds per step, over the `steps` steps up to `step` (the
    /// run's first step, which loads and compiles, left out; checkpoints and sample sheets are
    /// outside every phase), spent drawing and preparing the batch, in the forward and backward
    /// passes, and in the optimizer's update and checks.
    Phases {
        step: usize,
        steps: usize,
        batch_s: f64,
        passes_s: f64,
        update_s: f64,
    },
}

/// The running sums behind [`TrainEvent::Phases`].
pub struct Phases {
    on: bool,
    steps: usize,
    sums: [f64; 3],
    skipped_first: bool,
}

impl Phases {
    /// Timing on or off (off: no waits, no events).
    pub fn new(on: bool) -> Self {
        Self {
            on,
            steps: 0,
            sums: [0.0; 3],
            skipped_first: false,
        }
    }

    /// The time now, after waiting for `device` to finish its queued work; None when timing
    /// is off.
    pub fn mark(&self, device: &candle_core::Device) -> candle_core::Result<Option<Instant>> {
        if !self.on {
            return Ok(None);
        }
        device.synchronize()?;
        Ok(Some(Instant::now()))
    }

    /// Adds one step (started at `start`, its batch ready and its passes done at the marks)
    /// and returns the event with the means so far; None when timing is off.
    pub fn add(
        &mut self,
        step: usize,
        start: Instant,
        batch_ready: Option<Instant>,
        passes_done: Option<Instant>,
        device: &candle_core::Device,
    ) -> candle_core::Result<Option<TrainEvent>> {
        let (Some(batch_ready), Some(passes_done)) = (batch_ready, passes_done) else {
            return Ok(None);
        };
        device.synchronize()?;
        let end = Instant::now();
        if !self.skipped_first {
            self.skipped_first = true;
            return Ok(None);
        }
        let spans = [
            (start, batch_ready),
            (batch_ready, passes_done),
            (passes_done, end),
        ];
        for (sum, (a, b)) in self.sums.iter_mut().zip(spans) {
            *sum += (b - a).as_secs_f64();
        }
        self.steps += 1;
        let mean = |i: usize| self.sums[i] / self.steps as f64;
        Ok(Some(TrainEvent::Phases {
            step,
            steps: self.steps,
            batch_s: mean(0),
            passes_s: mean(1),
            update_s: mean(2),
        }))
    }
}

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training diverged at step {step} (loss or gradient norm {loss}); the checkpoint of step {kept} in '{dir}' is kept: lower --lr and resume")]
    Diverged {
        step: usize,
        loss: f64,
        kept: usize,
        dir: PathBuf,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Other(anyhow::anyhow!(crate::model::load::error_message(&e)))
    }
}

/// Watches the loss for NaN or explosion: 1000x the first loss at any time, or 50x its
/// running mean after a warm-up of 20 steps. Outliers enter the running mean clipped to 10x
/// it, so a few exploded steps cannot raise the bar for the next ones.
#[derive(Debug, Clone, Default)]
pub struct DivergenceGuard {
    first: Option<f64>,
    mean: Option<f64>,
    seen: usize,
}

impl DivergenceGuard {
    /// `true` when `loss` shows the run has diverged.
    pub fn diverged(&mut self, loss: f64) -> bool {
        if !loss.is_finite() {
            return true;
        }
        self.seen += 1;
        let first = *self.first.get_or_insert(loss);
        let mean = self.mean.get_or_insert(loss);
        if loss > 1000.0 * first.max(1e-12) || (self.seen > 20 && loss > 50.0 * *mean) {
            return true;
        }
        *mean = 0.98 * *mean + 0.02 * loss.min(10.0 * *mean);
        false
    }
}

/// Steps per second and ETA from wall time.
pub struct Pace {
    start: Instant,
    first_step: usize,
}

impl Pace {
    pub fn new(first_step: usize) -> Self {
        Self {
            start: Instant::now(),
            first_step,
        }
    }

    /// `(steps per second, seconds left)` after finishing `step` of `total`.
    pub fn at(&self, step: usize, total: usize) -> (f64, f64) {
        let done = (step + 1 - self.first_step) as f64;
        let rate = done / self.start.elapsed().as_secs_f64().max(1e-9);
        (
            rate,
            (total.saturating_sub(step + 1)) as f64 / rate.max(1e-9),
        )
    }
}

/// The bookkeeping of one training run: divergence watch, pace, last checkpoint.
pub struct Run {
    guard: DivergenceGuard,
    pace: Pace,
    /// The step of the last checkpoint written (what survives a divergence).
    pub kept: usize,
}

impl Run {
    pub fn new(first_step: usize) -> Self {
        Self {
            guard: DivergenceGuard::default(),
            pace: Pace::new(first_step),
            kept: first_step,
        }
    }

    /// Backpropagates `loss`, steps `opt`, and reports; stops on a NaN or exploding loss, or on
    /// a non-finite gradient or weight, naming the checkpoint that is kept.
    /// One optimizer step with `grads` of the loss `loss_v`.
    pub fn optimize(
        &mut self,
        opt: &mut optim::AdamW,
        loss_v: f64,
        grads: &candle_core::backprop::GradStore,
        total: usize,
        ckpt_dir: &std::path::Path,
        on_event: &mut dyn FnMut(&TrainEvent),
    ) -> Result<(), TrainError> {
        let step = opt.step;
        let diverged = |loss: f64| TrainError::Diverged {
            step: step + 1,
            loss,
            kept: self.kept,
            dir: ckpt_dir.to_path_buf(),
        };
        if self.guard.diverged(loss_v) {
            return Err(diverged(loss_v));
        }
        let info = opt.step(grads)?;
        if !info.grad_norm.is_finite() || !opt.all_finite()? {
            return Err(diverged(info.grad_norm));
        }
        let (steps_per_s, eta_s) = self.pace.at(step, total);
        on_event(&TrainEvent::Step {
            step: opt.step,
            total,
            loss: loss_v,
            grad_norm: info.grad_norm,
            lr: info.lr,
            steps_per_s,
            eta_s,
        });
        Ok(())
    }
}

/// The loss of a batch of `n` samples and its gradients, computed in shares: with `split` and
/// more than one compute thread, one share of the batch per thread, each thread running its
/// share's forward and backward pass single-threaded ([`candle_core::utils::serial`]), the
/// gradients summed after (a narrow model's kernels are too short to split well across
/// threads). `share_loss(range)` returns the part of the loss of samples `range`; the parts
/// must add up to the batch's loss.
pub fn backward_in_shares(
    n: usize,
    split: bool,
    share_loss: impl Fn(std::ops::Range<usize>) -> candle_core::Result<Tensor> + Sync,
) -> candle_core::Result<(f64, candle_core::backprop::GradStore)> {
    let one = |r: std::ops::Range<usize>| -> candle_core::Result<_> {
        let loss = share_loss(r)?;
        Ok((
            loss.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            loss.backward()?,
        ))
    };
    let parts = match split {
        true => crate::model::kernels::shares(n, one)?,
        false => vec![one(0..n)?],
    };
    let mut parts = parts.into_iter();
    let (mut loss, mut grads) = parts.next().expect("at least one share");
    for (l, g) in parts {
        loss += l;
        grads.extend(g)?;
    }
    Ok((loss, grads))
}

/// Re-initialises every variable from `seed`, so that a run is reproducible (candle draws its
/// initial weights from an unseeded generator). PyTorch's defaults: matrices and kernels
/// uniform in `±1/sqrt(fan_in)`, embeddings normal with std 0.02 (CLIP's), norm weights 1,
/// biases 0.
pub fn init_weights(varmap: &candle_nn::VarMap, seed: u64) -> candle_core::Result<()> {
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};
    let data = varmap.data().lock().expect("varmap lock");
    for (name, var) in data.iter() {
        let name_seed = name.bytes().fold(seed ^ 0xCBF2_9CE4_8422_2325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
        });
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(name_seed);
        let dims = var.as_tensor().dims().to_vec();
        let n: usize = dims.iter().product();
        let values: Vec<f32> = if name.ends_with(crate::model::lora::B) {
            // LoRA's up-projection starts at zero: training starts from the base model.
            vec![0.0; n]
        } else if name.contains("embedding") && dims.len() == 2 && !name.starts_with("unet") {
            let normal = Normal::new(0.0f32, 0.02).expect("valid std");
            (0..n).map(|_| normal.sample(&mut rng)).collect()
        } else if dims.len() >= 2 {
            let fan_in: usize = dims[1..].iter().product();
            let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
            (0..n).map(|_| rng.random_range(-bound..=bound)).collect()
        } else if name.ends_with("weight") {
            vec![1.0; n]
        } else {
            vec![0.0; n]
        };
        let t = Tensor::from_vec(values, dims, var.as_tensor().device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

/// What [`start`] does with a weight of the model being trained that its base lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Refuses the base: a fine-tune needs every weight.
    Refuse,
    /// Keeps the initialisation, with a new transformer block's output projection at zero, so
    /// the grown model starts as the base (`--grow`).
    Grow,
    /// Keeps the initialisation: the base gives only part of the model
    /// (`--text-encoder-from`).
    Fresh,
}

/// Seeds the variables of `varmap` (or sets them from `base`; `missing` says what happens to
/// those it lacks), builds the optimizer over them, and restores the last checkpoint in `ckpt`
/// when there is one.
pub fn start(
    varmap: &candle_nn::VarMap,
    seed: u64,
    cfg: &optim::AdamWConfig,
    ckpt: &checkpoint::Checkpoint,
    base: Option<&std::collections::HashMap<String, Tensor>>,
    missing: Missing,
) -> Result<optim::AdamW, TrainError> {
    init_weights(varmap, seed)?;
    if let Some(base) = base {
        let mut taken = 0;
        for (name, var) in varmap.data().lock().expect("varmap lock").iter() {
            let Some(t) = base.get(name) else {
                match missing {
                    Missing::Refuse => {
                        return Err(anyhow::anyhow!(
                            "the base model has no weight '{name}': is it this kind of model? (--grow trains an architecture grown from the base's)"
                        )
                        .into())
                    }
                    // A new transformer block adds `proj_out(...)` to its input: zero makes it
                    // the identity, so the grown model starts as the base.
                    Missing::Grow
                        if name.contains(".attentions.") && name.contains(".proj_out.") =>
                    {
                        var.set(&var.as_tensor().zeros_like()?)?
                    }
                    Missing::Grow | Missing::Fresh => {}
                }
                continue;
            };
            if t.dims() != var.dims() {
                return Err(anyhow::anyhow!(
                    "the base model's '{name}' is {:?}, the model being trained needs {:?}",
                    t.dims(),
                    var.dims()
                )
                .into());
            }
            var.set(&t.to_dtype(var.dtype())?)?;
            taken += 1;
        }
        if taken == 0 {
            return Err(anyhow::anyhow!(
                "the base model shares no weight with the model being trained"
            )
            .into());
        }
    }
    let mut opt = optim::AdamW::over(varmap, cfg.clone())?;
    if ckpt.exists() {
        let (state, meta): (_, serde_json::Value) = ckpt.load()?;
        let step = meta["step"].as_u64().ok_or_else(|| {
            anyhow::anyhow!("'{}' has no step", ckpt.dir.join("state.json").display())
        })?;
        opt.load_state(&state, step as usize)?;
    }
    Ok(opt)
}

/// A batch of RGB images as `(b, 3, h, w)` in `[-1, 1]`.
pub fn images_to_tensor(images: &[&RgbImage], device: &Device) -> candle_core::Result<Tensor> {
    let ts = images
        .iter()
        .map(|im| crate::sample::pipeline::image_to_tensor(im, device, DType::F32))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&ts, 0)
}

/// The seed of sample `i` of step `step` in a run seeded `seed` (disjoint from held-out seeds,
/// which start at [`HELD_OUT_FIRST_SEED`]).
pub fn sample_seed(seed: u64, step: usize, batch: usize, i: usize) -> u64 {
    (seed.wrapping_mul(1_000_003) ^ 0x5EED).wrapping_add((step * batch + i) as u64)
        % HELD_OUT_FIRST_SEED
}

/// The seed of step `step`'s random draws (noise, timesteps, dropout).
pub fn step_seed(seed: u64, step: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (step as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ 0xA5A5
}

/// Seeds at or above this are never trained on: evaluation draws from them.
pub const HELD_OUT_FIRST_SEED: u64 = 1 << 40;

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch's loss and gradients computed in shares on two threads equal the whole batch's.
    #[test]
    fn shares_add_up_to_the_batch() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let w = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1., (6, 4), &dev)?)?;
        let x = Tensor::randn(0f32, 1., (5, 6), &dev)?;
        let y = Tensor::randn(0f32, 1., (5, 4), &dev)?;
        let elems = y.elem_count() as f64;
        let loss = |r: std::ops::Range<usize>| {
            let (x, y) = (
                x.narrow(0, r.start, r.len())?,
                y.narrow(0, r.start, r.len())?,
            );
            (x.matmul(w.as_tensor())? - y)?.sqr()?.sum_all()? / elems
        };
        let (whole, g_whole) = backward_in_shares(5, false, loss)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool");
        let (split, g_split) = pool.install(|| backward_in_shares(5, true, loss))?;
        // The same sums in another order, in f32: equal to rounding, relative to their size
        // (the inputs are random, the loss anywhere from 0.1 to 50).
        assert!(
            (whole - split).abs() < 1e-6 * whole.abs().max(1.0),
            "{whole} vs {split}"
        );
        let (a, b) = (
            g_whole.get(w.as_tensor()).expect("grad"),
            g_split.get(w.as_tensor()).expect("grad"),
        );
        let diff: f32 = (a - b)?.abs()?.max_all()?.to_scalar()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }

    #[test]
    fn guard_stops_on_nan_and_explosion_only() {
        let mut g = DivergenceGuard::default();
        for i in 0..100 {
            assert!(!g.diverged(1.0 + (i % 3) as f64 * 0.1));
        }
        assert!(g.diverged(f64::NAN));
        assert!(g.diverged(1e4));
        assert!(!g.diverged(3.0));
        // An explosion within the warm-up: judged against the first loss.
        let mut g = DivergenceGuard::default();
        assert!(!g.diverged(0.6));
        assert!(g.diverged(7e20));
        // Noisy but sane early losses pass.
        let mut g = DivergenceGuard::default();
        for l in [0.6, 2.0, 0.3, 5.0, 0.2] {
            assert!(!g.diverged(l));
        }
    }

    #[test]
    fn training_seeds_never_reach_held_out_ones() {
        for s in [0, 7, u64::MAX] {
            assert!(sample_seed(s, usize::MAX / 4, 3, 2) < HELD_OUT_FIRST_SEED);
        }
    }
}
