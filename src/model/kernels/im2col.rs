//! Patch extraction for convolutions (im2col) as one CPU kernel, with col2im as its backward.
//!
//! A convolution is then `weight (out, in*k*k) x cols (b, in*k*k, oh*ow)`, one matrix product.
//! Built from tensor ops (pad, nine shifted views, stack) the same extraction costs several
//! full-size copies forward and, backward, nine zero-filled padded tensors per convolution.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Square-kernel patch extraction parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Im2Col {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Im2Col {
    /// Output size along an input side of `n`.
    pub fn out_size(&self, n: usize) -> usize {
        (n + 2 * self.padding).saturating_sub(self.kernel) / self.stride + 1
    }

    /// `(b, c, h, w)` contiguous f32 -> `(b, c*k*k, oh*ow)`.
    pub fn apply(&self, xs: &Tensor) -> Result<Tensor> {
        xs.contiguous()?.apply_op1(*self)
    }

    /// The patches of output rows `rows` only, `(b, c*k*k, rows.len()*ow)`, without a gradient:
    /// a large inference convolution runs band by band, so its patch matrix never exists whole.
    pub fn apply_rows(&self, xs: &Tensor, rows: Range<usize>) -> Result<Tensor> {
        xs.contiguous()?
            .apply_op1_no_bwd(&RowBand { p: *self, rows })
    }

    /// The input row that output row `oy` reads through tap row `kh`, or `None` in the padding.
    fn source_row(&self, oy: usize, kh: usize, h: usize) -> Option<usize> {
        (oy * self.stride + kh)
            .checked_sub(self.padding)
            .filter(|&iy| iy < h)
    }

    /// The outputs `lo..hi` of a row that read inside the input through tap column `kw` (the
    /// rest read the padding); output `ox` reads input column `ox * stride + kw - padding`.
    fn inside_columns(&self, kw: usize, w: usize, ow: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = self.padding.saturating_sub(kw).div_ceil(s);
        // ox * s + kw - padding <= w - 1
        let hi = match (w + self.padding).checked_sub(kw + 1) {
            Some(last) => (last / s + 1).min(ow),
            None => 0,
        };
        (lo.min(hi), hi)
    }
}

impl Im2Col {
    /// The taps of one plane when the output has the input's size (stride 1, `padding` of
    /// `(kernel - 1) / 2`): each tap is the whole plane shifted by `dy * w + dx` elements, so
    /// one long copy, then the columns that wrapped around a row edge set to zero. Rows of a
    /// few dozen pixels made the general row-by-row loop the largest cost after the products.
    /// Only the output rows `rows` are written (`out` holds `kernel^2` taps of `rows.len() * w`).
    fn same_size_taps(
        &self,
        src: &[f32],
        out: &mut [std::mem::MaybeUninit<f32>],
        (h, w): (usize, usize),
        rows: Range<usize>,
    ) {
        let zero = std::mem::MaybeUninit::new(0f32);
        let hw = (h * w) as isize;
        // Output element `q` (counted over the whole plane) of a tap reads `q + shift`.
        let (q0, q1) = ((rows.start * w) as isize, (rows.end * w) as isize);
        let n = (q1 - q0) as usize;
        let p = self.padding as isize;
        for kh in 0..self.kernel {
            for kw in 0..self.kernel {
                let (dy, dx) = (kh as isize - p, kw as isize - p);
                let shift = dy * w as isize + dx;
                let tap = &mut out[(kh * self.kernel + kw) * n..][..n];
                let lo = (-shift).clamp(q0, q1);
                let hi = (hw - shift).clamp(lo, q1);
                let (from, lo, hi) = (
                    (lo + shift) as usize,
                    (lo - q0) as usize,
                    (hi - q0) as usize,
                );
                tap[..lo].fill(zero);
                tap[hi..].fill(zero);
                if lo < hi {
                    for (o, &v) in tap[lo..hi].iter_mut().zip(&src[from..]) {
                        *o = std::mem::MaybeUninit::new(v);
                    }
                }
                // Output column `ox` read input column `ox + dx`: outside the row when
                // `ox < -dx` or `ox >= w - dx`.
                let wrapped = if dx < 0 {
                    0..(-dx as usize).min(w)
                } else {
                    w.saturating_sub(dx as usize)..w
                };
                for row in tap.chunks_exact_mut(w.max(1)) {
                    row[wrapped.clone()].fill(zero);
                }
            }
        }
    }

