//! AdamW with decoupled weight decay (PyTorch's `torch.optim.AdamW`), global-norm gradient
//! clipping, linear warmup and an EMA of the weights, with every piece of state exposed as
//! named tensors so that a checkpoint resumes exactly.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Layout, Result, Tensor, Var};

/// Optimizer hyper-parameters (the official recipe: lr 1e-4, betas (0.9, 0.999), wd 0.01).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Steps of linear learning-rate warmup from 0.
    pub warmup_steps: usize,
    /// Cosine learning-rate decay `[from, to]`: the full rate until step `from`, then down to
    /// 0 at step `to` (the end of the run). None: constant after the warmup.
    #[serde(default)]
    pub decay: Option<[usize; 2]>,
    /// Clip the global gradient norm to this (0 disables).
    pub max_grad_norm: f64,
    /// EMA decay (the official 0.9999); the effective decay ramps up as `(1+t)/(10+t)`.
    pub ema_decay: f64,
    /// Learning-rate factors by variable-name prefix (the first that matches; 1 for the
    /// rest), e.g. `("text_encoder.", 5.0)`: a separate rate for one network, as
    /// `--text-encoder-lr` sets. Warmup and decay apply alike; so does the weight decay,
    /// which AdamW scales by each variable's rate.
    #[serde(default)]
    pub lr_scales: Vec<(String, f64)>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            warmup_steps: 500,
            decay: None,
            max_grad_norm: 1.0,
            ema_decay: 0.9999,
            lr_scales: Vec::new(),
        }
    }
}

/// The data of a contiguous f32 tensor on the CPU, from its storage and layout.
fn f32_data<'a>(storage: &'a candle_core::Storage, layout: &Layout) -> Option<&'a [f32]> {
    match storage {
        candle_core::Storage::Cpu(s) => {
            crate::model::kernels::contiguous_f32(s, layout, "adamw").ok()
        }
        _ => None,
    }
}

/// `f` on the data of `t` when it is a contiguous f32 tensor on the CPU.
fn cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    f32_data(&storage, layout).map(f)
}

