//! Attention in one pass on bf16 dot products: for each block of query rows, the scores
//! against every key, their exponentials and the weighted sum of the values, without a score
//! matrix in memory. Each head's keys and values are packed once into panels; a block's scores
//! stay in the L2 cache between the two products.

use super::pack::{exp_pairs, pack_panels, rows_along};
use super::products::{block, for_each_job, map_jobs, output};
use super::{Kernel, Kernels, NR};

/// The most bytes of scores (f32) one block of query rows computes at once: with the head's
/// packed keys and values it stays in the L2 cache.
const SCORE_BYTES: usize = 256 << 10;

/// Keys `(sk, dh)` as the panels of the scores' right-hand side: panel `p`, pair `q` of key
/// `p * NR + j` at `(p * kpd + q) * NR + j`, zeros past the last key.
fn key_panels(keys: &[f32], sk: usize, dh: usize) -> Vec<u32> {
    let kpd = dh.div_ceil(2);
    let rows = rows_along(keys, sk, dh);
    let mut out = vec![0u32; sk.div_ceil(NR) * kpd * NR];
    for (j, row) in rows.chunks_exact(kpd).enumerate() {
        let (p, jj) = (j / NR, j % NR);
        for (q, &pair) in row.iter().enumerate() {
            out[(p * kpd + q) * NR + jj] = pair;
        }
    }
    out
}

/// The kernel for the values' product: the narrow one where the values' width pads to fewer
/// columns in its panels of 16 than in the wide one's 32 (heads of 40 or 80 channels).
fn value_kernel(kernels: Kernels, dv: usize) -> Kernel {
    if dv.next_multiple_of(16) < dv.next_multiple_of(NR) {
        kernels.narrow
    } else {
        kernels.wide
    }
}

/// `softmax(scale · q kᵀ) v` per batch item: `q` `(bh, sq, dh)`, `k` `(bh, sk, dh)`, `v`
/// `(bh, sk, dv)` f32 -> `(bh, sq, dv)` f32. Queries, keys, values and the exponentials of the
/// scores are rounded to bf16; sums, scores and the softmax are f32. Each output row is divided
/// by its exponentials' sum after the product (the exponentials are rounded before it).
pub(super) fn fused(
    (q, k, v): (&[f32], &[f32], &[f32]),
    (bh, sq, sk, dh, dv): (usize, usize, usize, usize, usize),
    scale: f32,
    kernels: Kernels,
) -> Vec<f32> {
    let (kpd, kps) = (dh.div_ceil(2), sk.div_ceil(2));
    let vk = value_kernel(kernels, dv);
    let pack = |h: usize| -> (Vec<u32>, Vec<u32>) {
        let keys = key_panels(&k[h * sk * dh..][..sk * dh], sk, dh);
        let vh = &v[h * sk * dv..][..sk * dv];
        let mut values = Vec::new();
        let row = |t: usize| vh[t * dv..].as_ptr();
        pack_panels(&mut values, vk.nr, (dv, sk), (0, kps), row, |j| j);
        (keys, values)
    };
    let heads = map_jobs(&(0..bh).collect::<Vec<_>>(), |&h| pack(h));
    let rb = (SCORE_BYTES / 4 / sk.max(1)).clamp(16, 256);
    let jobs: Vec<(usize, usize)> = (0..bh)
        .flat_map(|h| (0..sq).step_by(rb).map(move |r0| (h, r0)))
        .collect();
    let (mut out, dst) = output(bh * sq * dv);
    for_each_job(&jobs, |(h, r0)| {
        let rows = rb.min(sq - r0);
        let (keys, values) = &heads[h];
        let a = rows_along(&q[(h * sq + r0) * dh..], rows, dh);
        let mut scores: Vec<f32> = Vec::with_capacity(rows * sk);
        let s = scores.as_mut_ptr();
        let o = dst.at((h * sq + r0) * dv);
        // SAFETY: `a` holds `rows` rows of `kpd` pairs; key panel `i` starts `i * kpd * NR`
        // into `keys` and holds `kpd * NR` pairs; `scores` has room for `rows x sk`, all of
        // which `block` writes.
        unsafe {
            block(
                kpd,
                (rows, sk, 1),
                (a.as_ptr(), kpd),
                |_, q0, _, _| (keys.as_ptr().add(q0 * NR), kpd * NR),
                (|_| s, sk),
                kernels.wide,
            );
            scores.set_len(rows * sk);
        }
        // The weights: each row's exponentials as pairs, and their sums.
        let mut weights: Vec<u32> = Vec::with_capacity(rows * kps);
        let sums: Vec<f32> = (scores.chunks_exact_mut(sk))
            .zip(weights.spare_capacity_mut().chunks_mut(kps))
            .map(|(row, out)| exp_pairs(row, scale, out))
            .collect();
        // SAFETY: `exp_pairs` wrote every pair of every row.
        unsafe { weights.set_len(rows * kps) };
        // SAFETY: `weights` holds `rows` rows of `kps` pairs; value panel `i` starts
        // `i * kps * vk.nr` into `values`; the job writes rows `r0..r0 + rows` of head `h`'s
        // `(sq, dv)` output, which no other job does.
        unsafe {
            block(
                kps,
                (rows, dv, 1),
                (weights.as_ptr(), kps),
                |_, q0, _, _| (values.as_ptr().add(q0 * vk.nr), kps * vk.nr),
                (|_| o, dv),
                vk,
            );
            for (r, &sum) in sums.iter().enumerate() {
                let row = std::slice::from_raw_parts_mut(o.add(r * dv), dv);
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|x| *x *= inv);
            }
        }
    });
    // SAFETY: the jobs cover every head and query row.
    unsafe { out.set_len(bh * sq * dv) };
    out
}
