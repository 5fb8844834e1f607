//! The products' loop nest ([`block`]) and the four forms that feed it: linear layers on
//! packed weights, weights times patches or pixels, the implicit-patch convolution, and two
//! rounded activations. Each splits its output into blocks ([`blocks`]) run over the threads.

use half::bf16;
use rayon::prelude::*;

use super::super::Out;
use super::pack::{pack_panels, rows_along, weight_rows};
use super::{Kernel, Kernels, Tile, KC, MAX_COLS, MR, MR_MAX, NR};

/// Runs `f` on each job, across the threads (in turn inside a split batch's share).
pub(super) fn for_each_job<J: Send + Sync + Copy>(jobs: &[J], f: impl Fn(J) + Sync) {
    if candle_core::utils::is_serial() || jobs.len() < 2 {
        jobs.iter().for_each(|&j| f(j));
    } else {
        jobs.par_iter().for_each(|&j| f(j));
    }
}

/// How a product of `rows x cols` (per image, `images` of them) is cut into blocks: at most
/// [`MAX_COLS`] columns (a multiple of [`NR`]) and `max_rows` rows each, smaller until every
/// thread has about four blocks (but not below one panel, or 64 rows). Returns the block's
/// (rows, columns).
pub(super) fn blocks(rows: usize, cols: usize, images: usize, max_rows: usize) -> (usize, usize) {
    let target = if candle_core::utils::is_serial() {
        1
    } else {
        4 * rayon::current_num_threads().max(1)
    };
    let count = |rb: usize, cb: usize| images * rows.div_ceil(rb) * cols.div_ceil(cb);
    let (mut rb, mut cb) = (rows.clamp(1, max_rows), cols.clamp(1, MAX_COLS));
    while count(rb, cb) < target && cb > NR {
        cb = (cb / 2).next_multiple_of(NR);
    }
    while count(rb, cb) < target && rb > 64 {
        rb = (rb / 2).next_multiple_of(MR);
    }
    (rb, cb)
}

/// One block of a product: `c[r][j] = Σ_q a_r[q] · b[q][j]` for `r < rows`, `j < cols`, row `r`
/// of `a` at `a + r * lda` (`kp` pairs), over `segs` segments of columns (the samples of a
/// batch, which share the weight `a`): `panels(seg, q0, kc, scratch)` gives the panels of pairs
/// `q0..q0 + kc` of the segment's columns (a pointer to the first and the distance between
/// two), `c(seg)` where its output starts. Each block of rows of `a` is read once per depth
/// slice for every segment while it is in cache: a deep layer's weights (29 MB for SD 1.5's
/// 1280-channel convolutions) come from memory once per call, not once per sample.
///
/// # Safety
/// `a` valid for `rows` rows of `kp` pairs, `lda` apart; the panels for `kc` groups each;
/// each segment's `c` for `rows` rows of `cols` (`ldc` apart) no other thread touches.
pub(super) unsafe fn block(
    kp: usize,
    (rows, cols, segs): (usize, usize, usize),
    (a, lda): (*const u32, usize),
    mut panels: impl FnMut(usize, usize, usize, &mut Vec<u32>) -> (*const u32, usize),
    (c, ldc): (impl Fn(usize) -> *mut f32, usize),
    kernel: Kernel,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    if kp == 0 {
        for seg in 0..segs {
            for r in 0..rows {
                std::ptr::write_bytes(c(seg).add(r * ldc), 0, cols);
            }
        }
        return;
    }
    let mut scratch: Vec<Vec<u32>> = vec![Vec::new(); segs];
    for q0 in (0..kp).step_by(KC) {
        let kc = KC.min(kp - q0);
        let packed: Vec<(*const u32, usize)> = (scratch.iter_mut().enumerate())
            .map(|(seg, scratch)| panels(seg, q0, kc, scratch))
            .collect();
        for r0 in (0..rows).step_by(kernel.mr) {
            let nr = kernel.mr.min(rows - r0);
            let ar: [*const u32; MR_MAX] =
                std::array::from_fn(|r| a.add((r0 + r.min(nr - 1)) * lda + q0));
            for (seg, &(b, panel_step)) in packed.iter().enumerate() {
                let c = c(seg);
                for (pi, j0) in (0..cols).step_by(kernel.nr).enumerate() {
                    let nc = kernel.nr.min(cols - j0);
                    (kernel.micro)(&Tile {
                        kp: kc,
                        a: &ar,
                        b: b.add(pi * panel_step),
                        c: c.add(r0 * ldc + j0),
                        ldc,
                        rows: nr,
                        cols: nc,
                        accumulate: q0 > 0,
                    });
                }
            }
        }
    }
}

