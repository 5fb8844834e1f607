//! Stride-1 "same" convolutions (odd kernel `k`, padding `(k - 1) / 2`) without a patch
//! matrix, forward and backward.
//!
//! With the input zero-padded to rows of `w + k - 1`, the taps of kernel row `ky` are the padded
//! plane shifted by `ky` rows, so one kernel row is one matrix product of the weights
//! `(out, k*in)` with `k` copies of the plane shifted by `0..k` columns, accumulated over the
//! `k` kernel rows into an output that keeps `k - 1` garbage columns per row (dropped at the
//! end). That builds `k` copies of the input where im2col builds `k^2`, and works on bands of
//! rows small enough to stay in cache, one band per thread.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::Out;

use super::band::padded_band;

/// Bytes of shifted copies one band may hold (per thread).
const BAND_BYTES: usize = 4 << 20;

/// `conv2d(x, weight, stride 1, padding (k-1)/2) + bias` for contiguous f32 CPU tensors
/// `x (b, c, h, w)`, `weight (o, c, k, k)`, `bias (o)`, with gradients for all three when
/// any of them is tracked.
pub fn conv_same(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (x, w, b) = (x.contiguous()?, weight.contiguous()?, bias.contiguous()?);
    if x.track_op() || w.track_op() || b.track_op() {
        x.apply_op3(&w, &b, ShiftedConv)
    } else {
        x.apply_op3_no_bwd(&w, &b, &ShiftedConv)
    }
}

/// The bands of output rows the work is split into: `(image, first row, end row)`, each
/// small enough for the cache (its `k` shifted copies within [`BAND_BYTES`]), at least two per
/// thread over the batch.
fn bands(k: usize, c: usize, (b, h, w): (usize, usize, usize)) -> Vec<(usize, usize, usize)> {
    let threads = candle_core::utils::get_num_threads().max(1);
    let per_row = k * c * (w + k - 1) * std::mem::size_of::<f32>();
    let per_image = (2 * threads).div_ceil(b.max(1));
    let rows = (BAND_BYTES / per_row.max(1))
        .min(h.div_ceil(per_image))
        .max(1);
    (0..b)
        .flat_map(|bi| {
            (0..h)
                .step_by(rows)
                .map(move |r0| (bi, r0, (r0 + rows).min(h)))
        })
        .collect()
}

/// `f` over the bands, in parallel; on a thread running one share of a split batch
/// ([`candle_core::utils::serial`]), in turn, so the share stays on its thread.
fn map_bands<T: Send>(
    bands: &[(usize, usize, usize)],
    f: impl Fn((usize, usize, usize)) -> T + Sync,
) -> Vec<T> {
    if candle_core::utils::is_serial() {
        bands.iter().map(|&band| f(band)).collect()
    } else {
        bands.par_iter().map(|&band| f(band)).collect()
    }
}

/// Input rows `r0 - p .. r1 + p` of image `bi` of `x (b, c, h, w)`, zero-padded to rows of
/// `wp = w + k - 1`, as `k` copies shifted left by `0..k` columns:
/// `shifted[kx * c + ci][j] = padded[ci][j + kx]`, each copy `plane = (r1 - r0 + k - 1) * wp`
/// long. Returns `(shifted, plane)`.
fn shifted_band(
    x: &[f32],
    (c, h, w): (usize, usize, usize),
    k: usize,
    band: (usize, usize, usize),
) -> (Vec<f32>, usize) {
    // The padded plane, `k` zeros after it for the last copy's shift.
    let (padded, plane) = padded_band(x, (c, h, w), k, band, k);
    // Every element is written: no zero fill first.
    let mut shifted: Vec<f32> = Vec::with_capacity(k * c * plane);
    for (j, part) in shifted.spare_capacity_mut()[..k * c * plane]
        .chunks_exact_mut(plane.max(1))
        .enumerate()
    {
        let (kx, ci) = (j / c, j % c);
        let from = &padded[ci * (plane + k) + kx..][..plane];
        // SAFETY: `part` and `from` are `plane` long and do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(from.as_ptr(), part.as_mut_ptr().cast(), plane) };
    }
    // SAFETY: the loop wrote all `k * c * plane` elements.
    unsafe { shifted.set_len(k * c * plane) };
    (shifted, plane)
}

struct ShiftedConv;

/// A matrix as its first element and its (row, column) strides, in elements.
type Mat<P> = (P, isize, isize);

