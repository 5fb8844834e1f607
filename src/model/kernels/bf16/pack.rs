//! Packing for the bf16 products: activations rounded to bf16 pairs as rows ([`pack_along`])
//! or as the panels of the micro-kernel ([`pack_panels`]), a linear weight's panels, a
//! weight's rows of pairs.

use half::bf16;
use rayon::prelude::*;

use super::{CpuFeatures, NR};

/// [`pack_weight`] on the bits of a `(n, k)` weight.
pub(super) fn pack_weight_bits(bits: &[u16], n: usize, k: usize) -> Vec<u32> {
    const TILE: usize = 32;
    let (kp, panels) = (k.div_ceil(2), n.div_ceil(NR));
    let mut out = vec![0u32; panels * kp * NR];
    out.par_chunks_mut((kp * NR).max(1))
        .enumerate()
        .for_each(|(pi, panel)| {
            let rows = NR.min(n - pi * NR);
            // A panel is its rows' pairs transposed: TILE pairs of each row at a time, read
            // along the row and written down the panel from a tile that stays in cache.
            let mut tile = [[0u32; TILE]; NR];
            for q0 in (0..kp).step_by(TILE) {
                let qn = TILE.min(kp - q0);
                for (jj, dst) in tile.iter_mut().enumerate().take(rows) {
                    let row = &bits[(pi * NR + jj) * k..][..k];
                    for (dq, v) in dst.iter_mut().enumerate().take(qn) {
                        let t = 2 * (q0 + dq);
                        *v = pair(row[t], row.get(t + 1).copied().unwrap_or(0));
                    }
                }
                for dq in 0..qn {
                    let dst = &mut panel[(q0 + dq) * NR..][..rows];
                    for (jj, v) in dst.iter_mut().enumerate() {
                        *v = tile[jj][dq];
                    }
                }
            }
        });
    out
}

/// The bits of bf16 values.
pub(super) fn bytemuck_bf16(v: &[bf16]) -> &[u16] {
    // SAFETY: `bf16` is a `repr(transparent)` `u16`.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u16>(), v.len()) }
}

/// The bf16 nearest to `v` (ties to even), as bits.
pub(super) fn round(v: f32) -> u16 {
    bf16::from_f32(v).to_bits()
}

/// Two bf16 as one pair: element `2i` in the low half, `2i + 1` in the high half (the order
/// `vdpbf16ps` reads them in).
pub(super) fn pair(lo: u16, hi: u16) -> u32 {
    lo as u32 | (hi as u32) << 16
}

/// Whether the packing below runs on AVX512-BF16's conversions (else in plain Rust; the two
/// give the same bits but for subnormals, which the instructions flush to zero).
fn simd_packing() -> bool {
    static SIMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SIMD.get_or_init(|| CpuFeatures::this_cpu().avx512bf16)
}

/// `out[q] = pair(round(x[2q]), round(x[2q + 1]))` (past the end: 0): a row along the depth
/// as pairs, `out.len() == x.len().div_ceil(2)`.
pub(super) fn pack_along(x: &[f32], out: &mut [std::mem::MaybeUninit<u32>]) {
    assert_eq!(out.len(), x.len().div_ceil(2));
    #[cfg(target_arch = "x86_64")]
    if simd_packing() {
        // SAFETY: the CPU has the instructions; `x` and `out` have the lengths checked above
        // (every element of `out` is written).
        unsafe { return super::avx512::pack_along(x.as_ptr(), x.len(), out.as_mut_ptr().cast()) }
    }
    for (v, two) in out.iter_mut().zip(x.chunks(2)) {
        v.write(pair(round(two[0]), two.get(1).map_or(0, |&h| round(h))));
    }
}

/// `row`'s exponentials `exp(scale · (v - max(row)))` rounded to bf16 pairs into `out` (as
/// [`pack_along`]); returns their sum before rounding. `scale` must be positive.
pub(super) fn exp_pairs(
    row: &mut [f32],
    scale: f32,
    out: &mut [std::mem::MaybeUninit<u32>],
) -> f32 {
    assert_eq!(out.len(), row.len().div_ceil(2));
    #[cfg(target_arch = "x86_64")]
    if simd_packing() {
        // SAFETY: the CPU has the instructions; `out` has the length checked above (every
        // element of it is written).
        unsafe { return super::avx512::exp_pairs(row, scale, out.as_mut_ptr().cast()) }
    }
    let sum = super::super::fastmath::exp_scaled(row, scale);
    pack_along(row, out);
    sum
}