/// Adds `bias[r]` to row `r` (`per_row`) or `bias[j]` to column `j` of the `rows x cols` block
/// at `c` (rows `ldc` apart).
///
/// # Safety
/// `c` valid for the block, which no other thread touches.
unsafe fn add_bias(
    c: *mut f32,
    ldc: usize,
    (rows, cols): (usize, usize),
    bias: &[f32],
    per_row: bool,
) {
    for r in 0..rows {
        let row = std::slice::from_raw_parts_mut(c.add(r * ldc), cols);
        if per_row {
            row.iter_mut().for_each(|v| *v += bias[r]);
        } else {
            row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
        }
    }
}

/// A `len`-element output every element of which the jobs write, and the pointer they write
/// through.
pub(super) fn output(len: usize) -> (Vec<f32>, Out) {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = Out(out.spare_capacity_mut().as_mut_ptr().cast());
    (out, dst)
}

/// The jobs of a product whose rows are rounded once per job: `(first row, first column)`,
/// the block size of [`blocks`], and how many columns a job covers: whole blocks, as many as
/// the thread count allows, so that rows are rounded to pairs as few times as possible (a
/// 3072 x 1280 activation is 16 MB of reads each time).
fn row_jobs(m: usize, n: usize) -> (Vec<(usize, usize)>, usize, usize, usize) {
    let (rb, cb) = blocks(m, n, 1, 256);
    let target = if candle_core::utils::is_serial() {
        1
    } else {
        4 * rayon::current_num_threads().max(1)
    };
    let (row_blocks, col_blocks) = (m.div_ceil(rb), n.div_ceil(cb));
    let groups = target.div_ceil(row_blocks).clamp(1, col_blocks);
    let span = col_blocks.div_ceil(groups) * cb;
    let jobs = (0..m)
        .step_by(rb)
        .flat_map(|r0| (0..n).step_by(span).map(move |c0| (r0, c0)))
        .collect();
    (jobs, rb, cb, span)
}

/// `x (m, k) · wᵀ (+ bias)` from the packed weight: blocks of rows of `x` rounded to pairs,
/// times the panels as they are.
pub(super) fn x_packed(
    x: &[f32],
    packed: &[u32],
    (m, n, k): (usize, usize, usize),
    bias: Option<&[f32]>,
    kernels: Kernels,
) -> Vec<f32> {
    // The weight's panels are NR wide: the wide kernel's.
    let kernel = kernels.wide;
    let kp = k.div_ceil(2);
    let (mut out, dst) = output(m * n);
    let (jobs, rb, cb, span) = row_jobs(m, n);
    for_each_job(&jobs, |(r0, c1)| {
        let rows = rb.min(m - r0);
        let a = rows_along(&x[r0 * k..], rows, k);
        for c0 in (c1..n.min(c1 + span)).step_by(cb) {
            let cols = cb.min(n - c0);
            let first = &packed[(c0 / NR) * kp * NR..];
            let c = dst.at(r0 * n + c0);
            // SAFETY: `a` holds `rows` rows of `kp`; panel `c0 / NR + i` starts `i * kp * NR`
            // after `first` and holds `kp * NR` pairs; the job writes rows `r0..` columns
            // `c1..c1 + span` of `out` (`m x n`), which no other job does.
            unsafe {
                block(
                    kp,
                    (rows, cols, 1),
                    (a.as_ptr(), kp),
                    |_, q0, _, _| (first.as_ptr().add(q0 * NR), kp * NR),
                    (|_| c, n),
                    kernel,
                );
                if let Some(bias) = bias {
                    add_bias(c, n, (rows, cols), &bias[c0..], false);
                }
            }
        }
    });
    // SAFETY: the jobs cover every row and column.
    unsafe { out.set_len(m * n) };
    out
}

/// `a (bt, m, k) · b (bt, k, n)` per batch item: rows of `a` rounded to pairs per block, the
/// panels of `b` rounded as they are packed.
pub(super) fn rounded(
    a: &[f32],
    b: &[f32],
    (bt, m, k, n): (usize, usize, usize, usize),
    kernels: Kernels,
) -> Vec<f32> {
    let kp = k.div_ceil(2);
    let (mut out, dst) = output(bt * m * n);
    let (rb, cb) = blocks(m, n, bt, 256);
    let kernel = kernels.for_cols(cb);
    let jobs: Vec<(usize, usize, usize)> = (0..bt)
        .flat_map(|s| {
            (0..m)
                .step_by(rb)
                .flat_map(move |r0| (0..n).step_by(cb).map(move |c0| (s, r0, c0)))
        })
        .collect();
    for_each_job(&jobs, |(s, r0, c0)| {
        let (rows, cols) = (rb.min(m - r0), cb.min(n - c0));
        let rows_a = rows_along(&a[(s * m + r0) * k..], rows, k);
        let bs = b[s * k * n..(s + 1) * k * n].as_ptr();
        let c = dst.at((s * m + r0) * n + c0);
        // SAFETY: `rows_a` holds `rows` rows of `kp`; depth row `t` of item `s` of `b` starts
        // at `bs + t * n` and its columns `c0..c0 + cols` are read; the job writes rows `r0..`
        // columns `c0..` of item `s`'s `(m, n)` output, which no other job does.
        unsafe {
            block(
                kp,
                (rows, cols, 1),
                (rows_a.as_ptr(), kp),
                |_, q0, kc, scratch| {
                    let row = |t: usize| bs.add(t * n + c0);
                    pack_panels(scratch, kernel.nr, (cols, k), (q0, kc), row, |j| j)
                },
                (|_| c, n),
                kernel,
            )
        }
    });
    // SAFETY: the jobs cover every item, row and column.
    unsafe { out.set_len(bt * m * n) };
    out
}

