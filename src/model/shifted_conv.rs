//! Stride-1 "same" convolutions (odd kernel `k`, padding `(k - 1) / 2`) at inference without a
//! patch matrix.
//!
//! With the input zero-padded to rows of `w + k - 1`, the taps of kernel row `ky` are the padded
//! plane shifted by `ky` rows, so one kernel row is one matrix product of the weights
//! `(out, k*in)` with `k` copies of the plane shifted by `0..k` columns, accumulated over the
//! `k` kernel rows into an output that keeps `k - 1` garbage columns per row (dropped at the
//! end). That builds `k` copies of the input where im2col builds `k^2`, and works on bands of
//! rows small enough to stay in cache, one band per thread.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Bytes of shifted copies one band may hold (per thread).
const BAND_BYTES: usize = 4 << 20;

/// `conv2d(x, weight, stride 1, padding (k-1)/2) + bias` for contiguous f32 CPU tensors
/// `x (b, c, h, w)`, `weight (o, c, k, k)`, `bias (o)`; no gradient.
pub fn conv_same(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &ShiftedConv)
}

struct ShiftedConv;

/// A pointer the band tasks write through; each writes rows no other task writes.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tasks write disjoint elements (see `cpu_fwd`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

impl CustomOp3 for ShiftedConv {
    fn name(&self) -> &'static str {
        "conv-same"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let f = |s, l, what| super::nn::contiguous_f32(s, l, what);
        let (x, wt, bias) = (
            f(xs, xl, "conv input")?,
            f(ws, wl, "conv weight")?,
            f(bs, bl, "conv bias")?,
        );
        let (b, c, h, w) = xl.shape().dims4()?;
        let (o, c2, k, k2) = wl.shape().dims4()?;
        if c2 != c || k2 != k || k % 2 == 0 || bias.len() != o {
            candle_core::bail!(
                "conv-same: input {:?}, weight {:?}, bias {:?}",
                xl.dims(),
                wl.dims(),
                bl.dims()
            )
        }
        let p = (k - 1) / 2;
        let wp = w + 2 * p;
        // Weights by kernel row: `lhs[ky][co][kx * c + ci] = weight[co][ci][ky][kx]`.
        let kc = k * c;
        let mut lhs = vec![0f32; k * o * kc];
        for co in 0..o {
            for ci in 0..c {
                for ky in 0..k {
                    for kx in 0..k {
                        lhs[(ky * o + co) * kc + kx * c + ci] =
                            wt[((co * c + ci) * k + ky) * k + kx];
                    }
                }
            }
        }
        let threads = candle_core::utils::get_num_threads().max(1);
        let per_row = k * c * wp * std::mem::size_of::<f32>();
        // Bands small enough for the cache, and at least two per thread over the batch.
        let per_image = (2 * threads).div_ceil(b.max(1));
        let rows = (BAND_BYTES / per_row.max(1))
            .min(h.div_ceil(per_image))
            .max(1);
        let bands: Vec<(usize, usize)> = (0..b)
            .flat_map(|bi| (0..h).step_by(rows).map(move |r0| (bi, r0)))
            .collect();
        let mut out: Vec<f32> = Vec::with_capacity(b * o * h * w);
        let dst = Out(out.spare_capacity_mut().as_mut_ptr().cast::<f32>());
        bands.par_iter().for_each(|&(bi, r0)| {
            let r1 = (r0 + rows).min(h);
            let nb = r1 - r0;
            let bh = nb + 2 * p;
            // The band's padded plane (input rows r0-p .. r1+p), `k - 1` zeros after it.
            let plane = bh * wp;
            let mut padded = vec![0f32; c * (plane + k)];
            for ci in 0..c {
                let src = &x[(bi * c + ci) * h * w..][..h * w];
                for rr in 0..bh {
                    let Some(iy) = (r0 + rr).checked_sub(p).filter(|&iy| iy < h) else {
                        continue;
                    };
                    padded[ci * (plane + k) + rr * wp + p..][..w]
                        .copy_from_slice(&src[iy * w..][..w]);
                }
            }
            // `shifted[kx][ci] = padded[ci]` shifted left by `kx` (every element written: no
            // zero fill first, as for `full`, which the first product writes whole).
            let mut shifted: Vec<f32> = Vec::with_capacity(k * c * plane);
            for (j, part) in shifted.spare_capacity_mut()[..k * c * plane]
                .chunks_exact_mut(plane)
                .enumerate()
            {
                let (kx, ci) = (j / c, j % c);
                let from = &padded[ci * (plane + k) + kx..][..plane];
                // SAFETY: `part` and `from` are `plane` long and do not overlap.
                unsafe {
                    std::ptr::copy_nonoverlapping(from.as_ptr(), part.as_mut_ptr().cast(), plane)
                };
            }
            // SAFETY: the loop wrote all `k * c * plane` elements.
            unsafe { shifted.set_len(k * c * plane) };
            let n = nb * wp;
            let mut full: Vec<f32> = Vec::with_capacity(o * n);
            for ky in 0..k {
                // SAFETY: every matrix lies inside its buffer: `lhs` row `co` of kernel row
                // `ky` spans `kc`; `shifted` row `kx*c+ci` reads `ky*wp .. ky*wp + n <= plane`;
                // `full` is `o x n`.
                unsafe {
                    gemm::gemm(
                        o,
                        n,
                        kc,
                        full.spare_capacity_mut().as_mut_ptr().cast::<f32>(),
                        1,
                        n as isize,
                        ky > 0,
                        lhs.as_ptr().add(ky * o * kc),
                        1,
                        kc as isize,
                        shifted.as_ptr().add(ky * wp),
                        1,
                        plane as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                }
            }
            // SAFETY: the first product (`read_dst` false) wrote all `o * n` elements.
            unsafe { full.set_len(o * n) };
            for co in 0..o {
                for (j, row) in full[co * n..][..n].chunks_exact(wp).enumerate() {
                    let at = ((bi * o + co) * h + r0 + j) * w;
                    // SAFETY: output row `r0 + j` of channel `co` of image `bi` belongs to this
                    // band alone, and lies inside `out`'s capacity.
                    let o_row: &mut [std::mem::MaybeUninit<f32>] =
                        unsafe { std::slice::from_raw_parts_mut(dst.at(at).cast(), w) };
                    let bias = bias[co];
                    for (d, v) in o_row.iter_mut().zip(&row[..w]) {
                        d.write(v + bias);
                    }
                }
            }
        });
        // SAFETY: the bands cover every row of every channel of every image.
        unsafe { out.set_len(b * o * h * w) };
        Ok((CpuStorage::F32(out), Shape::from((b, o, h, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Equal to candle's convolution for kernels 1 and 3, odd sizes, batches, one row bands.
    #[test]
    fn equals_candles_convolution() {
        let dev = Device::Cpu;
        for (b, c, o, h, w, k) in [
            (1, 3, 5, 7, 9, 3),
            (2, 4, 3, 5, 4, 3),
            (1, 2, 2, 3, 3, 1),
            (3, 8, 16, 33, 17, 3),
        ] {
            let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 1.0, (o, c, k, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1.0, o, &dev).unwrap();
            let want = x
                .conv2d(&wt, (k - 1) / 2, 1, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, o, 1, 1)).unwrap())
                .unwrap();
            let got = conv_same(&x, &wt, &bias).unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(
                diff.to_scalar::<f32>().unwrap() < 1e-4,
                "{:?}",
                (b, c, o, h, w, k)
            );
        }
    }
}
