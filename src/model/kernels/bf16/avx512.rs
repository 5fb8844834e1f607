//! The AVX512-BF16 micro-kernel and packing (`vdpbf16ps`, `vcvtneps2bf16`).

use super::{Tile, MR, MR_MAX, NR};
use std::arch::x86_64::*;

/// The lanes `0..len` of a 16-lane vector.
fn mask(len: usize) -> __mmask16 {
    if len >= 16 {
        0xffff
    } else {
        (1u16 << len) - 1
    }
}

/// [`super::Micro`] on `vdpbf16ps`: the `MR x NR` sums in 16 registers, each step one
/// broadcast pair of a row times two 16-pair vectors of the panel.
///
/// # Safety
/// As [`super::Micro`], on a CPU with AVX512F and AVX512-BF16.
pub unsafe fn micro(t: &Tile) {
    inner(t)
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn inner(t: &Tile) {
    let Tile {
        kp,
        a,
        b,
        c,
        ldc,
        rows,
        cols,
        accumulate,
    } = *t;
    let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    if accumulate {
        for (r, lanes) in acc.iter_mut().enumerate().take(rows) {
            lanes[0] = _mm512_maskz_loadu_ps(m0, c.add(r * ldc));
            lanes[1] = _mm512_maskz_loadu_ps(m1, c.add(r * ldc + 16));
        }
    }
    for q in 0..kp {
        let p = b.add(q * NR) as *const __m512i;
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(p));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(p.add(1)));
        for r in 0..MR {
            let x = a[r].add(q).read_unaligned() as i32;
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(x));
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
        }
    }
    for (r, lanes) in acc.iter().enumerate().take(rows) {
        _mm512_mask_storeu_ps(c.add(r * ldc), m0, lanes[0]);
        _mm512_mask_storeu_ps(c.add(r * ldc + 16), m1, lanes[1]);
    }
}

/// [`super::Micro`] for blocks of at most 16 columns: the `MR_MAX x 16` sums in 16 registers,
/// each step one 16-pair vector of the panel times a broadcast pair of each row.
///
/// # Safety
/// As [`super::Micro`], on a CPU with AVX512F and AVX512-BF16.
pub unsafe fn micro_narrow(t: &Tile) {
    inner_narrow(t)
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn inner_narrow(t: &Tile) {
    let Tile {
        kp,
        a,
        b,
        c,
        ldc,
        rows,
        cols,
        accumulate,
    } = *t;
    let m = mask(cols);
    let mut acc = [_mm512_setzero_ps(); MR_MAX];
    if accumulate {
        for (r, lanes) in acc.iter_mut().enumerate().take(rows) {
            *lanes = _mm512_maskz_loadu_ps(m, c.add(r * ldc));
        }
    }
    for q in 0..kp {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(q * 16) as *const __m512i));
        for r in 0..MR_MAX {
            let x = a[r].add(q).read_unaligned() as i32;
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(x));
            acc[r] = _mm512_dpbf16_ps(acc[r], av, b0);
        }
    }
    for (r, lanes) in acc.iter().enumerate().take(rows) {
        _mm512_mask_storeu_ps(c.add(r * ldc), m, *lanes);
    }
}

/// [`super::pack_panel`] on the CPU's rounding (`vcvtneps2bf16`).
///
/// # Safety
/// AVX512F and AVX512-BF16; as [`super::pack_panel`].
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn pack_panel(
    rows: &[[*const f32; 2]],
    runs: [(usize, usize); 2],
    out: *mut u32,
    nr: usize,
) {
    let rounded = |m: __mmask16, p: *const f32| -> __m512i {
        let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, p)));
        _mm512_cvtepu16_epi32(b)
    };
    for (q, &[lo, hi]) in rows.iter().enumerate() {
        for (h, &(off, len)) in runs.iter().enumerate() {
            if len == 0 {
                continue;
            }
            let m = mask(len);
            let mut v = rounded(m, lo.add(off));
            if !hi.is_null() {
                v = _mm512_or_si512(v, _mm512_slli_epi32::<16>(rounded(m, hi.add(off))));
            }
            _mm512_mask_storeu_epi32(out.add(q * nr + 16 * h) as *mut i32, m, v);
        }
    }
}

/// [`super::pack_along`] on the CPU's rounding (`vcvtne2ps2bf16`).
///
/// # Safety
/// AVX512F and AVX512-BF16; `x` valid for `n` reads, `out` for `n.div_ceil(2)` writes.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn pack_along(x: *const f32, n: usize, out: *mut u32) {
    for i in (0..n).step_by(32) {
        let len = (n - i).min(32);
        let lo = _mm512_maskz_loadu_ps(mask(len), x.add(i));
        let hi = _mm512_maskz_loadu_ps(mask(len.saturating_sub(16)), x.add(i + 16));
        // The low 16 bf16 from the second operand: pairs in order.
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_mask_storeu_epi32(out.add(i / 2) as *mut i32, mask(len.div_ceil(2)), v);
    }
}

/// [`super::pack::exp_pairs`] on AVX-512: 32 exponentials at a time, summed and rounded to
/// pairs (`vcvtne2ps2bf16`) while in registers.
///
/// # Safety
/// AVX512F and AVX512-BF16; `out` valid for `row.len().div_ceil(2)` writes.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn exp_pairs(row: &[f32], scale: f32, out: *mut u32) -> f32 {
    use super::super::fastmath::exp_approx;
    let n = row.len();
    let mut top = _mm512_set1_ps(f32::NEG_INFINITY);
    for i in (0..n).step_by(16) {
        let v = _mm512_mask_loadu_ps(top, mask(n - i), row.as_ptr().add(i));
        top = _mm512_max_ps(top, v);
    }
    let max = _mm512_reduce_max_ps(top);
    let mut sum = _mm512_setzero_ps();
    for i in (0..n).step_by(32) {
        let len = (n - i).min(32);
        let mut e = [0f32; 32];
        if len == 32 {
            let x = &row[i..i + 32];
            for l in 0..32 {
                e[l] = exp_approx(scale * (x[l] - max));
            }
        } else {
            for l in 0..len {
                e[l] = exp_approx(scale * (row[i + l] - max));
            }
        }
        let lo = _mm512_maskz_loadu_ps(mask(len), e.as_ptr());
        let hi = _mm512_maskz_loadu_ps(mask(len.saturating_sub(16)), e.as_ptr().add(16));
        sum = _mm512_add_ps(sum, _mm512_add_ps(lo, hi));
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_mask_storeu_epi32(out.add(i / 2) as *mut i32, mask(len.div_ceil(2)), v);
    }
    _mm512_reduce_add_ps(sum)
}