/// The jobs of a weight-times-pixels product over all `b` samples at once: `(first row, first
/// column)` and the block's size. The samples' panels of one block stay in the L2 cache
/// ([`MAX_COLS`] columns in all); the rows are split before the columns, each split of the
/// columns reading the weight once more.
fn pixel_jobs(b: usize, o: usize, p: usize) -> (Vec<(usize, usize)>, usize, usize) {
    let target = if candle_core::utils::is_serial() {
        1
    } else {
        4 * rayon::current_num_threads().max(1)
    };
    let max_cols = (MAX_COLS / b.max(1)).max(NR) / NR * NR;
    let (mut rb, cb) = (o.max(1), p.clamp(1, max_cols));
    let count = |rb: usize| o.div_ceil(rb) * p.div_ceil(cb);
    while count(rb) < target && rb > 64 {
        rb = (rb / 2).next_multiple_of(MR);
    }
    let jobs = (0..o)
        .step_by(rb)
        .flat_map(|r0| (0..p).step_by(cb).map(move |c0| (r0, c0)))
        .collect();
    (jobs, rb, cb)
}

/// A job's panels for [`block`]: `(sample, q0, kc, scratch)` -> the first panel and the
/// distance between two.
type JobPanels<'a> = Box<dyn FnMut(usize, usize, usize, &mut Vec<u32>) -> (*const u32, usize) + 'a>;

/// `f` of each job, across the threads, in order.
pub(super) fn map_jobs<J: Sync, T: Send>(jobs: &[J], f: impl Fn(&J) -> T + Sync + Send) -> Vec<T> {
    if candle_core::utils::is_serial() || jobs.len() < 2 {
        jobs.iter().map(f).collect()
    } else {
        jobs.par_iter().map(f).collect()
    }
}

/// The rows of pairs `a` (`o` of `kp`) times the pixels of `b` samples (`p` each), plus `bias`
/// on each row: the jobs of [`pixel_jobs`], each one [`block`] over every sample, its panels
/// from `panels(c0, ncols, nr)` (the job's pixels `c0..c0 + ncols`, panels `nr` wide).
///
/// Where the rows are split many ways (deep layers on small planes: 1280 channels of 8x8
/// pixels), each block of pixels is packed once for all depths before the jobs run, instead of
/// once per block of rows: the patches of such a layer (8.8 MB) were read eight times.
///
/// # Safety
/// The panels must be valid as [`block`] requires, for every sample and depth slice.
unsafe fn weight_times_pixels<'a>(
    (b, o, p): (usize, usize, usize),
    (a, kp): (&[u32], usize),
    bias: Option<&[f32]>,
    kernels: Kernels,
    panels: impl Fn(usize, usize, usize) -> JobPanels<'a> + Sync,
) -> Vec<f32> {
    let (mut out, dst) = output(b * o * p);
    let (jobs, rb, cb) = pixel_jobs(b, o, p);
    let kernel = kernels.for_cols(cb);
    // Per block of pixels, each sample's panels over the whole depth, where the rows are split
    // four ways or more (split two ways, packing twice slice by slice in the L2 cache was
    // faster: 16x16 planes of 640 channels).
    let packed: Vec<Vec<Vec<u32>>> = if o.div_ceil(rb) >= 4 {
        let starts: Vec<usize> = (0..p).step_by(cb).collect();
        map_jobs(&starts, |&c0| {
            let mut pack = panels(c0, cb.min(p - c0), kernel.nr);
            (0..b)
                .map(|s| {
                    let mut whole = Vec::new();
                    pack(s, 0, kp, &mut whole);
                    whole
                })
                .collect()
        })
    } else {
        Vec::new()
    };
    for_each_job(&jobs, |(r0, c0)| {
        let (rows, ncols) = (rb.min(o - r0), cb.min(p - c0));
        let out_at = |s: usize| dst.at((s * o + r0) * p + c0);
        let job_panels = match packed.get(c0 / cb) {
            // Panel `i` of the whole depth starts `i * kp * nr` in; pairs `q0..` at `q0 * nr`.
            Some(whole) => Box::new(move |s: usize, q0: usize, _: usize, _: &mut Vec<u32>| {
                (
                    whole[s].as_ptr().wrapping_add(q0 * kernel.nr),
                    kp * kernel.nr,
                )
            }),
            None => panels(c0, ncols, kernel.nr),
        };
        // SAFETY: `a` holds `o` rows of `kp`; the panels are the caller's, or the caller's
        // packed whole; the job writes rows `r0..` columns `c0..` of each sample's `(o, p)`
        // plane, which no other job does.
        unsafe {
            block(
                kp,
                (rows, ncols, b),
                (a.as_ptr().add(r0 * kp), kp),
                job_panels,
                (out_at, p),
                kernel,
            );
            if let Some(bias) = bias {
                for s in 0..b {
                    add_bias(out_at(s), p, (rows, ncols), &bias[r0..], true);
                }
            }
        }
    });
    // SAFETY: the jobs cover every sample, row and column.
    unsafe { out.set_len(b * o * p) };
    out
}