/// The sum of squares, in f64 over 8 lanes (vectorised, and no rounding drift on millions of
/// terms).
fn sum_of_squares(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum();
    for c in chunks {
        for l in 0..8 {
            acc[l] += (c[l] as f64) * (c[l] as f64);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// One step's scalars.
#[derive(Debug, Clone, Copy)]
struct Scalars {
    /// Gradient clipping factor.
    scale: f64,
    b1: f64,
    b2: f64,
    /// Bias corrections `1 - beta^t`.
    bc1: f64,
    bc2: f64,
    lr: f64,
    wd: f64,
    eps: f64,
    /// EMA decay of this step.
    decay: f64,
}

/// The update with tensor operations (any device or dtype).
fn tensor_update(s: &mut Slot, g: &Tensor, h: &Scalars) -> Result<()> {
    // Everything here is detached: an optimizer update must not join the autograd graph, or
    // each step's graph would keep the previous ones alive.
    let g = (g * h.scale)?;
    s.m = ((&s.m * h.b1)? + (&g * (1.0 - h.b1))?)?.detach();
    s.v = ((&s.v * h.b2)? + (g.sqr()? * (1.0 - h.b2))?)?.detach();
    let m_hat = (&s.m / h.bc1)?;
    let v_hat = (&s.v / h.bc2)?;
    let update = (m_hat / (v_hat.sqrt()? + h.eps)?)?;
    let p = s.var.as_tensor().detach();
    let new = ((p * (1.0 - h.lr * h.wd))? - (update * h.lr)?)?.detach();
    s.var.set(&new)?;
    s.ema = ((&s.ema * h.decay)? + (new * (1.0 - h.decay))?)?.detach();
    Ok(())
}

/// The whole update of one variable (moments, weight, EMA) in one pass over its elements, for
/// contiguous f32 tensors on the CPU; the same arithmetic, in the same order, as
/// [`tensor_update`], which takes 19 passes and as many fresh buffers per variable (a
/// visible share of a small model's training step). Returns false where it does not apply.
fn fused_update(s: &mut Slot, g: &Tensor, h: &Scalars) -> Result<bool> {
    // Each scalar rounded to f32 once, as candle's scalar operations round them (`x / c` is
    // `x * (1 / c)` there).
    let f = |x: f64| x as f32;
    let (scale, b1, b2, eps, lr, decay) =
        (f(h.scale), f(h.b1), f(h.b2), f(h.eps), f(h.lr), f(h.decay));
    let (one_minus_b1, one_minus_b2) = (f(1.0 - h.b1), f(1.0 - h.b2));
    let (inv_bc1, inv_bc2) = (f(1.0 / h.bc1), f(1.0 / h.bc2));
    let (keep, one_minus_decay) = (f(1.0 - h.lr * h.wd), f(1.0 - h.decay));
    let (m, v, p, e) = {
        // Read guards, dropped before the weight is set below.
        let guards = [g, &s.m, &s.v, s.var.as_tensor(), &s.ema].map(|t| t.storage_and_layout());
        let data: Option<Vec<&[f32]>> = guards.iter().map(|(st, l)| f32_data(st, l)).collect();
        let Some(&[g, m, v, p, e]) = data.as_deref() else {
            return Ok(false);
        };
        let n = g.len();
        if [m.len(), v.len(), p.len(), e.len()] != [n; 4] {
            return Ok(false);
        }
        let mut out: [Vec<f32>; 4] = std::array::from_fn(|_| Vec::with_capacity(n));
        {
            // Written through the spare capacity, index by index over slices of one length,
            // so the loop vectorises (pushes would not).
            let [mo, vo, po, eo] = out.each_mut().map(|o| &mut o.spare_capacity_mut()[..n]);
            for i in 0..n {
                let gi = g[i] * scale;
                let mi = m[i] * b1 + gi * one_minus_b1;
                let vi = v[i] * b2 + gi * gi * one_minus_b2;
                let update = (mi * inv_bc1) / ((vi * inv_bc2).sqrt() + eps);
                let pi = p[i] * keep - update * lr;
                mo[i] = std::mem::MaybeUninit::new(mi);
                vo[i] = std::mem::MaybeUninit::new(vi);
                po[i] = std::mem::MaybeUninit::new(pi);
                eo[i] = std::mem::MaybeUninit::new(e[i] * decay + pi * one_minus_decay);
            }
        }
        // SAFETY: the loop above wrote all n elements of each.
        out.iter_mut().for_each(|o| unsafe { o.set_len(n) });
        let [m, v, p, e] = out;
        (m, v, p, e)
    };
    let shape = s.var.shape().clone();
    let dev = s.var.device().clone();
    s.m = Tensor::from_vec(m, shape.clone(), &dev)?;
    s.v = Tensor::from_vec(v, shape.clone(), &dev)?;
    s.var.set(&Tensor::from_vec(p, shape.clone(), &dev)?)?;
    s.ema = Tensor::from_vec(e, shape, &dev)?;
    Ok(true)
}

/// The state of one trained variable.
struct Slot {
    var: Var,
    m: Tensor,
    v: Tensor,
    ema: Tensor,
    /// Not updated (see [`AdamW::freeze`]).
    frozen: bool,
}

/// AdamW over named variables, with EMA.
pub struct AdamW {
    slots: Vec<(String, Slot)>,
    pub cfg: AdamWConfig,
    /// Optimizer steps taken.
    pub step: usize,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    pub grad_norm: f64,
    pub lr: f64,
}

impl AdamW {
    /// Over every variable of `varmap`.
    pub fn over(varmap: &candle_nn::VarMap, cfg: AdamWConfig) -> Result<Self> {
        let vars = varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("the variables' lock was poisoned".into()))?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Self::new(vars, cfg)
    }

    /// Starts from `vars` (name -> variable), zero moments, EMA = current weights.
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let mut slots = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            let t = var.as_tensor();
            slots.push((
                name,
                Slot {
                    m: t.zeros_like()?,
                    v: t.zeros_like()?,
                    ema: t.detach().copy()?,
                    var,
                    frozen: false,
                },
            ));
        }
        slots.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            slots,
            cfg,
            step: 0,
        })
    }

    /// Stops updating the variables whose names `which` selects. Each is first set to its EMA,
    /// so the weights a saved model holds (the EMA) and the live ones agree and stay exactly
    /// as they are: a frozen encoder keeps its latent space. Returns how many were frozen.
    pub fn freeze(&mut self, which: impl Fn(&str) -> bool) -> Result<usize> {
        let mut n = 0;
        for (name, s) in &mut self.slots {
            if which(name) && !s.frozen {
                s.var.set(&s.ema)?;
                s.frozen = true;
                n += 1;
            }
        }
        Ok(n)
    }

    /// The learning rate at the current step.
    pub fn lr(&self) -> f64 {
        let w = self.cfg.warmup_steps;
        let warm = if w == 0 || self.step >= w {
            1.0
        } else {
            (self.step + 1) as f64 / w as f64
        };
        let decay = match self.cfg.decay {
            Some([from, to]) if self.step >= from => {
                let t = (self.step - from) as f64 / to.saturating_sub(from).max(1) as f64;
                0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
            }
            _ => 1.0,
        };
        self.cfg.lr * warm * decay
    }

    /// Applies one update from `grads`. Variables without a gradient are an error: every
    /// parameter that is not frozen is expected to train.
    pub fn step(&mut self, grads: &GradStore) -> Result<StepInfo> {
        let mut sq = 0f64;
        // Elsewhere than the CPU in f32, each variable's sum stays on its device and one
        // read at the end brings the total back: a read per variable would wait for the
        // device hundreds of times a step.
        let mut on_device = Vec::new();
        let mut gs = Vec::with_capacity(self.slots.len());
        for (name, s) in &self.slots {
            if s.frozen {
                gs.push(None);
                continue;
            }
            let g = grads
                .get(s.var.as_tensor())
                .ok_or_else(|| candle_core::Error::Msg(format!("no gradient for '{name}'")))?;
            match cpu_f32(g, sum_of_squares) {
                Some(v) => sq += v,
                None => on_device.push(g.sqr()?.sum_all()?.to_dtype(DType::F64)?),
            }
            gs.push(Some(g.detach()));
        }
        if !on_device.is_empty() {
            sq += Tensor::stack(&on_device, 0)?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
        let norm = sq.sqrt();
        let scale = if self.cfg.max_grad_norm > 0.0 && norm > self.cfg.max_grad_norm {
            self.cfg.max_grad_norm / (norm + 1e-6)
        } else {
            1.0
        };
        let lr = self.lr();
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        let decay = self
            .cfg
            .ema_decay
            .min((1.0 + self.step as f64) / (10.0 + self.step as f64));
        let h = Scalars {
            scale,
            b1,
            b2,
            bc1,
            bc2,
            lr,
            wd: self.cfg.weight_decay,
            eps: self.cfg.eps,
            decay,
        };
        for ((name, s), g) in self.slots.iter_mut().zip(gs) {
            let Some(g) = g else { continue };
            let factor = self
                .cfg
                .lr_scales
                .iter()
                .find(|(prefix, _)| name.starts_with(prefix.as_str()))
                .map_or(1.0, |(_, f)| *f);
            let h = Scalars {
                lr: lr * factor,
                ..h
            };
            if !fused_update(s, &g, &h)? {
                tensor_update(s, &g, &h)?;
            }
        }
        Ok(StepInfo {
            grad_norm: norm,
            lr,
        })
    }

    /// Whether every weight is finite (a step with a huge learning rate can overflow them even
    /// when the loss that produced it was finite).
    pub fn all_finite(&self) -> Result<bool> {
        // One read of the device for all the variables (a NaN or infinity anywhere makes the
        // sum of the absolute sums one too).
        let sums = self
            .slots
            .iter()
            .map(|(_, s)| s.var.as_tensor().abs()?.sum_all()?.to_dtype(DType::F64))
            .collect::<Result<Vec<_>>>()?;
        if sums.is_empty() {
            return Ok(true);
        }
        let total: f64 = Tensor::stack(&sums, 0)?.sum_all()?.to_scalar()?;
        Ok(total.is_finite())
    }

    /// Every piece of state as named tensors: `param/`, `m/`, `v/`, `ema/` + the name.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, s) in &self.slots {
            out.insert(format!("param/{name}"), s.var.as_tensor().detach().copy()?);
            out.insert(format!("m/{name}"), s.m.clone());
            out.insert(format!("v/{name}"), s.v.clone());
            out.insert(format!("ema/{name}"), s.ema.clone());
        }
        Ok(out)
    }

    /// Restores [`state`](Self::state) output; every name must be present with its shape.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        let get = |k: String, like: &Tensor| -> Result<Tensor> {
            let t = state
                .get(&k)
                .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks '{k}'")))?;
            if t.shape() != like.shape() {
                candle_core::bail!(
                    "checkpoint '{k}' has shape {:?}, expected {:?}",
                    t.dims(),
                    like.dims()
                )
            }
            t.to_device(like.device())?.to_dtype(like.dtype())
        };
        for (name, s) in &mut self.slots {
            let like = s.var.as_tensor().clone();
            s.var.set(&get(format!("param/{name}"), &like)?)?;
            s.m = get(format!("m/{name}"), &like)?;
            s.v = get(format!("v/{name}"), &like)?;
            s.ema = get(format!("ema/{name}"), &like)?;
        }
        self.step = step;
        Ok(())
    }

    /// The EMA weights under their variable names (what a saved model holds).
    pub fn ema_weights(&self) -> HashMap<String, Tensor> {
        self.slots
            .iter()
            .map(|(n, s)| (n.clone(), s.ema.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// One step against hand-computed PyTorch AdamW arithmetic.
    #[test]
    fn first_step_matches_torch_adamw() -> Result<()> {
        let var = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
        let cfg = AdamWConfig {
            lr: 0.1,
            warmup_steps: 0,
            max_grad_norm: 0.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], cfg)?;
        let loss = (var.as_tensor() * Tensor::new(&[3.0f32, 4.0], &Device::Cpu)?)?.sum_all()?;
        opt.step(&loss.backward()?)?;
        // m_hat = g, v_hat = g^2 -> update = sign(g) (up to eps); p = p(1 - lr wd) - lr.
        let got = var.as_tensor().to_vec1::<f32>()?;
        let want = [
            1.0 * (1.0 - 0.1 * 0.01) - 0.1,
            -2.0 * (1.0 - 0.1 * 0.01) - 0.1,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
        Ok(())
    }

    /// A rate factor by name prefix: its variables take that multiple of the step (and of the
    /// weight decay), the rest the plain one.
    #[test]
    fn lr_scales_apply_by_name_prefix() -> Result<()> {
        let dev = Device::Cpu;
        let (a, b) = (Var::new(&[1.0f32], &dev)?, Var::new(&[1.0f32], &dev)?);
        let cfg = AdamWConfig {
            lr: 0.1,
            warmup_steps: 0,
            max_grad_norm: 0.0,
            lr_scales: vec![("text_encoder.".into(), 3.0)],
            ..Default::default()
        };
        let mut opt = AdamW::new(
            vec![
                ("text_encoder.w".into(), a.clone()),
                ("unet.w".into(), b.clone()),
            ],
            cfg,
        )?;
        let loss = (a.as_tensor() + b.as_tensor())?.sum_all()?;
        opt.step(&loss.backward()?)?;
        let moved = |v: &Var, lr: f32| {
            let got = v.as_tensor().to_vec1::<f32>().unwrap()[0];
            let want = 1.0 * (1.0 - lr * 0.01) - lr;
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        };
        moved(&a, 0.3);
        moved(&b, 0.1);
        Ok(())
    }

    /// The one-pass CPU update and the tensor one agree over steps with clipping, decay, bias
    /// correction and EMA.
    #[test]
    fn fused_update_matches_the_tensor_update() -> Result<()> {
        let dev = Device::Cpu;
        let slot = |seed: f32| -> Result<Slot> {
            let p = Tensor::arange(0f32, 37.0, &dev)?
                .affine(0.1, seed as f64)?
                .sin()?;
            Ok(Slot {
                m: p.affine(0.01, 0.0)?,
                v: p.sqr()?.affine(0.001, 0.0)?,
                ema: p.affine(0.9, 0.0)?,
                var: Var::from_tensor(&p)?,
                frozen: false,
            })
        };
        let (mut a, mut b) = (slot(0.3)?, slot(0.3)?);
        for t in 1..=5 {
            let g = Tensor::arange(0f32, 37.0, &dev)?
                .affine(0.7, t as f64)?
                .cos()?;
            let h = Scalars {
                scale: 0.8,
                b1: 0.9,
                b2: 0.999,
                bc1: 1.0 - 0.9f64.powi(t),
                bc2: 1.0 - 0.999f64.powi(t),
                lr: 1e-2,
                wd: 0.01,
                eps: 1e-8,
                decay: 0.99,
            };
            assert!(fused_update(&mut a, &g, &h)?, "applies to CPU f32");
            tensor_update(&mut b, &g, &h)?;
        }
        for (x, y) in [
            (a.var.as_tensor(), b.var.as_tensor()),
            (&a.m, &b.m),
            (&a.v, &b.v),
            (&a.ema, &b.ema),
        ] {
            let (x, y) = (x.to_vec1::<f32>()?, y.to_vec1::<f32>()?);
            for (p, q) in x.iter().zip(&y) {
                assert!((p - q).abs() <= 2e-7 * q.abs().max(1e-3), "{p} vs {q}");
            }
        }
        Ok(())
    }

    /// The gradient norm summed on the device (every path but the CPU in f32; f64 here) is the
    /// norm over all variables, and a non-finite weight anywhere is caught.
    #[test]
    fn device_side_norm_and_finiteness_cover_every_variable() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::new(&[1.0f64, 2.0], &dev)?;
        let b = Var::new(&[[0.5f64], [-1.0]], &dev)?;
        let cfg = AdamWConfig {
            lr: 1e-3,
            warmup_steps: 0,
            max_grad_norm: 0.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())], cfg)?;
        // Gradients 3, 3 for a and 4, 4 for b: norm sqrt(9 + 9 + 16 + 16).
        let loss = ((a.as_tensor() * 3.0)?.sum_all()? + (b.as_tensor() * 4.0)?.sum_all()?)?;
        let info = opt.step(&loss.backward()?)?;
        assert!(
            (info.grad_norm - 50f64.sqrt()).abs() < 1e-12,
            "{}",
            info.grad_norm
        );
        assert!(opt.all_finite()?);
        b.set(&Tensor::new(&[[0.5f64], [f64::NAN]], &dev)?)?;
        assert!(!opt.all_finite()?, "a NaN in the second variable");
        Ok(())
    }

    #[test]
    fn cosine_decay_runs_from_the_full_rate_to_zero() -> Result<()> {
        let var = Var::new(&[0.0f32; 2], &Device::Cpu)?;
        let cfg = AdamWConfig {
            lr: 2.0,
            warmup_steps: 0,
            decay: Some([10, 20]),
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![("w".into(), var)], cfg)?;
        let mut at = |step| {
            opt.step = step;
            opt.lr()
        };
        assert_eq!(at(0), 2.0);
        assert_eq!(at(10), 2.0, "the decay starts at its first step");
        assert!((at(15) - 1.0).abs() < 1e-12, "half way: half the rate");
        assert!(at(19) < 0.05 && at(19) > 0.0);
        assert!(at(20).abs() < 1e-12 && at(25).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn clipping_bounds_the_update_and_state_round_trips() -> Result<()> {
        let var = Var::new(&[0.0f32; 4], &Device::Cpu)?;
        let cfg = AdamWConfig {
            lr: 1.0,
            warmup_steps: 10,
            max_grad_norm: 1.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], cfg)?;
        assert!((opt.lr() - 0.1).abs() < 1e-12, "warmup starts at lr/warmup");
        let loss = (var.as_tensor() * 1000.0)?.sum_all()?;
        let info = opt.step(&loss.backward()?)?;
        assert!((info.grad_norm - 2000.0).abs() < 1e-3);
        let state = opt.state()?;
        let var2 = Var::new(&[9.0f32; 4], &Device::Cpu)?;
        let mut opt2 = AdamW::new(vec![("w".into(), var2.clone())], opt.cfg.clone())?;
        opt2.load_state(&state, opt.step)?;
        assert_eq!(
            var2.as_tensor().to_vec1::<f32>()?,
            var.as_tensor().to_vec1::<f32>()?
        );
        assert!(opt2
            .load_state(&HashMap::new(), 0)
            .unwrap_err()
            .to_string()
            .contains("lacks 'param/w'"));
        Ok(())
    }
}
