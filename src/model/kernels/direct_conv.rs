//! 3x3 same convolutions (stride 1, padding 1) computed directly in AVX-512 registers, for
//! narrow layers: no shifted copies, no packing, one pass over a padded band of the input.
//!
//! A block of 8 output channels by `XV` vectors of 16 output pixels of one row stays in
//! registers while every input channel's 9 taps stream through it: per tap, `XV` unaligned loads
//! of the padded input row and 8 weight broadcasts feed `8 * XV` fused multiply-adds. The
//! weights are packed once per call as `[block][in channel][tap][8]`, so a tap's 8 weights are
//! contiguous. Applies to planes whose width is a multiple of 16, output channel counts that are
//! multiples of 8, and layers of at most 64 channels (the built-in model's VAE at 128-32 px, its
//! UNet's 32x32 and 16x16 levels); [`super::shifted_conv`] runs the rest.
//!
//! Against the shifted copies and `gemm` (`bench --random tiny`, two threads, alternated with
//! the binary before, three rounds on a noisy host, 2026-11-28; each round's mean): VAE encode
//! 13-21% and decode 21-28% faster, the 4-step edit 10-14%, the guided UNet step -20% / +5% /
//! -3% (within the noise), the training step level (its convolutions run on shares of 4
//! images, where `gemm`'s products are long). A direct kernel for the kernels' gradient, also
//! tried, measured no faster in training and was not kept. Details: `docs/speed.md`.

/// Output channels per register block.
const OB: usize = 8;

/// Most input or output channels of a layer that runs here: the built-in model's layers (32
/// and 64) measured faster (the module notes); wider ones (SD 1.5's 128 and up) keep `gemm`'s
/// packed products, where back-to-back runs on this noisy host could not tell the two apart.
const MAX_CHANNELS: usize = 64;

/// Whether [`conv_band`] handles a `k x k` convolution of `c` to `o` channels over rows `w`
/// wide on this CPU.
pub fn applies(k: usize, c: usize, o: usize, w: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        k == 3
            && o.is_multiple_of(OB)
            && w.is_multiple_of(16)
            && w > 0
            && c <= MAX_CHANNELS
            && o <= MAX_CHANNELS
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (k, c, o, w);
        false
    }
}

/// `weight (o, c, 3, 3)` as `[o / 8][c][9][8]`.
pub fn pack_weights(wt: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut packed = vec![0f32; o * c * 9];
    for co in 0..o {
        let (blk, j) = (co / OB, co % OB);
        for ci in 0..c {
            for tap in 0..9 {
                packed[((blk * c + ci) * 9 + tap) * OB + j] = wt[(co * c + ci) * 9 + tap];
            }
        }
    }
    packed
}

/// [`avx512::block`] for one count of vectors.
type Block = unsafe fn(*const f32, usize, usize, usize, *const f32, *const f32, *mut f32, usize);

/// Output rows `r0..r1` of image `bi`: `out[bi][co][r][..] = bias[co] + sum of the taps`, for
/// `x (b, c, h, w)` and weights from [`pack_weights`]. `out` is the whole `(b, o, h, w)`
/// output, of which this writes only those rows.
///
/// # Safety
/// [`applies`] must hold for `(3, c, o, w)`; `out` must hold `b * o * h * w` elements, and no other
/// thread may write these rows meanwhile.
pub unsafe fn conv_band(
    x: &[f32],
    (c, h, w): (usize, usize, usize),
    packed: &[f32],
    bias: &[f32],
    (bi, r0, r1): (usize, usize, usize),
    out: *mut f32,
) {
    let o = bias.len();
    let wp = w + 2;
    // Input rows r0 - 1 ..= r1, zero-padded by one on every side.
    let (padded, plane) = super::band::padded_band(x, (c, h, w), 3, (bi, r0, r1), 0);
    let vectors = w / 16;
    for blk in 0..o / OB {
        let wts = packed[blk * c * 9 * OB..].as_ptr();
        let b = bias[blk * OB..].as_ptr();
        for r in r0..r1 {
            let row_in = padded[(r - r0) * wp..].as_ptr();
            let row_out = out.add(((bi * o + blk * OB) * h + r) * w);
            let mut v = 0;
            while v < vectors {
                // Three vectors a block (24 accumulators), the row's last one or two after.
                let n = (vectors - v).min(3);
                let block: Block = match n {
                    3 => avx512::block::<3>,
                    2 => avx512::block::<2>,
                    _ => avx512::block::<1>,
                };
                // SAFETY: `applies` held, so AVX-512F is present; reads stay inside `padded`
                // (3 rows from `r - r0`, columns up to `w + 2`) and `packed`; writes go to row
                // `r` of channels `blk*8 ..+8` of image `bi`, inside `out`.
                block(
                    row_in.add(16 * v),
                    wp,
                    plane,
                    c,
                    wts,
                    b,
                    row_out.add(16 * v),
                    h * w,
                );
                v += n;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// 8 output channels by `XV * 16` pixels of one output row. `input` is the padded band's
    /// first row at this block's first column (tap (0, 0)); rows are `wp` apart, channels
    /// `plane`; `wts` the block's packed weights; `out` channel rows `ch` apart.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block<const XV: usize>(
        input: *const f32,
        wp: usize,
        plane: usize,
        c: usize,
        wts: *const f32,
        bias: *const f32,
        out: *mut f32,
        ch: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); XV]; 8];
        for (j, a) in acc.iter_mut().enumerate() {
            *a = [_mm512_set1_ps(*bias.add(j)); XV];
        }
        for ci in 0..c {
            let base = input.add(ci * plane);
            let wc = wts.add(ci * 72);
            for ky in 0..3 {
                for kx in 0..3 {
                    let row = base.add(ky * wp + kx);
                    let xs: [__m512; XV] =
                        std::array::from_fn(|v| _mm512_loadu_ps(row.add(16 * v)));
                    let wk = wc.add((ky * 3 + kx) * 8);
                    for (j, a) in acc.iter_mut().enumerate() {
                        let wv = _mm512_set1_ps(*wk.add(j));
                        for v in 0..XV {
                            a[v] = _mm512_fmadd_ps(xs[v], wv, a[v]);
                        }
                    }
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            for (v, &val) in a.iter().enumerate() {
                _mm512_storeu_ps(out.add(j * ch + 16 * v), val);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block<const XV: usize>(
        _: *const f32,
        _: usize,
        _: usize,
        _: usize,
        _: *const f32,
        _: *const f32,
        _: *mut f32,
        _: usize,
    ) {
        unreachable!("direct convolutions apply on x86_64 only")
    }
}