/// `w (o, k) · cols (b, k, p) (+ bias)` per sample: the weight's rows as they are, the panels
/// of `cols` rounded to bf16 pairs as they are packed.
pub(super) fn w_cols(
    w: &[bf16],
    cols: &[f32],
    (b, o, k, p): (usize, usize, usize, usize),
    bias: Option<&[f32]>,
    kernels: Kernels,
) -> Vec<f32> {
    let kp = k.div_ceil(2);
    let a = weight_rows(w, o, k);
    let panels = |c0: usize, ncols: usize, nr: usize| -> JobPanels<'_> {
        Box::new(move |s, q0, kc, scratch| {
            // Depth row `t` of sample `s` starts at `cols + (s * k + t) * p`; its columns
            // `c0..c0 + ncols` are read.
            let row = |t: usize| cols[(s * k + t) * p + c0..].as_ptr();
            pack_panels(scratch, nr, (ncols, k), (q0, kc), row, |j| j)
        })
    };
    // SAFETY: each row `row` gives holds the `ncols` columns read after it.
    unsafe { weight_times_pixels((b, o, p), (&a, kp), bias, kernels, panels) }
}

/// The implicit-patch convolution ([`conv_same`]): depth row `t = (ci, ky, kx)` of the patch
/// matrix (the weight's own order) at pixel `j` is the padded input at `ci`, shifted by
/// `(ky, kx)`; a block of pixels packs its panels from padded bands of the rows it covers, or,
/// where the block lies in one row of a wide plane, of only the columns it reads (a VAE's
/// 512-pixel rows were copied whole for every 256 pixels).
pub(super) fn conv(
    x: &[f32],
    (b, c, h, wd): (usize, usize, usize, usize),
    (w, o, k): (&[bf16], usize, usize),
    bias: Option<&[f32]>,
    kernels: Kernels,
) -> Vec<f32> {
    let depth = c * k * k;
    let kp = depth.div_ceil(2);
    let a = weight_rows(w, o, depth);
    let panels = |c0: usize, ncols: usize, nr: usize| -> JobPanels<'_> {
        // The input these pixels read, zero-padded, for each sample: rows `y0..y1`, columns
        // `x0..x1` (whole rows when the block spans more than one).
        let (y0, y1) = (c0 / wd, (c0 + ncols - 1) / wd + 1);
        let (x0, x1) = if y1 - y0 == 1 {
            (c0 % wd, c0 % wd + ncols)
        } else {
            (0, wd)
        };
        let wp = x1 - x0 + k - 1;
        let bands: Vec<(Vec<f32>, usize)> = (0..b)
            .map(|s| {
                let rows = (s, y0, y1);
                super::super::band::padded_window(x, (c, h, wd), k, rows, (x0, x1), 0)
            })
            .collect();
        // Pixel `j` of the job, in its padded row.
        let offset = move |j: usize| (c0 + j) / wd * wp - y0 * wp + (c0 + j) % wd - x0;
        Box::new(move |s, q0, kc, scratch| {
            let (padded, plane) = (&bands[s].0, bands[s].1);
            let row = |t: usize| {
                let (ci, ky, kx) = (t / (k * k), t / k % k, t % k);
                padded[ci * plane + ky * wp + kx..].as_ptr()
            };
            pack_panels(scratch, nr, (ncols, depth), (q0, kc), row, offset)
        })
    };
    // SAFETY: a run of 16 pixels from a multiple of 16 lies in one output row (`wd % 16 == 0`,
    // `c0 % 16 == 0`), so its reads stay inside that row of the sample's padded band or window
    // (`wp` long, covering the job's columns plus `k - 1`).
    unsafe { weight_times_pixels((b, o, h * wd), (&a, kp), bias, kernels, panels) }
}
