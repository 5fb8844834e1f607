//! Softmax over rows, SiLU and GEGLU as CPU kernels with one-pass backward kernels (candle's
//! own backward passes compose about ten tensor operations each; its fused softmax has none).
//! Off the CPU or in another dtype, candle's differentiable forms run.

use candle_core::{Result, Tensor, D};

use super::{contiguous_f32, cpu_f32};

/// Softmax over the last dimension; differentiable whenever `xs` tracks gradients.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if cpu_f32(xs) {
        xs.contiguous()?.apply_op1(SoftmaxRows)
    } else if xs.track_op() {
        candle_nn::ops::softmax(xs, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(xs)
    }
}

/// `x * sigmoid(x)`; on the CPU one vectorised pass, and one for its gradient (candle's own
/// backward composes about ten tensor operations).
pub fn silu(xs: &Tensor) -> Result<Tensor> {
    if cpu_f32(xs) {
        xs.contiguous()?.apply_op1(Silu)
    } else {
        xs.silu()
    }
}

/// Softmax over the last dimension with the vectorised exponential of
/// [`fastmath`](super::fastmath), and its backward pass in one kernel.
struct SoftmaxRows;

impl candle_core::CustomOp1 for SoftmaxRows {
    fn name(&self) -> &'static str {
        "softmax-rows"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let mut data = contiguous_f32(s, l, "softmax")?.to_vec();
        let len = l.dims().last().copied().unwrap_or(1);
        super::fastmath::softmax_rows(&mut data, len);
        Ok((candle_core::CpuStorage::F32(data), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // dx = y * (dy - sum(dy * y)) along each row.
        let g = grad_res.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(
            &g,
            &Backward(
                |y, dy, dx| {
                    let len = y.len();
                    let dot: f32 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
                    for i in 0..len {
                        dx[i] = y[i] * (dy[i] - dot);
                    }
                },
                Rows::Last,
            ),
        )?))
    }
}

/// How a [`Backward`] kernel sees its data: matching rows of the last dimensions (which may
/// differ in width), or any chunk of equal-length data.
#[derive(Clone, Copy)]
enum Rows {
    Last,
    Any,
}

/// The gradient kernel of an element-wise or row-wise op: `f(a, dy, dx)` on each row (or
/// chunk) of the op's saved tensor `a` (its input or output) and of the incoming gradient.
struct Backward<F: Fn(&[f32], &[f32], &mut [f32])>(F, Rows);

impl<F: Fn(&[f32], &[f32], &mut [f32]) + Send + Sync> candle_core::CustomOp2 for Backward<F> {
    fn name(&self) -> &'static str {
        "backward"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let a = contiguous_f32(s1, l1, "backward")?;
        let dy = contiguous_f32(s2, l2, "backward")?;
        let last = |l: &candle_core::Layout| l.dims().last().copied().unwrap_or(1).max(1);
        let (row_a, row_dy) = match self.1 {
            Rows::Last => (last(l1), last(l2)),
            Rows::Any => (4096, 4096),
        };
        if a.len().div_ceil(row_a) != dy.len().div_ceil(row_dy)
            || (matches!(self.1, Rows::Any) && a.len() != dy.len())
        {
            candle_core::bail!(
                "backward: {} values against a gradient of {}",
                a.len(),
                dy.len()
            )
        }
        let mut dx = vec![0f32; a.len()];
        for ((a, dy), dx) in a
            .chunks(row_a)
            .zip(dy.chunks(row_dy))
            .zip(dx.chunks_mut(row_a))
        {
            (self.0)(a, dy, dx);
        }
        Ok((candle_core::CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// SiLU with the vectorised exponential and a one-pass gradient.
struct Silu;

impl candle_core::CustomOp1 for Silu {
    fn name(&self) -> &'static str {
        "silu"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let mut data = contiguous_f32(s, l, "silu")?.to_vec();
        super::fastmath::silu_in_place(&mut data);
        Ok((candle_core::CpuStorage::F32(data), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        let x = arg.contiguous()?;
        Ok(Some(x.apply_op2_no_bwd(
            &g,
            &Backward(super::fastmath::silu_grad, Rows::Any),
        )?))
    }
}

/// GEGLU's second half: `hidden * gelu_erf(gate)` where `h = [hidden | gate]` on the last
/// dimension. On the CPU it is one pass over `h` ([`fastmath::gelu_mul`](super::fastmath::gelu_mul))
/// instead of two strided views, a GELU and a product, and its gradient one more.
pub fn geglu(h: &Tensor) -> Result<Tensor> {
    let inner = h.dim(D::Minus1)? / 2;
    if !cpu_f32(h) {
        let hidden = h.narrow(D::Minus1, 0, inner)?;
        let gate = h.narrow(D::Minus1, inner, inner)?;
        return hidden * gate.gelu_erf()?;
    }
    h.contiguous()?.apply_op1(GeGlu)
}

struct GeGlu;

impl candle_core::CustomOp1 for GeGlu {
    fn name(&self) -> &'static str {
        "geglu"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let h = contiguous_f32(s, l, "geglu")?;
        let mut dims = l.dims().to_vec();
        let two_inner = dims.pop().unwrap_or(0);
        if !two_inner.is_multiple_of(2) {
            candle_core::bail!("geglu needs an even last dimension, got {two_inner}")
        }
        let inner = two_inner / 2;
        dims.push(inner);
        let mut out = vec![0f32; h.len() / 2];
        for (o, row) in out
            .chunks_exact_mut(inner.max(1))
            .zip(h.chunks_exact(two_inner.max(1)))
        {
            super::fastmath::gelu_mul(o, &row[..inner], &row[inner..]);
        }
        Ok((candle_core::CpuStorage::F32(out), dims.into()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // The gradient has the input's shape, [d hidden | d gate] per row of `h`, from a row
        // of the incoming gradient (half as wide).
        let g = grad_res.contiguous()?;
        let h = arg.contiguous()?;
        Ok(Some(h.apply_op2_no_bwd(
            &g,
            &Backward(
                |h, dy, dh| {
                    let inner = h.len() / 2;
                    let (dhid, dgate) = dh.split_at_mut(inner);
                    super::fastmath::geglu_grad(&h[..inner], &h[inner..], dy, dhid, dgate)
                },
                Rows::Last,
            ),
        )?))
    }
}