/// Fills `scratch` with the panels (`nr` = 16 or 32 wide) of `cols` columns for pairs `q0..q0 + kc` (`depth` rows
/// in all): column `j` of depth row `t` is read at `row(t) + offset(j)`, where the 16 columns
/// from a multiple of 16 lie one after another. Returns [`block`]'s pointer and panel step.
pub(super) fn pack_panels(
    scratch: &mut Vec<u32>,
    nr: usize,
    (cols, depth): (usize, usize),
    (q0, kc): (usize, usize),
    row: impl Fn(usize) -> *const f32,
    offset: impl Fn(usize) -> usize,
) -> (*const u32, usize) {
    debug_assert!(nr == 16 || nr == 32);
    let panels = cols.div_ceil(nr);
    scratch.resize(panels * kc * nr, 0);
    // Each pair's two depth rows (null past the depth).
    let rows: Vec<[*const f32; 2]> = (0..kc)
        .map(|q| {
            let t = 2 * (q0 + q);
            [
                row(t),
                if t + 1 < depth {
                    row(t + 1)
                } else {
                    std::ptr::null()
                },
            ]
        })
        .collect();
    for pi in 0..panels {
        // The panel's runs of 16 columns: (offset, length), the second empty in a panel of 16.
        let runs: [(usize, usize); 2] = std::array::from_fn(|h| {
            let j = pi * nr + 16 * h;
            if j < cols && 16 * h < nr {
                (offset(j), 16.min(cols - j))
            } else {
                (0, 0)
            }
        });
        let dst = scratch[pi * kc * nr..][..kc * nr].as_mut_ptr();
        // SAFETY: the caller's `row` and `offset` give `len` readable elements per run; `dst`
        // has `kc * nr` pairs.
        unsafe { pack_panel(&rows, runs, dst, nr) }
    }
    (scratch.as_ptr(), kc * nr)
}

/// One panel `nr` wide: `out[q * nr + 16h + i] = pair(rows[q][0][o_h + i], rows[q][1][o_h + i])`
/// rounded, for the runs `(o_h, len_h)`.
///
/// # Safety
/// Each non-null row pointer is valid for reads at each run; `out` for `rows.len() * nr`.
pub(super) unsafe fn pack_panel(
    rows: &[[*const f32; 2]],
    runs: [(usize, usize); 2],
    out: *mut u32,
    nr: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if simd_packing() {
        return super::avx512::pack_panel(rows, runs, out, nr);
    }
    for (q, &[lo, hi]) in rows.iter().enumerate() {
        for (h, &(off, len)) in runs.iter().enumerate() {
            for i in 0..len {
                let hi = if hi.is_null() {
                    0
                } else {
                    round(*hi.add(off + i))
                };
                *out.add(q * nr + 16 * h + i) = pair(round(*lo.add(off + i)), hi);
            }
        }
    }
}

/// The first `rows` rows of `x` (`k` long) as rows of bf16 pairs ([`pack_along`]).
pub(super) fn rows_along(x: &[f32], rows: usize, k: usize) -> Vec<u32> {
    let kp = k.div_ceil(2);
    let mut a = Vec::with_capacity(rows * kp);
    let rows_out = a.spare_capacity_mut()[..rows * kp].chunks_mut(kp.max(1));
    for (r, row) in rows_out.enumerate().take(rows) {
        pack_along(&x[r * k..][..k], row);
    }
    // SAFETY: `pack_along` wrote every pair of every row.
    unsafe { a.set_len(rows * kp) };
    a
}

/// Rows of pairs of a bf16 weight `(o, k)`: the weight itself when `k` is even (each two bf16
/// of a row are one pair), else a copy with each row padded by a zero.
pub(super) fn weight_rows(w: &[bf16], o: usize, k: usize) -> std::borrow::Cow<'_, [u32]> {
    let kp = k.div_ceil(2);
    if k.is_multiple_of(2) && w.as_ptr().cast::<u32>().is_aligned() {
        // SAFETY: `w` is `o * k` bf16, aligned for u32 (checked): `o * kp` u32.
        return std::borrow::Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(w.as_ptr().cast::<u32>(), o * kp)
        });
    }
    let bits = bytemuck_bf16(w);
    let mut out = vec![0u32; o * kp];
    for (r, row) in out.chunks_mut(kp.max(1)).enumerate().take(o) {
        for (q, v) in row.iter_mut().enumerate() {
            let hi = if 2 * q + 1 < k {
                bits[r * k + 2 * q + 1]
            } else {
                0
            };
            *v = pair(bits[r * k + 2 * q], hi);
        }
    }
    std::borrow::Cow::Owned(out)
}
