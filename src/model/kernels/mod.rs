//! The CPU kernels the networks run on: vectorised maths ([`fastmath`]), softmax, SiLU and
//! GEGLU with one-pass gradients ([`activations`]), fused group normalisation ([`group_norm`]),
//! and three ways to convolve ([`im2col`], [`shifted_conv`], [`direct_conv`], the last two
//! sharing [`band`]'s padded rows), and products with bf16 weights ([`bf16`]). They know tensors and nothing of the networks: the layers in
//! [`super::nn`] and the networks choose among them. This module holds what they share: the
//! f32 data of a CPU tensor and the split of a batch over threads.

use candle_core::{Result, Tensor};

pub mod activations;
pub mod band;
pub mod bf16;
pub mod direct_conv;
pub mod fastmath;
pub mod group_norm;
pub mod im2col;
pub mod shifted_conv;

/// An output buffer that parallel tasks write through, each to elements no other task writes
/// (the convolutions' bands, the bf16 products' blocks).
#[derive(Clone, Copy)]
pub struct Out(pub *mut f32);
// SAFETY: the users write disjoint elements from each task (see each one's SAFETY notes).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The element `i` past the start.
    pub fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// Whether the custom CPU kernels (f32, with their own backward passes) apply to `xs`.
pub fn cpu_f32(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32
}

/// The f32 data of a contiguous CPU tensor, for the custom kernels (`what` names the op in
/// the error).
pub fn contiguous_f32<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    what: &str,
) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{what} needs a contiguous f32 tensor"),
    }
}

/// `t` `(r, c)` transposed into a new contiguous `(c, r)` tensor: for an f32 CPU matrix, in
/// 32 x 32 tiles over the threads (candle's strided copy goes element by element across
/// rows: half of loading SD 1.5's mapped weights was its transposes of the text encoder's);
/// otherwise `t.t().contiguous()`.
pub fn transposed(t: &Tensor) -> Result<Tensor> {
    let (r, c) = t.dims2()?;
    swap_last_two(&t.reshape((1, r, c))?)?.reshape((c, r))
}

/// `t` `(b, r, c)` as a new contiguous `(b, c, r)`: each matrix transposed in tiles as
/// [`transposed`] does (for untracked f32 CPU tensors; otherwise candle's transpose and copy).
pub fn swap_last_two(t: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    const TILE: usize = 32;
    let (b, r, c) = t.dims3()?;
    if !cpu_f32(t) || t.track_op() {
        return t.transpose(1, 2)?.contiguous();
    }
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*storage else {
        candle_core::bail!("transposed: not a CPU tensor")
    };
    let src = contiguous_f32(s, layout, "transposed")?;
    let mut out = vec![0f32; b * r * c];
    // Each job writes TILE rows of one output matrix (TILE columns of the input's).
    out.par_chunks_mut((r * c).max(1))
        .enumerate()
        .flat_map(|(m, plane)| {
            plane
                .par_chunks_mut(TILE * r.max(1))
                .enumerate()
                .map(move |(jb, dst)| (m, jb, dst))
        })
        .for_each(|(m, jb, dst)| {
            let src = &src[m * r * c..][..r * c];
            let j0 = jb * TILE;
            let cols = dst.len() / r.max(1);
            for i in 0..r {
                let row = &src[i * c + j0..i * c + j0 + cols];
                for (dj, &v) in row.iter().enumerate() {
                    dst[dj * r + i] = v;
                }
            }
        });
    drop(storage);
    Tensor::from_vec(out, (b, c, r), t.device())
}

