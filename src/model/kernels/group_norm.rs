//! Group normalisation as one fused CPU kernel with a fused backward pass.
//!
//! candle-nn's `GroupNorm` is composed of about eight element-wise passes forward (and twice
//! that backward), each allocating a full-size tensor; in a training step of the small VAE they
//! were a large share of the time. This kernel reads the input twice forward and twice
//! backward. It runs for contiguous f32 tensors on the CPU; anything else takes candle-nn's path.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

/// `torch.nn.GroupNorm` with affine parameters.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

/// Loads a [`GroupNorm`] over `channels` channels in `groups` groups from `vb`.
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    if groups == 0 || !channels.is_multiple_of(groups) {
        candle_core::bail!("group norm: {channels} channels do not split into {groups} groups")
    }
    let dtype = super::bf16::compute_dtype_for(vb.dtype(), vb.device());
    let weight = vb.get_with_hints_dtype(channels, "weight", candle_nn::Init::Const(1.), dtype)?;
    let bias = vb.get_with_hints_dtype(channels, "bias", candle_nn::Init::Const(0.), dtype)?;
    let inner = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
    Ok(GroupNorm {
        inner,
        weight,
        bias,
        groups,
        eps,
    })
}

impl GroupNorm {
    fn fused(&self, xs: &Tensor) -> bool {
        xs.device().is_cpu()
            && xs.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
            && xs.rank() >= 3
    }

    /// `silu(group_norm(xs))`, the pair every ResNet block starts its branches with. Without
    /// gradients to track (inference) it is one kernel: the SiLU runs on each channel while it
    /// is in cache, with a vectorised exponential, instead of a second full pass.
    pub fn forward_silu(&self, xs: &Tensor) -> Result<Tensor> {
        let tracked = xs.track_op() || self.weight.track_op() || self.bias.track_op();
        if tracked || !self.fused(xs) {
            return super::activations::silu(&self.forward(xs)?);
        }
        xs.contiguous()?.apply_op3_no_bwd(
            &self.weight,
            &self.bias,
            &Fused {
                groups: self.groups,
                eps: self.eps,
                silu: true,
            },
        )
    }
}

impl Module for GroupNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if !self.fused(xs) {
            return self.inner.forward(xs);
        }
        let xs = xs.contiguous()?;
        xs.apply_op3(
            &self.weight,
            &self.bias,
            Fused {
                groups: self.groups,
                eps: self.eps,
                silu: false,
            },
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct Fused {
    groups: usize,
    eps: f64,
    /// Apply SiLU to the output (forward only: no backward pass for this variant).
    silu: bool,
}

/// `(batch, channels, elements per channel)` of a contiguous `(b, c, ...)` layout.
fn dims(l: &Layout) -> Result<(usize, usize, usize)> {
    let d = l.dims();
    if d.len() < 3 {
        candle_core::bail!("group norm needs rank >= 3, got {d:?}")
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    super::contiguous_f32(s, l, "fused group norm")
}

/// Sum of `f(x, y)` over the pairs of two equally long slices, in eight f32 lanes (so the
/// compiler vectorises it), then f64.
#[inline(always)]
fn lane_sum2(xs: &[f32], ys: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut acc = [0f32; 8];
    let (xc, yc) = (xs.chunks_exact(8), ys.chunks_exact(8));
    let tail: f64 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(&x, &y)| f(x, y) as f64)
        .sum();
    for (x8, y8) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += f(x8[l], y8[l]);
        }
    }
    acc.iter().map(|&a| a as f64).sum::<f64>() + tail
}

/// Sum of `f(x)` over a slice, in eight f32 lanes.
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    lane_sum2(xs, xs, |x, _| f(x))
}