    /// The patches of output rows `rows` of `x` `(b, c, h, w)`: `(b, c*k*k, rows.len()*ow)`.
    fn extract(
        &self,
        x: &[f32],
        (b, c, h, w): (usize, usize, usize, usize),
        rows: Range<usize>,
    ) -> Result<(CpuStorage, Shape)> {
        let ow = self.out_size(w);
        let oh = rows.len();
        let kk = self.kernel * self.kernel;
        let plane_out = kk * oh * ow;
        // Every element is written below (padding as 0), so the buffer is not zero-filled
        // first: at training sizes that memset was a visible share of a step.
        let len = b * c * plane_out;
        let mut cols: Vec<f32> = Vec::with_capacity(len);
        cols.spare_capacity_mut()[..len]
            .par_chunks_mut(plane_out.max(1))
            .enumerate()
            .for_each(|(bc, out)| {
                let src = &x[bc * h * w..(bc + 1) * h * w];
                let zero = std::mem::MaybeUninit::new(0f32);
                if self.stride == 1 && 2 * self.padding + 1 == self.kernel {
                    return self.same_size_taps(src, out, (h, w), rows.clone());
                }
                for kh in 0..self.kernel {
                    for kw in 0..self.kernel {
                        let (lo, hi) = self.inside_columns(kw, w, ow);
                        let tap = &mut out[(kh * self.kernel + kw) * oh * ow..][..oh * ow];
                        for (j, row) in tap.chunks_exact_mut(ow.max(1)).enumerate() {
                            let Some(iy) = self.source_row(rows.start + j, kh, h) else {
                                row.fill(zero);
                                continue;
                            };
                            row[..lo].fill(zero);
                            row[hi..].fill(zero);
                            if lo == hi {
                                continue;
                            }
                            // Input column of output `lo` (`lo * s + kw >= padding` there).
                            let first = iy * w + lo * self.stride + kw - self.padding;
                            let inside = &mut row[lo..hi];
                            if self.stride == 1 {
                                for (o, &v) in inside.iter_mut().zip(&src[first..]) {
                                    *o = std::mem::MaybeUninit::new(v);
                                }
                            } else {
                                for (j, o) in inside.iter_mut().enumerate() {
                                    *o = std::mem::MaybeUninit::new(src[first + j * self.stride]);
                                }
                            }
                        }
                    }
                }
            });
        // SAFETY: the loops above initialised all `len` elements.
        unsafe { cols.set_len(len) };
        Ok((CpuStorage::F32(cols), Shape::from((b, c * kk, oh * ow))))
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    super::contiguous_f32(s, l, "im2col")
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let oh = self.out_size(h);
        self.extract(f32_slice(s, l)?, (b, c, h, w), 0..oh)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        let g = grad_res
            .contiguous()?
            .apply_op1_no_bwd(&Col2Im { p: *self, h, w })?;
        Ok(Some(g.reshape(arg.shape())?))
    }
}

/// [`Im2Col`] restricted to a band of output rows (forward only).
struct RowBand {
    p: Im2Col,
    rows: Range<usize>,
}

impl CustomOp1 for RowBand {
    fn name(&self) -> &'static str {
        "im2col-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let oh = self.p.out_size(h);
        if self.rows.start > self.rows.end || self.rows.end > oh {
            candle_core::bail!("im2col rows {:?} outside 0..{oh}", self.rows)
        }
        self.p
            .extract(f32_slice(s, l)?, (b, c, h, w), self.rows.clone())
    }
}

