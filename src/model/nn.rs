//! Small layers shared by the networks, chosen so that training gets gradients everywhere.
//!
//! candle-nn 0.11's fused `softmax_last_dim` and `layer_norm` kernels are fast but have no
//! backward pass: a gradient reaching them silently stops. On the CPU in f32, softmax, SiLU and
//! GEGLU here are our own kernels with their own one-pass backward kernels (training and
//! inference alike); elsewhere, and for layer norm, the fused kernel runs only when no gradient
//! is being tracked (inference) and the composed, differentiable form otherwise, so one network
//! definition serves both the editor and the trainer.

use candle_core::{Module, Result, Tensor, D};

use super::kernels::im2col::Im2Col;
use super::kernels::in_shares;
use candle_nn::VarBuilder;

/// The dtype a network built from `vb` computes in: its weights' dtype, except that bf16
/// weights on the CPU compute in f32 (only the matrix products read them in bf16, through
/// [`super::kernels::bf16`]; norms, biases and embeddings are widened to f32 as they load).
pub fn compute_dtype(vb: &VarBuilder) -> candle_core::DType {
    compute_dtype_for(vb.dtype(), vb.device())
}

pub use super::kernels::bf16::compute_dtype_for;

/// Whether `w` is a bf16 weight a CPU product reads through [`super::kernels::bf16`].
fn bf16_on_cpu(w: &Tensor) -> bool {
    w.device().is_cpu() && w.dtype() == candle_core::DType::BF16
}

/// `torch.nn.LayerNorm` over the last dimension (with affine weight and bias).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of size `dim` from `vb`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let dtype = compute_dtype(&vb);
        let weight = vb.get_with_hints_dtype(dim, "weight", candle_nn::Init::Const(1.), dtype)?;
        let bias = vb.get_with_hints_dtype(dim, "bias", candle_nn::Init::Const(0.), dtype)?;
        Ok(Self {
            weight,
            bias,
            eps: eps as f32,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = xs.contiguous()?;
        if xs.track_op() || self.weight.track_op() {
            candle_nn::ops::layer_norm_slow(&xs, &self.weight, &self.bias, self.eps)
        } else {
            candle_nn::ops::layer_norm(&xs, &self.weight, &self.bias, self.eps)
        }
    }
}

/// A `torch.nn.Linear` layer: `x W^T + b` over the last dimension, the leading dimensions folded
/// into the rows of one matrix product (candle's `Linear` runs one product per batch row).
#[derive(Debug, Clone)]
pub struct Linear {
    /// `(in, out)` contiguous when `transposed`; packed for the bf16 product when `packed`
    /// ([`super::kernels::bf16::pack_weight`]); else `(out, in)`.
    weight: Tensor,
    transposed: bool,
    /// `(out, in)` of a weight held packed.
    packed: Option<(usize, usize)>,
    bias: Option<Tensor>,
}

/// Builds a [`Linear`] with `weight` `(out_dim, in_dim)` (and `bias` `(out_dim,)`) from `vb`.
pub fn linear(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    build_linear(in_dim, out_dim, bias, vb, false)
}

/// A [`linear`] layer for inputs of few rows (a text encoder's 77 tokens): loaded weights are
/// stored transposed, `(in, out)`, which the CPU matrix product reads faster there (text
/// encoder 0.34 -> 0.27 s at 2 threads; on the UNet's thousands of rows it was slower).
pub fn linear_few_rows(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    vb: VarBuilder,
) -> Result<Linear> {
    build_linear(in_dim, out_dim, bias, vb, true)
}