/// Mean and 1/std of each group chunk (two passes: the variance around the mean). Summed in
/// f32 lanes; where that overflows (activations beyond ~1e19, a diverging run) in f64, so
/// the overflow shows as it would in PyTorch instead of a silent zero output.
fn stats(chunk: &[f32], eps: f64) -> (f32, f32) {
    let n = chunk.len() as f64;
    let mean = (lane_sum(chunk, |x| x) / n) as f32;
    let var = lane_sum(chunk, |x| {
        let d = x - mean;
        d * d
    }) / n;
    if mean.is_finite() && var.is_finite() {
        return (mean, (1.0 / (var + eps).sqrt()) as f32);
    }
    let mean = chunk.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = chunk
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

impl CustomOp3 for Fused {
    fn name(&self) -> &'static str {
        "fused-group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, hw) = dims(l1)?;
        let (x, w, bias) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let g = self.groups;
        if c % g != 0 || w.len() != c || bias.len() != c {
            candle_core::bail!("group norm: {c} channels, {g} groups, {} weights", w.len())
        }
        let group_len = c / g * hw;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(group_len)
            .zip(x.par_chunks(group_len))
            .enumerate()
            .for_each(|(i, (o, xc))| {
                let (mean, rstd) = stats(xc, self.eps);
                let c0 = (i % g) * (c / g);
                for (k, (ov, xv)) in o.chunks_mut(hw).zip(xc.chunks(hw)).enumerate() {
                    let (wc, bc) = (w[c0 + k] * rstd, bias[c0 + k]);
                    let shift = bc - mean * wc;
                    for (a, &v) in ov.iter_mut().zip(xv) {
                        *a = v * wc + shift;
                    }
                    if self.silu {
                        super::fastmath::silu_in_place(ov);
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if self.silu {
            candle_core::bail!("the fused group norm + SiLU has no backward pass")
        }
        let (n, c) = (x.elem_count(), w.elem_count());
        let packed = x.contiguous()?.apply_op3_no_bwd(
            &w.contiguous()?,
            &grad.contiguous()?,
            &Backward(*self),
        )?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = packed.narrow(0, n, c)?;
        let db = packed.narrow(0, n + c, c)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Computes `[dx (flat) | dweight | dbias]` from `(x, weight, grad)`.
struct Backward(Fused);

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "fused-group-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, hw) = dims(l1)?;
        let (x, w, dy) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let g = self.0.groups;
        let cg = c / g;
        let group_len = cg * hw;
        let mut dx = vec![0f32; x.len()];
        // Per group: dx, and per-channel partial sums for dweight and dbias.
        let partial: Vec<(usize, Vec<f64>, Vec<f64>)> = dx
            .par_chunks_mut(group_len)
            .zip(x.par_chunks(group_len).zip(dy.par_chunks(group_len)))
            .enumerate()
            .map(|(i, (dxc, (xc, dyc)))| {
                let (mean, rstd) = stats(xc, self.0.eps);
                let c0 = (i % g) * cg;
                let (mut sum_g, mut sum_gx) = (0f64, 0f64);
                let (mut dw, mut db) = (vec![0f64; cg], vec![0f64; cg]);
                for k in 0..cg {
                    let (xk, dyk) = (&xc[k * hw..(k + 1) * hw], &dyc[k * hw..(k + 1) * hw]);
                    db[k] = lane_sum(dyk, |d| d);
                    dw[k] = lane_sum2(xk, dyk, |x, d| d * ((x - mean) * rstd));
                    let wc = w[c0 + k] as f64;
                    sum_g += db[k] * wc;
                    sum_gx += dw[k] * wc;
                }
                let nn = group_len as f64;
                let (mg, mgx) = ((sum_g / nn) as f32, (sum_gx / nn) as f32);
                for k in 0..cg {
                    let wc = w[c0 + k];
                    let range = k * hw..(k + 1) * hw;
                    for ((o, &xv), &d) in dxc[range.clone()]
                        .iter_mut()
                        .zip(&xc[range.clone()])
                        .zip(&dyc[range])
                    {
                        let xhat = (xv - mean) * rstd;
                        *o = rstd * (d * wc - mg - xhat * mgx);
                    }
                }
                (c0, dw, db)
            })
            .collect();
        let mut out = dx;
        let (mut dw, mut db) = (vec![0f64; c], vec![0f64; c]);
        for (c0, pw, pb) in partial {
            for k in 0..cg {
                dw[c0 + k] += pw[k];
                db[c0 + k] += pb[k];
            }
        }
        out.extend(dw.iter().map(|&v| v as f32));
        out.extend(db.iter().map(|&v| v as f32));
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn forward_and_gradients_match_the_composed_group_norm() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0.5f32, 2.0, (2, 6, 3, 5), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 6, &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 6, &dev)?)?;
        let composed =
            candle_nn::GroupNorm::new(w.as_tensor().clone(), b.as_tensor().clone(), 6, 3, 1e-5)?;
        let fused = GroupNorm {
            inner: composed.clone(),
            weight: w.as_tensor().clone(),
            bias: b.as_tensor().clone(),
            groups: 3,
            eps: 1e-5,
        };
        let probe = Tensor::randn(0f32, 1.0, (2, 6, 3, 5), &dev)?;
        let run = |m: &dyn Module| -> Result<(Tensor, Vec<Tensor>)> {
            let y = m.forward(x.as_tensor())?;
            let grads = (y.clone() * &probe)?.sum_all()?.backward()?;
            let g = [x.as_tensor(), w.as_tensor(), b.as_tensor()]
                .map(|t| grads.get(t).expect("gradient").clone());
            Ok((y, g.to_vec()))
        };
        let (ya, ga) = run(&composed)?;
        let (yb, gb) = run(&fused)?;
        let close = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        assert!(close(&ya, &yb)? < 1e-5, "forward");
        for (i, (a, b)) in ga.iter().zip(&gb).enumerate() {
            assert!(
                close(a, b)? < 1e-4,
                "gradient {i} differs by {}",
                close(a, b)?
            );
        }
        Ok(())
    }

    #[test]
    fn fused_silu_matches_group_norm_then_silu() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0.5f32, 2.0, (2, 8, 4, 5), &dev)?;
        let w = Tensor::randn(1f32, 0.3, 8, &dev)?;
        let b = Tensor::randn(0f32, 0.3, 8, &dev)?;
        let gn = GroupNorm {
            inner: candle_nn::GroupNorm::new(w.clone(), b.clone(), 8, 4, 1e-5)?,
            weight: w,
            bias: b,
            groups: 4,
            eps: 1e-5,
        };
        let reference = gn.forward(&x)?.silu()?;
        let fused = gn.forward_silu(&x)?;
        let diff = (reference - fused)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "differs by {diff}");
        Ok(())
    }
}