/// Sums patch gradients back onto the input: the adjoint of [`Im2Col`].
struct Col2Im {
    p: Im2Col,
    h: usize,
    w: usize,
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, ckk, _) = l.shape().dims3()?;
        let cols = f32_slice(s, l)?;
        let p = self.p;
        let kk = p.kernel * p.kernel;
        let c = ckk / kk;
        let (h, w) = (self.h, self.w);
        let (oh, ow) = (p.out_size(h), p.out_size(w));
        let plane_in = kk * oh * ow;
        let mut dx = vec![0f32; b * c * h * w];
        dx.par_chunks_mut(h * w).enumerate().for_each(|(bc, out)| {
            let src = &cols[bc * plane_in..(bc + 1) * plane_in];
            for kh in 0..p.kernel {
                for kw in 0..p.kernel {
                    let (lo, hi) = p.inside_columns(kw, w, ow);
                    let tap = &src[(kh * p.kernel + kw) * oh * ow..][..oh * ow];
                    for (oy, row) in tap.chunks_exact(ow.max(1)).enumerate() {
                        let Some(iy) = p.source_row(oy, kh, h).filter(|_| lo < hi) else {
                            continue;
                        };
                        let first = iy * w + lo * p.stride + kw - p.padding;
                        if p.stride == 1 {
                            for (o, &v) in out[first..].iter_mut().zip(&row[lo..hi]) {
                                *o += v;
                            }
                        } else {
                            for (j, &v) in row[lo..hi].iter().enumerate() {
                                out[first + j * p.stride] += v;
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(dx), Shape::from((b, c, h, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The same-size fast path on planes narrower or shorter than the kernel, and 5x5.
    #[test]
    fn same_size_taps_match_candle_conv2d_on_small_planes() -> Result<()> {
        let dev = Device::Cpu;
        for (k, h, w) in [(3, 1, 1), (3, 2, 5), (3, 4, 1), (5, 3, 6), (5, 1, 2)] {
            let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev)?;
            let wt = Tensor::randn(0f32, 1.0, (4, 3, k, k), &dev)?;
            let p = Im2Col {
                kernel: k,
                stride: 1,
                padding: k / 2,
            };
            let ours = wt
                .reshape((4, 3 * k * k))?
                .broadcast_matmul(&p.apply(&x)?)?
                .reshape((2, 4, h, w))?;
            let theirs = x.conv2d(&wt, k / 2, 1, 1, 1)?;
            let diff: f32 = (&ours - &theirs)?.abs()?.max_all()?.to_scalar()?;
            assert!(diff < 1e-4, "kernel {k}, {h}x{w}: {diff}");
        }
        Ok(())
    }

    /// Bands of output rows, stacked, are the whole patch matrix (both extraction paths).
    #[test]
    fn row_bands_assemble_the_whole() -> Result<()> {
        let dev = Device::Cpu;
        for (kernel, stride, padding, h, w) in [(3, 1, 1, 7, 5), (3, 2, 1, 9, 6), (5, 1, 2, 6, 4)] {
            let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev)?;
            let p = Im2Col {
                kernel,
                stride,
                padding,
            };
            let whole = p.apply(&x)?;
            let oh = p.out_size(h);
            let bands = [0..2, 2..oh - 1, oh - 1..oh]
                .into_iter()
                .map(|r| p.apply_rows(&x, r))
                .collect::<Result<Vec<_>>>()?;
            let stacked = Tensor::cat(&bands, 2)?;
            let diff: f32 = (&whole - &stacked)?.abs()?.max_all()?.to_scalar()?;
            assert_eq!(diff, 0.0, "kernel {kernel} stride {stride}");
        }
        let x = Tensor::zeros((1, 1, 4, 4), candle_core::DType::F32, &dev)?;
        let p = Im2Col {
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        assert!(p.apply_rows(&x, 2..5).is_err());
        Ok(())
    }

    /// im2col + matmul equals candle's conv2d, forward and backward, for strides 1 and 2. (Both
    /// sides odd: candle 0.11's own conv2d backward derives the output padding from the height
    /// alone and fails when the width needs a different one.)
    #[test]
    fn matches_candle_conv2d_and_its_gradient() -> Result<()> {
        let dev = Device::Cpu;
        for (stride, padding) in [(1, 1), (2, 1), (1, 0), (2, 0), (1, 2), (2, 2)] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 7, 9), &dev)?)?;
            let w = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &dev)?;
            let p = Im2Col {
                kernel: 3,
                stride,
                padding,
            };
            let (oh, ow) = (p.out_size(7), p.out_size(9));
            let ours = w
                .reshape((4, 27))?
                .broadcast_matmul(&p.apply(x.as_tensor())?)?
                .reshape((2, 4, oh, ow))?;
            let theirs = x.as_tensor().conv2d(&w, padding, stride, 1, 1)?;
            let diff: f32 = (&ours - &theirs)?.abs()?.max_all()?.to_scalar()?;
            assert!(diff < 1e-4, "forward stride {stride}: {diff}");
            let probe = Tensor::randn(0f32, 1.0, ours.shape(), &dev)?;
            let ga = (ours * &probe)?.sum_all()?.backward()?;
            let gb = (theirs * &probe)?.sum_all()?.backward()?;
            let (a, b) = (
                ga.get(x.as_tensor()).expect("grad"),
                gb.get(x.as_tensor()).expect("grad"),
            );
            let diff: f32 = (a - b)?.abs()?.max_all()?.to_scalar()?;
            assert!(diff < 1e-4, "backward stride {stride}: {diff}");
        }
        Ok(())
    }
}