/// `dst (m x n) = [dst +] lhs (m x k) * rhs (k x n)` on this thread.
///
/// # Safety
/// Every element the shapes and strides reach must lie inside its matrix's buffer, and `dst`
/// must not overlap the others.
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: Mat<*mut f32>,
    accumulate: bool,
    lhs: Mat<*const f32>,
    rhs: Mat<*const f32>,
) {
    // SAFETY: the caller's contract above is gemm's.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2,
            dst.1,
            accumulate,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
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
        let f = |s, l, what| super::contiguous_f32(s, l, what);
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
        if super::direct_conv::applies(k, c, o, w) {
            let packed = super::direct_conv::pack_weights(wt, o, c);
            let mut out: Vec<f32> = Vec::with_capacity(b * o * h * w);
            let dst = Out(out.spare_capacity_mut().as_mut_ptr().cast::<f32>());
            map_bands(&bands(k, c, (b, h, w)), |band| {
                // SAFETY: `applies` held; `out` has room for `b * o * h * w`; each band writes
                // its own rows.
                unsafe {
                    super::direct_conv::conv_band(x, (c, h, w), &packed, bias, band, dst.at(0))
                }
            });
            // SAFETY: the bands cover every row of every channel of every image.
            unsafe { out.set_len(b * o * h * w) };
            return Ok((CpuStorage::F32(out), Shape::from((b, o, h, w))));
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
        let bands = bands(k, c, (b, h, w));
        let mut out: Vec<f32> = Vec::with_capacity(b * o * h * w);
        let dst = Out(out.spare_capacity_mut().as_mut_ptr().cast::<f32>());
        map_bands(&bands, |(bi, r0, r1)| {
            let (shifted, plane) = shifted_band(x, (c, h, w), k, (bi, r0, r1));
            let nb = r1 - r0;
            let n = nb * wp;
            let mut full: Vec<f32> = Vec::with_capacity(o * n);
            for ky in 0..k {
                // SAFETY: every matrix lies inside its buffer: `lhs` row `co` of kernel row
                // `ky` spans `kc`; `shifted` row `kx*c+ci` reads `ky*wp .. ky*wp + n <= plane`;
                // `full` is `o x n`.
                unsafe {
                    let (acc, full_ptr) = (ky > 0, full.spare_capacity_mut().as_mut_ptr().cast());
                    let (weights, copies) =
                        (lhs.as_ptr().add(ky * o * kc), shifted.as_ptr().add(ky * wp));
                    if o % 64 == 0 {
                        // Output channels down the rows: whole 64-row tiles of gemm's kernel.
                        product(
                            (o, n, kc),
                            (full_ptr, n as isize, 1),
                            acc,
                            (weights, kc as isize, 1),
                            (copies, plane as isize, 1),
                        )
                    } else {
                        // The same product transposed, pixels down the rows: 32 channels
                        // would fill half a tile (tiny VAE encode and decode 5-10% faster).
                        product(
                            (n, o, kc),
                            (full_ptr, 1, n as isize),
                            acc,
                            (copies, 1, plane as isize),
                            (weights, 1, kc as isize),
                        )
                    }
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

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, c, _, _) = x.dims4()?;
        let k = weight.dim(2)?;
        let dy = dy.detach().contiguous()?;
        // The input's gradient is the same-size convolution of `dy` with the kernels
        // transposed (in <-> out) and turned half a turn; not computed for an input no
        // gradient flows to (a UNet's first convolution reads the latents).
        let dx = if x.track_op() {
            let rev =
                Tensor::from_vec((0..k as u32).rev().collect::<Vec<_>>(), k, weight.device())?;
            let turned = weight
                .detach()
                .index_select(&rev, 2)?
                .index_select(&rev, 3)?
                .transpose(0, 1)?;
            let zero = Tensor::zeros(c, dy.dtype(), dy.device())?;
            Some(conv_same(&dy, &turned, &zero)?)
        } else {
            None
        };
        // Frozen kernels (a LoRA fine-tune) take no gradient either.
        let dw = match weight.track_op() {
            true => Some(x.detach().apply_op2_no_bwd(&dy, &WeightGrad { k })?),
            false => None,
        };
        let db = match bias.track_op() {
            true => Some(dy.sum((0, 2, 3))?),
            false => None,
        };
        Ok((dx, dw, db))
    }
}

/// The kernels' gradient of a same-size convolution with `k x k` kernels:
/// `(x (b, c, h, w), dy (b, o, h, w))` -> `(o, c, k, k)`. Per band and kernel row `ky`:
/// `dy (o, n)` (zero in the garbage columns) times the shifted copies read from row `ky`,
/// transposed `(n, k*c)`; the bands' sums are added.
struct WeightGrad {
    k: usize,
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "conv-same-weight-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = super::contiguous_f32(xs, xl, "conv input")?;
        let dy = super::contiguous_f32(ds, dl, "conv output gradient")?;
        let (b, c, h, w) = xl.shape().dims4()?;
        let (b2, o, h2, w2) = dl.shape().dims4()?;
        if (b2, h2, w2) != (b, h, w) {
            candle_core::bail!(
                "conv-same gradient: input {:?}, dy {:?}",
                xl.dims(),
                dl.dims()
            )
        }
        let k = self.k;
        let wp = w + k - 1;
        let kc = k * c;
        let sums: Vec<Vec<f32>> = map_bands(&bands(k, c, (b, h, w)), |(bi, r0, r1)| {
            let (shifted, plane) = shifted_band(x, (c, h, w), k, (bi, r0, r1));
            let n = (r1 - r0) * wp;
            let mut g = vec![0f32; o * n];
            for co in 0..o {
                for (j, row) in g[co * n..][..n].chunks_exact_mut(wp).enumerate() {
                    row[..w].copy_from_slice(&dy[((bi * o + co) * h + r0 + j) * w..][..w]);
                }
            }
            let mut acc: Vec<f32> = Vec::with_capacity(k * o * kc);
            for ky in 0..k {
                // SAFETY: `acc` holds `k` blocks of `o x kc`, written whole (`read_dst`
                // false); `g` is `o x n`; the shifted copies are read at
                // `kk * plane + ky * wp + j` with `j < n`, inside `plane`.
                unsafe {
                    product(
                        (o, kc, n),
                        (
                            acc.spare_capacity_mut()
                                .as_mut_ptr()
                                .cast::<f32>()
                                .add(ky * o * kc),
                            kc as isize,
                            1,
                        ),
                        false,
                        (g.as_ptr(), n as isize, 1),
                        (shifted.as_ptr().add(ky * wp), 1, plane as isize),
                    )
                }
            }
            // SAFETY: the `k` products wrote all `k * o * kc` elements.
            unsafe { acc.set_len(k * o * kc) };
            acc
        });
        let mut dw = vec![0f32; o * c * k * k];
        for acc in &sums {
            for co in 0..o {
                for ci in 0..c {
                    for ky in 0..k {
                        for kx in 0..k {
                            dw[((co * c + ci) * k + ky) * k + kx] +=
                                acc[(ky * o + co) * kc + kx * c + ci];
                        }
                    }
                }
            }
        }
        Ok((CpuStorage::F32(dw), Shape::from((o, c, k, k))))
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
            (1, 8, 64, 9, 10, 3),
            // Direct (`direct_conv`, where the CPU has AVX-512): 1, 2, 3 and 3 + 2 vectors a row.
            (2, 3, 32, 5, 16, 3),
            (1, 16, 16, 4, 32, 3),
            (1, 32, 8, 9, 48, 3),
            (1, 5, 8, 3, 80, 3),
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

    /// Only what is tracked gets a gradient (an input of latents, frozen kernels), and it is
    /// still right.
    #[test]
    fn untracked_parts_take_no_gradient() {
        let dev = Device::Cpu;
        let (b, c, o, h, w) = (2, 3, 4, 6, 5);
        let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap();
        let wt = Tensor::randn(0f32, 1.0, (o, c, 3, 3), &dev).unwrap();
        let bias = candle_core::Var::randn(0f32, 1.0, o, &dev).unwrap();
        let mix = Tensor::randn(0f32, 1.0, (b, o, h, w), &dev).unwrap();
        let y = conv_same(&x, &wt, bias.as_tensor()).unwrap();
        let grads = (y * &mix).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none() && grads.get(&wt).is_none());
        let db = grads.get(bias.as_tensor()).unwrap();
        let want = mix.sum((0, 2, 3)).unwrap();
        let diff = (db - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
    }

    /// The gradients of input, kernels and bias equal candle's convolution's.
    #[test]
    fn gradients_equal_candles() {
        let dev = Device::Cpu;
        for (b, c, o, h, w, k) in [
            (2, 3, 4, 6, 5, 3),
            (1, 2, 3, 4, 4, 1),
            (3, 8, 5, 17, 9, 3),
            (2, 8, 16, 5, 16, 3),
        ] {
            let vars = [
                candle_core::Var::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap(),
                candle_core::Var::randn(0f32, 1.0, (o, c, k, k), &dev).unwrap(),
                candle_core::Var::randn(0f32, 1.0, o, &dev).unwrap(),
            ];
            // A loss that weighs every output differently.
            let mix = Tensor::randn(0f32, 1.0, (b, o, h, w), &dev).unwrap();
            let grads = |y: Tensor| (y * &mix).unwrap().sum_all().unwrap().backward().unwrap();
            let (x, wt, bias) = (
                vars[0].as_tensor(),
                vars[1].as_tensor(),
                vars[2].as_tensor(),
            );
            let want = grads(
                x.conv2d(wt, (k - 1) / 2, 1, 1, 1)
                    .unwrap()
                    .broadcast_add(&bias.reshape((1, o, 1, 1)).unwrap())
                    .unwrap(),
            );
            let got = grads(conv_same(x, wt, bias).unwrap());
            for v in &vars {
                let (g, e) = (got.get(v).unwrap(), want.get(v).unwrap());
                let diff = (g - e).unwrap().abs().unwrap().max_all().unwrap();
                let diff = diff.to_scalar::<f32>().unwrap();
                assert!(
                    diff < 1e-3,
                    "{diff} for {:?} at {:?}",
                    v.dims(),
                    (b, c, o, h, w, k)
                );
            }
        }
    }
}