fn build_linear(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    vb: VarBuilder,
    transpose: bool,
) -> Result<Linear> {
    // candle-nn's initialisation (for layers made fresh, as in training), with the bias in
    // the compute dtype.
    let weight = vb.get_with_hints(
        (out_dim, in_dim),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bias = if bias {
        let bound = 1. / (in_dim as f64).sqrt();
        let init = candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        Some(vb.get_with_hints_dtype(out_dim, "bias", init, compute_dtype(&vb))?)
    } else {
        None
    };
    // A trained variable stays as it is (its gradient is taken with respect to it); bf16
    // weights are read by their own product, packed once for it where the CPU runs it on
    // bf16 dot products.
    let bf16 = bf16_on_cpu(&weight);
    let transposed = transpose && !weight.is_variable() && !bf16;
    let packed = bf16
        && !weight.is_variable()
        && super::kernels::bf16::Bf16Kernel::detect()
            == super::kernels::bf16::Bf16Kernel::Avx512Bf16;
    Ok(Linear {
        weight: if transposed {
            super::kernels::transposed(&weight)?
        } else if packed {
            super::kernels::bf16::pack_weight(&weight)?
        } else {
            weight
        },
        transposed,
        packed: packed.then_some((out_dim, in_dim)),
        bias,
    })
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims();
        let Some((&inner, lead)) = dims.split_last() else {
            candle_core::bail!("linear: a scalar input")
        };
        let rows = lead.iter().product::<usize>();
        let xs = xs.reshape((rows, inner))?;
        if let Some((n, k)) = self.packed {
            let ys =
                super::kernels::bf16::matmul_packed(&xs, &self.weight, (n, k), self.bias.as_ref())?;
            let mut shape = lead.to_vec();
            shape.push(n);
            return ys.reshape(shape);
        }
        let (ys, out_dim) = if bf16_on_cpu(&self.weight) {
            let ys = super::kernels::bf16::matmul_wt(&xs, &self.weight)?;
            (ys, self.weight.dim(0)?)
        } else if self.transposed {
            (xs.matmul(&self.weight)?, self.weight.dim(1)?)
        } else {
            (xs.matmul(&self.weight.t()?)?, self.weight.dim(0)?)
        };
        let ys = match &self.bias {
            Some(b) => ys.broadcast_add(b)?,
            None => ys,
        };
        let mut shape = lead.to_vec();
        shape.push(out_dim);
        ys.reshape(shape)
    }
}

/// The most patch-matrix bytes an inference convolution builds at once; larger ones run in
/// bands of output rows.
const BAND_BYTES: usize = 128 << 20;

/// A `torch.nn.Conv2d` layer with a bias and a square kernel.
///
/// On the CPU (f32), k x k convolutions run as one patch extraction ([`Im2Col`], with its own
/// backward) and one matrix product (1x1 ones as the matrix product alone): candle 0.11's CPU conv2d re-flattens the kernel and
/// gathers patches element by element on every call, which made it most of a UNet step here.
#[derive(Debug, Clone)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
    /// `(out, in * k * k)`, for the im2col path.
    weight_2d: Tensor,
    bias: Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
}