/// Nearest-neighbour upsampling of `xs` `(b, c, h, w)` to twice its size: each pixel copied to
/// a 2x2 block, plane by plane over the threads (for an untracked f32 CPU tensor; otherwise
/// candle's `upsample_nearest2d`, which computes each output's source index).
pub fn upsample_nearest_2x(xs: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    let (b, c, h, w) = xs.dims4()?;
    if !cpu_f32(xs) || xs.track_op() {
        return xs.upsample_nearest2d(2 * h, 2 * w);
    }
    let xs = xs.contiguous()?;
    let (storage, layout) = xs.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*storage else {
        candle_core::bail!("upsample: not a CPU tensor")
    };
    let src = contiguous_f32(s, layout, "upsample")?;
    let mut out = vec![0f32; b * c * 4 * h * w];
    out.par_chunks_mut((4 * h * w).max(1))
        .enumerate()
        .for_each(|(plane, dst)| {
            let src = &src[plane * h * w..][..h * w];
            for (y, pair) in dst.chunks_mut(4 * w).enumerate() {
                let (top, bottom) = pair.split_at_mut(2 * w);
                for (two, &v) in top.chunks_mut(2).zip(&src[y * w..][..w]) {
                    two.fill(v);
                }
                bottom.copy_from_slice(top);
            }
        });
    drop(storage);
    Tensor::from_vec(out, (b, c, 2 * h, 2 * w), xs.device())
}

/// `f` over shares of a batch of `n` (ranges of samples, in order), one share per compute
/// thread, each run single-threaded ([`candle_core::utils::serial`]) and all at once. Where a
/// model's kernels are too short to split well across threads, the samples of a batch are
/// independent work of the right size. With one thread, one sample, or inside another split,
/// the one share is `0..n`, run as it is.
pub fn shares<T: Send>(
    n: usize,
    f: impl Fn(std::ops::Range<usize>) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads().min(n);
    if threads < 2 || candle_core::utils::is_serial() {
        // Already one share of an outer split (a narrow UNet's batch): no second split.
        return Ok(vec![f(0..n)?]);
    }
    let per = n.div_ceil(threads);
    (0..n)
        .step_by(per)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|start| candle_core::utils::serial(|| f(start..(start + per).min(n))))
        .collect()
}

/// The widest block of a network whose batches run in [`shares`] (one per thread).
pub const SPLIT_MAX_CHANNELS: usize = 256;

/// Whether a network with these block widths is narrow enough for [`shares`] to beat splitting
/// each kernel across threads (measured: the built-in architecture yes, SD 1.5 no).
pub fn splits_batches(block_out_channels: &[usize]) -> bool {
    block_out_channels.iter().max() <= Some(&SPLIT_MAX_CHANNELS)
}

/// [`shares`] of a batch, the results stacked in order on the first dimension.
pub fn in_shares(
    n: usize,
    f: impl Fn(std::ops::Range<usize>) -> Result<Tensor> + Sync,
) -> Result<Tensor> {
    let mut outs = shares(n, f)?;
    match outs.len() {
        1 => Ok(outs.remove(0)),
        _ => Tensor::cat(&outs, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiled transpose equals candle's, on shapes that are not multiples of the tile.
    #[test]
    fn transposed_equals_candle() -> Result<()> {
        for (r, c) in [(1, 1), (33, 70), (64, 31), (100, 100)] {
            let t = Tensor::randn(0f32, 1., (r, c), &candle_core::Device::Cpu)?;
            let want: Vec<Vec<f32>> = t.t()?.contiguous()?.to_vec2()?;
            assert_eq!(transposed(&t)?.to_vec2::<f32>()?, want, "{r}x{c}");
            let batch = Tensor::randn(0f32, 1., (3, r, c), &candle_core::Device::Cpu)?;
            let want: Vec<Vec<Vec<f32>>> = batch.transpose(1, 2)?.contiguous()?.to_vec3()?;
            assert_eq!(swap_last_two(&batch)?.to_vec3::<f32>()?, want, "3x{r}x{c}");
        }
        Ok(())
    }

    /// The 2x nearest upsampling equals candle's.
    #[test]
    fn upsampling_equals_candle() -> Result<()> {
        for (h, w) in [(1, 1), (3, 5), (8, 8)] {
            let x = Tensor::randn(0f32, 1., (2, 3, h, w), &candle_core::Device::Cpu)?;
            let want = x
                .upsample_nearest2d(2 * h, 2 * w)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let got = upsample_nearest_2x(&x)?;
            assert_eq!(got.dims(), &[2, 3, 2 * h, 2 * w]);
            assert_eq!(got.flatten_all()?.to_vec1::<f32>()?, want, "{h}x{w}");
        }
        Ok(())
    }
}
