//! Patch extraction for convolutions (im2col) as one CPU kernel, with col2im as its backward.
//!
//! A convolution is then `weight (out, in*k*k) x cols (b, in*k*k, oh*ow)`, one matrix product.
//! Built from tensor ops (pad, nine shifted views, stack) the same extraction costs several
//! full-size copies forward and, backward, nine zero-filled padded tensors per convolution.

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

    /// The flat index in an `h x w` plane that output `(oy, ox)` reads through tap `(kh, kw)`,
    /// or `None` in the zero padding.
    fn source_index(
        &self,
        oy: usize,
        ox: usize,
        kh: usize,
        kw: usize,
        h: usize,
        w: usize,
    ) -> Option<usize> {
        let iy = (oy * self.stride + kh) as isize - self.padding as isize;
        let ix = (ox * self.stride + kw) as isize - self.padding as isize;
        (iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w)
            .then(|| iy as usize * w + ix as usize)
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("im2col needs a contiguous f32 tensor"),
    }
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let x = f32_slice(s, l)?;
        let (oh, ow) = (self.out_size(h), self.out_size(w));
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
                for kh in 0..self.kernel {
                    for kw in 0..self.kernel {
                        let row = &mut out[(kh * self.kernel + kw) * oh * ow..][..oh * ow];
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let v = self
                                    .source_index(oy, ox, kh, kw, h, w)
                                    .map_or(0.0, |i| src[i]);
                                row[oy * ow + ox] = std::mem::MaybeUninit::new(v);
                            }
                        }
                    }
                }
            });
        // SAFETY: the loops above initialised all `len` elements.
        unsafe { cols.set_len(len) };
        Ok((CpuStorage::F32(cols), Shape::from((b, c * kk, oh * ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        let g = grad_res
            .contiguous()?
            .apply_op1_no_bwd(&Col2Im { p: *self, h, w })?;
        Ok(Some(g.reshape(arg.shape())?))
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
                    let row = &src[(kh * p.kernel + kw) * oh * ow..][..oh * ow];
                    for oy in 0..oh {
                        for ox in 0..ow {
                            if let Some(i) = p.source_index(oy, ox, kh, kw, h, w) {
                                out[i] += row[oy * ow + ox];
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

    /// im2col + matmul equals candle's conv2d, forward and backward, for strides 1 and 2. (Both
    /// sides odd: candle 0.11's own conv2d backward derives the output padding from the height
    /// alone and fails when the width needs a different one.)
    #[test]
    fn matches_candle_conv2d_and_its_gradient() -> Result<()> {
        let dev = Device::Cpu;
        for (stride, padding) in [(1, 1), (2, 1), (1, 0)] {
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