/// Builds a [`Conv2d`] with weights `weight` `(out, in, k, k)` and `bias` `(out,)` from `vb`.
pub fn conv2d(
    in_ch: usize,
    out_ch: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let cfg = candle_nn::Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    // candle-nn's initialisation (for layers made fresh), with the bias in the compute dtype.
    let weight = vb.get_with_hints(
        (out_ch, in_ch, kernel, kernel),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bound = 1. / (in_ch as f64).sqrt();
    let init = candle_nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let bias = vb.get_with_hints_dtype(out_ch, "bias", init, compute_dtype(&vb))?;
    let inner = candle_nn::Conv2d::new(weight, Some(bias.clone()), cfg);
    let weight_2d = inner.weight().reshape((out_ch, in_ch * kernel * kernel))?;
    let bias = bias.reshape((1, out_ch, 1))?;
    Ok(Conv2d {
        inner,
        weight_2d,
        bias,
        kernel,
        stride,
        padding,
    })
}

impl Conv2d {
    /// The `(out, in*k*k)` weights seen as a batch of `b` (a stride-0 view: candle's CPU matrix
    /// product reads it in place, where `broadcast_matmul` would copy the weights `b` times).
    fn batched_weight(&self, b: usize) -> Result<Tensor> {
        let (o, k) = self.weight_2d.dims2()?;
        self.weight_2d.broadcast_as((b, o, k))
    }

    /// `weight_2d · cols + bias` for each sample of `cols` `(b, in*k*k, pixels)`.
    fn times(&self, cols: &Tensor) -> Result<Tensor> {
        if bf16_on_cpu(&self.weight_2d) {
            let bias = self.bias.flatten_all()?;
            return super::kernels::bf16::weight_matmul(&self.weight_2d, cols, Some(&bias));
        }
        self.batched_weight(cols.dim(0)?)?
            .matmul(cols)?
            .broadcast_add(&self.bias)
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_in_bands(xs, BAND_BYTES)
    }
}

impl Conv2d {
    /// The forward pass, building at most `band_bytes` of patches at once when untracked.
    fn forward_in_bands(&self, xs: &Tensor, band_bytes: usize) -> Result<Tensor> {
        let cpu_f32 = xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32;
        if !cpu_f32 {
            return self.inner.forward(xs);
        }
        let (b, c, h, w) = xs.dims4()?;
        if self.kernel == 1 && self.stride == 1 && self.padding == 0 {
            // A 1x1 convolution is a matrix product over the channels; no patches to gather.
            return self
                .times(&xs.reshape((b, c, h * w))?)?
                .reshape((b, (), h, w));
        }
        let (o, k) = (self.bias.elem_count(), self.kernel);
        let same = self.stride == 1 && 2 * self.padding + 1 == k;
        let shifted = same && o * k * k <= b * h * w;
        // bf16 weights on AVX512-BF16: their own convolution (rows of whole vectors) or
        // patches and their own product; widened to f32, they take the f32 route.
        let bf16 = bf16_on_cpu(&self.weight_2d);
        if bf16 && same && super::kernels::bf16::conv_same_applies(k, w) {
            let bias = self.bias.flatten_all()?;
            return super::kernels::bf16::conv_same(xs, self.inner.weight(), Some(&bias));
        }
        let widen = bf16
            && super::kernels::bf16::Bf16Kernel::detect()
                == super::kernels::bf16::Bf16Kernel::Widen;
        if shifted && (widen || !bf16) {
            // Kernel rows of shifted copies, no patch matrix (forward and backward). Each band
            // of rows packs the weights again, so this pays where they are small beside the
            // input (measured per layer shape: 0.4-0.8x the im2col time there, up to 3x where
            // they are not).
            return super::kernels::shifted_conv::conv_same(
                xs,
                &self.inner.weight().to_dtype(candle_core::DType::F32)?,
                &self.bias.flatten_all()?,
            );
        }
        let p = Im2Col {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        };
        let (oh, ow) = (p.out_size(h), p.out_size(w));
        let row_bytes = b * c * self.kernel * self.kernel * ow * std::mem::size_of::<f32>();
        if xs.track_op() || row_bytes * oh <= band_bytes {
            let cols = p.apply(xs)?;
            return self.times(&cols)?.reshape((b, (), oh, ow));
        }
        // Inference on a large plane: the patches of a band of output rows at a time (a VAE
        // decoder's 3x3 convolution at 512x512x128 needs 1.2 GB of patches at once).
        let band = (band_bytes / row_bytes).max(1);
        let xs = xs.contiguous()?;
        let parts = (0..oh)
            .step_by(band)
            .map(|r0| {
                let cols = p.apply_rows(&xs, r0..(r0 + band).min(oh))?;
                self.times(&cols)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 2)?.reshape((b, (), oh, ow))
    }
}

pub use super::kernels::activations::{geglu, silu, softmax_last_dim};
pub use super::kernels::group_norm::{group_norm, GroupNorm};

/// Scores per block of query rows above which inference attention works block by block.
const SCORE_BLOCK: usize = 1 << 20;

/// Scaled dot-product attention on `(batch*heads, seq, dim_head)` tensors, computed in slices
/// of at most `slice` rows of the batch to bound the `seq x seq` score matrix in memory.
///
/// Without gradients to track, long sequences go one batch row at a time, and for narrow heads
/// one block of query rows at a time (about a million scores, 4 MB, per block): SD 1.5 at 512 px
/// attends over 4096 tokens, and its whole score matrix (1.6 GB per layer) cost more in page
/// faults and cache misses than in arithmetic.
///
/// With `bf16` (a network with [`bf16_products`]), the two products round their operands to
/// bf16 and sum in f32, like the layers around them; the softmax stays f32. Without gradients
/// to track, that is one fused pass ([`super::kernels::bf16::attention`]: no score matrix, so
/// no slices either).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    slice: Option<usize>,
    bf16: bool,
) -> Result<Tensor> {
    let tracked = q.track_op() || k.track_op() || v.track_op();
    if bf16 && !tracked && q.device().is_cpu() {
        let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
        return super::kernels::bf16::attention(q, k, v, scale);
    }
    attention_in_blocks(q, k, v, (slice, SCORE_BLOCK), bf16)
}

/// Whether a network built from `vb` runs its products on bf16 dot products (bf16 weights on a
/// CPU with AVX512-BF16): its attention's own products then run there too ([`attention`]).
pub fn bf16_products(vb: &VarBuilder) -> bool {
    use super::kernels::bf16::Bf16Kernel;
    vb.device().is_cpu()
        && vb.dtype() == candle_core::DType::BF16
        && Bf16Kernel::detect() == Bf16Kernel::Avx512Bf16
}

fn attention_in_blocks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (slice, block): (Option<usize>, usize),
    bf16: bool,
) -> Result<Tensor> {
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    let product = |a: &Tensor, b: &Tensor| {
        if bf16 {
            super::kernels::bf16::matmul_rounded(a, b)
        } else {
            a.matmul(b)
        }
    };
    // `kt` is `k` transposed (a view, or a contiguous copy reused across blocks).
    let attend_t = |q: &Tensor, kt: &Tensor, v: &Tensor| -> Result<Tensor> {
        // Scaling the queries (seq x dim) instead of the scores (seq x seq) is the same product
        // with a pass over a far smaller tensor.
        let scores = product(&(q * scale)?, kt)?;
        product(&softmax_last_dim(&scores)?, v)
    };
    let attend = |q: &Tensor, k: &Tensor, v: &Tensor| attend_t(q, &k.t()?, v);
    let n = q.dim(0)?;
    let (sq, sk) = (q.dim(1)?, k.dim(1)?);
    let tracked = q.track_op() || k.track_op() || v.track_op();
    // Inference on the CPU runs the batch rows (heads) in one share per thread, each
    // single-threaded: a head's products (1024 x 40 x 1024 at 256 px, blocks of 256 x 40 x 4096
    // at 512 px) split poorly across threads. SD 1.5's guided step on two threads: 11.2 ->
    // 9.5-9.7 s at 512 px, 2.34-2.42 -> 2.21-2.37 s at 256 px.
    let in_cpu_shares = !tracked && q.device().is_cpu();
    let slice = match slice {
        Some(s) if s > 0 && s < n => s,
        _ if !tracked && sq * sk > block => 1,
        _ if in_cpu_shares => n,
        _ => return attend(q, k, v),
    };
    // Each block reads all of K and V again: worth it for the UNet's heads (40-160 channels),
    // not for the VAE's single 512-channel head (measured slower in blocks), which is sliced by
    // batch row only.
    let dh = q.dim(D::Minus1)?;
    let rows = if tracked || dh > 160 {
        sq
    } else {
        (block / sk.max(1)).clamp(1, sq.max(1))
    };
    let slices = |range: std::ops::Range<usize>| -> Result<Tensor> {
        let mut outs = Vec::with_capacity(range.len().div_ceil(slice));
        for start in range.clone().step_by(slice) {
            let len = slice.min(range.end - start);
            let (q, k, v) = (
                q.narrow(0, start, len)?,
                k.narrow(0, start, len)?,
                v.narrow(0, start, len)?,
            );
            if rows >= sq {
                outs.push(attend(&q, &k, &v)?);
                continue;
            }
            // Transposed once: every block's product would otherwise gather it from a strided
            // view.
            let kt = k.t()?.contiguous()?;
            let parts = (0..sq)
                .step_by(rows)
                .map(|r| attend_t(&q.narrow(1, r, rows.min(sq - r))?, &kt, &v))
                .collect::<Result<Vec<_>>>()?;
            outs.push(Tensor::cat(&parts, 1)?);
        }
        Tensor::cat(&outs, 0)
    };
    if in_cpu_shares {
        return in_shares(n, slices);
    }
    slices(0..n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// The CPU kernels with their own backward passes (softmax, SiLU, GEGLU) against candle's
    /// composed forms: same values, same gradients.
    #[test]
    fn custom_kernels_match_candle_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (3, 5, 18), &dev)?))?;
        let probe = Tensor::randn(0f32, 1.0, (3, 5, 18), &dev)?;
        let half = Tensor::randn(0f32, 1.0, (3, 5, 9), &dev)?;
        type Op = fn(&Tensor) -> Result<Tensor>;
        let cases: [(&str, Op, Op, &Tensor); 3] = [
            (
                "softmax",
                softmax_last_dim,
                |t| candle_nn::ops::softmax(t, D::Minus1),
                &probe,
            ),
            ("silu", silu, |t| t.silu(), &probe),
            (
                "geglu",
                geglu,
                |t| t.narrow(D::Minus1, 0, 9)? * t.narrow(D::Minus1, 9, 9)?.gelu_erf()?,
                &half,
            ),
        ];
        for (name, ours, theirs, probe) in cases {
            let (a, b) = (ours(x.as_tensor())?, theirs(x.as_tensor())?);
            let diff: f32 = (&a - &b)?.abs()?.max_all()?.to_scalar()?;
            assert!(diff < 1e-5, "{name} forward differs by {diff}");
            let ga = (a * probe)?.sum_all()?.backward()?;
            let gb = (b * probe)?.sum_all()?.backward()?;
            let (ga, gb) = (
                ga.get(x.as_tensor()).unwrap(),
                gb.get(x.as_tensor()).unwrap(),
            );
            let diff: f32 = (ga - gb)?.abs()?.max_all()?.to_scalar()?;
            let scale: f32 = gb.abs()?.max_all()?.to_scalar()?;
            assert!(
                diff <= 1e-5 * scale.max(1.0),
                "{name} gradient differs by {diff}"
            );
        }
        Ok(())
    }

    /// Attention in blocks of query rows (and batch rows) equals the whole computation.
    #[test]
    fn blocked_attention_matches_the_whole() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (3, 70, 8), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (3, 50, 8), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (3, 50, 8), &dev)?;
        let whole = attention_in_blocks(&q, &k, &v, (None, usize::MAX), false)?;
        // 70 x 50 scores > 1000: blocks of 20 query rows (the last one 10), one batch row each.
        // On two threads: the batch rows in one share per thread.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool");
        for slice in [None, Some(2)] {
            let blocked = pool.install(|| attention_in_blocks(&q, &k, &v, (slice, 1000), false))?;
            assert_eq!(blocked.dims(), whole.dims());
            let diff: f32 = (&blocked - &whole)?.abs()?.max_all()?.to_scalar()?;
            assert!(diff < 1e-6, "{slice:?}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn layer_norm_and_softmax_pass_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![0.5f32, -1.0, 2.0, 0.25, 1.5, -0.5], (2, 3), &dev)?;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let ln = LayerNorm::new(3, 1e-5, vb)?;
        let y = softmax_last_dim(&ln.forward(x.as_tensor())?)?;
        // A weighted sum so that the gradient is not identically zero.
        let w = Tensor::new(&[[1f32, 2., 3.], [3., 1., 2.]], &dev)?;
        let grads = (y * w)?.sum_all()?.backward()?;
        let g = grads
            .get(x.as_tensor())
            .expect("gradient reaches the input");
        let total: f32 = g.abs()?.sum_all()?.to_scalar()?;
        assert!(
            total > 1e-4,
            "gradient through layer norm + softmax vanished: {total}"
        );
        Ok(())
    }

    #[test]
    fn fused_and_composed_forms_agree() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[0.5f32, -1.0, 2.0, 0.25], [1.5, -0.5, 3.0, 0.0]], &dev)?;
        let a = candle_nn::ops::softmax_last_dim(&x)?;
        let b = candle_nn::ops::softmax(&x, D::Minus1)?;
        let diff: f32 = (a - b)?.abs()?.max_all()?.to_scalar()?;
        assert!(diff < 1e-6);
        Ok(())
    }

    #[test]
    fn im2col_conv_equals_candle_conv() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let conv = conv2d(3, 5, 3, 1, 1, vb)?;
        let x = Tensor::randn(0f32, 1., (2, 3, 7, 6), &dev)?;
        let fast = conv.forward(&x)?;
        let reference = conv.inner.forward(&x)?;
        assert_eq!(fast.dims(), &[2, 5, 7, 6]);
        let diff: f32 = (&fast - &reference)?.abs()?.max_all()?.to_scalar()?;
        assert!(diff < 1e-5, "{diff}");
        // In bands of 1, 2 and 3 output rows (a row of patches is 2*27*6 floats).
        for rows in 1..=3 {
            let banded = conv.forward_in_bands(&x, rows * 2 * 27 * 6 * 4)?;
            let diff: f32 = (&banded - &fast)?.abs()?.max_all()?.to_scalar()?;
            assert!(diff < 1e-6, "bands of {rows}: {diff}");
        }
        Ok(())
    }

    /// Loaded (transposed, folded) and trained (variable) layers both compute candle's
    /// `Linear`, with and without a bias, on 2-, 3- and 4-dimensional inputs; the trained one
    /// passes gradients to its weights.
    #[test]
    fn linear_matches_candle_linear() -> Result<()> {
        let dev = Device::Cpu;
        for bias in [true, false] {
            let w = Tensor::randn(0f32, 1., (5, 4), &dev)?;
            let b = Tensor::randn(0f32, 1., 5, &dev)?;
            let mut map = std::collections::HashMap::from([("weight".to_string(), w.clone())]);
            if bias {
                map.insert("bias".into(), b.clone());
            }
            let vb = VarBuilder::from_tensors(map, DType::F32, &dev);
            let loaded = linear_few_rows(4, 5, bias, vb.clone())?;
            assert!(loaded.transposed);
            let plain = linear(4, 5, bias, vb)?;
            assert!(!plain.transposed);
            let reference = candle_nn::Linear::new(w.clone(), bias.then(|| b.clone()));
            let varmap = candle_nn::VarMap::new();
            let trained = linear(
                4,
                5,
                bias,
                VarBuilder::from_varmap(&varmap, DType::F32, &dev),
            )?;
            assert!(!trained.transposed);
            for shape in [vec![3, 4], vec![2, 3, 4], vec![2, 1, 3, 4]] {
                let x = Tensor::randn(0f32, 1., shape.clone(), &dev)?;
                let want = reference.forward(&x)?;
                let got = loaded.forward(&x)?;
                assert_eq!(got.dims(), want.dims());
                let diff: f32 = (got - &want)?.abs()?.max_all()?.to_scalar()?;
                assert!(diff < 1e-5, "bias {bias}, {shape:?}: {diff}");
                let diff: f32 = (plain.forward(&x)? - &want)?
                    .abs()?
                    .max_all()?
                    .to_scalar()?;
                assert!(diff < 1e-5, "plain, bias {bias}, {shape:?}: {diff}");
                let t = trained.forward(&x)?;
                let r = candle_nn::Linear::new(trained.weight.clone(), trained.bias.clone());
                let diff: f32 = (&t - r.forward(&x)?)?.abs()?.max_all()?.to_scalar()?;
                assert!(diff < 1e-5, "trained, bias {bias}, {shape:?}: {diff}");
                let grads = t.sum_all()?.backward()?;
                assert!(grads.get(&trained.weight).is_some());
            }
        }
        Ok(())
    }

    #[test]
    fn sliced_attention_equals_whole() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (5, 7, 4), &dev)?;
        let k = Tensor::randn(0f32, 1., (5, 6, 4), &dev)?;
        let v = Tensor::randn(0f32, 1., (5, 6, 3), &dev)?;
        let whole = attention(&q, &k, &v, None, false)?;
        let sliced = attention(&q, &k, &v, Some(2), false)?;
        assert_eq!(sliced.dims(), &[5, 7, 3]);
        let diff: f32 = (whole - sliced)?.abs()?.max_all()?.to_scalar()?;
        assert!(diff < 1e-6);
        Ok(())
    }

    #[test]
    fn fused_geglu_matches_the_composed_one() -> Result<()> {
        let h = Tensor::randn(0f32, 2.0, (2, 5, 12), &Device::Cpu)?;
        let hidden = h.narrow(D::Minus1, 0, 6)?;
        let gate = h.narrow(D::Minus1, 6, 6)?;
        let composed = (hidden * gate.gelu_erf()?)?;
        let fused = geglu(&h)?;
        assert_eq!(fused.dims(), &[2, 5, 6]);
        let diff = (composed - fused)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "differs by {diff}");
        Ok(())
    }
}
