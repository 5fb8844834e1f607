//! Matrix products whose weights are stored in bf16, on the CPU, accumulating in f32.
//!
//! A model loaded with `--dtype bf16` keeps its weights in bf16 (half of f32's memory) while its
//! activations stay f32 between layers (norms, softmax and the sampler run in f32). Each product
//! of a bf16 weight with an f32 activation runs one of two ways, chosen once per process
//! ([`Bf16Kernel::detect`]):
//!
//! - **AVX512-BF16**: the activation is rounded to bf16 as it is packed and the product runs on
//!   `vdpbf16ps` (pairs of bf16 products summed into f32 lanes), the way oneDNN runs PyTorch's
//!   bf16 on such CPUs;
//! - **widen**, on every other CPU: the weight is widened to f32 (exactly: every bf16 is an f32)
//!   for the f32 product, so the output equals f32 inference on bf16-rounded weights, and only
//!   the memory is saved.
//!
//! The packed product is one loop nest ([`gemm`]) over panels of [`NR`] output columns and
//! blocks of [`MR`] rows, with the innermost step (the micro-kernel) passed in: the AVX512-BF16
//! one, or [`micro_emulated`], which follows the instruction's definition in plain Rust so the
//! packing and the loops are checked on any CPU.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

/// Rows of the output one micro-kernel call computes.
pub const MR: usize = 8;
/// Columns of the output one micro-kernel call computes (two 16-lane vectors).
pub const NR: usize = 32;

/// How this process runs bf16-weight products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// `vdpbf16ps` on packed bf16 pairs.
    Avx512Bf16,
    /// Weights widened to f32 for the f32 product.
    Widen,
}

/// The CPU features the choice depends on (passed in, so that a test can simulate a CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFeatures {
    pub avx512bf16: bool,
}

impl CpuFeatures {
    /// This machine's.
    pub fn this_cpu() -> Self {
        #[cfg(target_arch = "x86_64")]
        let avx512bf16 =
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16");
        #[cfg(not(target_arch = "x86_64"))]
        let avx512bf16 = false;
        Self { avx512bf16 }
    }
}

impl Bf16Kernel {
    /// The kernel for a CPU with `features`.
    pub fn for_cpu(features: CpuFeatures) -> Self {
        if features.avx512bf16 {
            Bf16Kernel::Avx512Bf16
        } else {
            Bf16Kernel::Widen
        }
    }

    /// The kernel for this CPU, detected once; `INSTRUCTDIFFUSION_BF16_KERNEL=widen` forces the
    /// fallback (to compare the two on a CPU that has the instructions).
    pub fn detect() -> Self {
        static KERNEL: std::sync::OnceLock<Bf16Kernel> = std::sync::OnceLock::new();
        *KERNEL.get_or_init(|| {
            let forced = std::env::var("INSTRUCTDIFFUSION_BF16_KERNEL").ok();
            if forced.as_deref() == Some("widen") {
                return Bf16Kernel::Widen;
            }
            Self::for_cpu(CpuFeatures::this_cpu())
        })
    }

    /// One line for users: what bf16 does on this CPU.
    pub fn describe(self) -> &'static str {
        match self {
            Bf16Kernel::Avx512Bf16 => {
                "bf16 weights, products on this CPU's AVX512-BF16 dot products (f32 accumulation)"
            }
            Bf16Kernel::Widen => {
                "bf16 weights (half the memory); this CPU has no AVX512-BF16, so each product widens its weights to f32: no faster than f32"
            }
        }
    }
}

/// The dtype a network whose weights are `dtype` on `device` computes in: `dtype`, except bf16
/// weights on the CPU, which compute in f32 (through this module's products).
pub fn compute_dtype_for(dtype: DType, device: &candle_core::Device) -> DType {
    if device.is_cpu() && dtype == DType::BF16 {
        DType::F32
    } else {
        dtype
    }
}

/// `x · wᵀ`: `x` `(m, k)` f32, `w` `(n, k)` bf16 (a linear layer's weight) -> `(m, n)` f32.
pub fn matmul_wt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    match Bf16Kernel::detect() {
        Bf16Kernel::Widen => x.matmul(&w.to_dtype(DType::F32)?.t()?),
        Bf16Kernel::Avx512Bf16 => x.contiguous()?.apply_op2_no_bwd(
            &w.contiguous()?,
            &Product {
                form: Form::XWt,
                micro: avx512_micro(),
            },
        ),
    }
}

/// `w · cols` for each sample: `w` `(o, k)` bf16 (a convolution's flattened weight), `cols`
/// `(b, k, p)` f32 (patches, or the pixels of a 1x1 convolution) -> `(b, o, p)` f32.
pub fn weight_matmul(w: &Tensor, cols: &Tensor) -> Result<Tensor> {
    match Bf16Kernel::detect() {
        Bf16Kernel::Widen => {
            let (b, o, k) = (cols.dim(0)?, w.dim(0)?, w.dim(1)?);
            w.to_dtype(DType::F32)?
                .broadcast_as((b, o, k))?
                .matmul(cols)
        }
        Bf16Kernel::Avx512Bf16 => cols.contiguous()?.apply_op2_no_bwd(
            &w.contiguous()?,
            &Product {
                form: Form::WCols,
                micro: avx512_micro(),
            },
        ),
    }
}

/// The innermost step: `tile[r][j] = Σ_q a[r][q] · b[q][j]` over `kp` bf16 pairs, for the
/// [`MR`] rows `a` (pointers to their first pair; pairs may be unaligned) and the packed panel
/// `b` (`kp` groups of [`NR`] pairs).
///
/// # Safety
/// Each `a[r]` is valid for `kp` reads of `u32`, `b` for `kp * NR`.
pub type Micro = unsafe fn(kp: usize, a: &[*const u32; MR], b: *const u32, tile: &mut [f32]);

/// Which product a [`Product`] op computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `x (m, k) · wᵀ`, `w (n, k)`.
    XWt,
    /// `w (o, k) · cols (b, k, p)`.
    WCols,
}

/// A bf16-weight product as an op on (f32 activation, bf16 weight).
struct Product {
    form: Form,
    micro: Micro,
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "bf16-weight-matmul"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = super::contiguous_f32(xs, xl, "a bf16-weight product")?;
        let w = match (ws, wl.contiguous_offsets()) {
            (CpuStorage::BF16(v), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!("a bf16-weight product needs contiguous bf16 weights"),
        };
        let (n_w, k) = wl.shape().dims2()?;
        match self.form {
            Form::XWt => {
                let (m, kx) = xl.shape().dims2()?;
                if kx != k {
                    candle_core::bail!("bf16 product: x is {m}x{kx}, w is {n_w}x{k}")
                }
                let out = x_wt(x, w, m, n_w, k, self.micro);
                Ok((CpuStorage::F32(out), Shape::from((m, n_w))))
            }
            Form::WCols => {
                let (b, kc, p) = xl.shape().dims3()?;
                if kc != k {
                    candle_core::bail!("bf16 product: w is {n_w}x{k}, cols are {b}x{kc}x{p}")
                }
                let out = w_cols(w, x, b, n_w, k, p, self.micro);
                Ok((CpuStorage::F32(out), Shape::from((b, n_w, p))))
            }
        }
    }
}

/// The bf16 nearest to `v` (ties to even), as bits.
fn round(v: f32) -> u16 {
    bf16::from_f32(v).to_bits()
}

/// Two bf16 as one pair: element `2i` in the low half, `2i + 1` in the high half (the order
/// `vdpbf16ps` reads them in).
fn pair(lo: u16, hi: u16) -> u32 {
    lo as u32 | (hi as u32) << 16
}

/// Rows of bf16 as rows of pairs (`kp = ceil(k / 2)` each, an odd `k` padded with a zero).
fn rows_of_pairs(rows: usize, k: usize, get: impl Fn(usize, usize) -> u16) -> Vec<u32> {
    let kp = k.div_ceil(2);
    let mut out = vec![0u32; rows * kp];
    for (r, row) in out.chunks_mut(kp.max(1)).enumerate().take(rows) {
        for (q, v) in row.iter_mut().enumerate() {
            let hi = if 2 * q + 1 < k { get(r, 2 * q + 1) } else { 0 };
            *v = pair(get(r, 2 * q), hi);
        }
    }
    out
}

/// `x (m, k) · wᵀ`, `w (n, k)`: the rows of `x` rounded to bf16 pairs per block of rows, the
/// panels of `wᵀ` read as pairs straight from the rows of `w`.
fn x_wt(x: &[f32], w: &[bf16], m: usize, n: usize, k: usize, micro: Micro) -> Vec<f32> {
    let kp = k.div_ceil(2);
    let mut out = vec![0f32; m * n];
    let chunk = chunk_rows(m);
    out.par_chunks_mut(chunk * n.max(1))
        .enumerate()
        .for_each(|(ci, c)| {
            let r0 = ci * chunk;
            let rows = c.len() / n.max(1);
            let a = rows_of_pairs(rows, k, |r, j| round(x[(r0 + r) * k + j]));
            let pack_b = |j0: usize, panel: &mut [u32]| {
                for q in 0..kp {
                    for jj in 0..NR {
                        let j = j0 + jj;
                        panel[q * NR + jj] = if j < n {
                            let lo = w[j * k + 2 * q].to_bits();
                            let hi = if 2 * q + 1 < k {
                                w[j * k + 2 * q + 1].to_bits()
                            } else {
                                0
                            };
                            pair(lo, hi)
                        } else {
                            0
                        };
                    }
                }
            };
            gemm(rows, n, kp, &a, pack_b, c, micro);
        });
    out
}

/// `w (o, k) · cols (b, k, p)` per sample: the rows of `w` as pairs, the panels of `cols`
/// rounded to bf16 pairs as they are packed.
fn w_cols(
    w: &[bf16],
    cols: &[f32],
    b: usize,
    o: usize,
    k: usize,
    p: usize,
    micro: Micro,
) -> Vec<f32> {
    let kp = k.div_ceil(2);
    let a = rows_of_pairs(o, k, |r, j| w[r * k + j].to_bits());
    let mut out = vec![0f32; b * o * p];
    if out.is_empty() {
        return out;
    }
    // Jobs: (sample, block of weight rows).
    let chunk = chunk_rows(o * b).min(o);
    out.par_chunks_mut(o * p)
        .enumerate()
        .flat_map(|(s, plane)| {
            plane
                .par_chunks_mut(chunk * p)
                .enumerate()
                .map(move |(ci, c)| (s, ci, c))
        })
        .for_each(|(s, ci, c)| {
            let r0 = ci * chunk;
            let rows = c.len() / p.max(1);
            let x = &cols[s * k * p..(s + 1) * k * p];
            let pack_b = |j0: usize, panel: &mut [u32]| {
                for q in 0..kp {
                    let (lo_row, hi_row) = (2 * q * p, (2 * q + 1) * p);
                    for jj in 0..NR {
                        let j = j0 + jj;
                        panel[q * NR + jj] = if j < p {
                            let hi = if 2 * q + 1 < k {
                                round(x[hi_row + j])
                            } else {
                                0
                            };
                            pair(round(x[lo_row + j]), hi)
                        } else {
                            0
                        };
                    }
                }
            };
            gemm(rows, p, kp, &a[r0 * kp..(r0 + rows) * kp], pack_b, c, micro);
        });
    out
}

/// Rows per parallel job: enough jobs for every thread (four each), at least one micro-kernel
/// block, at most 256 rows (each job packs the weight panels again: 1/256 of its arithmetic).
fn chunk_rows(m: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let per = m.div_ceil(threads * 4);
    per.next_multiple_of(MR).clamp(MR, 256).min(m.max(1))
}

/// `c (m, n) = a · b`: `a` is `m` rows of `kp` pairs; `pack_b(j0, panel)` fills the panel of
/// columns `j0..j0 + NR` (`kp * NR` pairs, zero past column `n`).
pub fn gemm(
    m: usize,
    n: usize,
    kp: usize,
    a: &[u32],
    pack_b: impl Fn(usize, &mut [u32]),
    c: &mut [f32],
    micro: Micro,
) {
    assert!(a.len() >= m * kp && c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    let mut panel = vec![0u32; kp * NR];
    let mut tile = [0f32; MR * NR];
    for j0 in (0..n).step_by(NR) {
        pack_b(j0, &mut panel);
        let cols = NR.min(n - j0);
        for r0 in (0..m).step_by(MR) {
            let rows = MR.min(m - r0);
            // Rows past the end repeat the last one; their results are dropped.
            let rows_a: [*const u32; MR] =
                std::array::from_fn(|r| a[(r0 + r.min(rows - 1)) * kp..].as_ptr());
            // SAFETY: each row pointer has `kp` pairs after it (`a` holds `m * kp`), the panel
            // `kp * NR`.
            unsafe { micro(kp, &rows_a, panel.as_ptr(), &mut tile) };
            for r in 0..rows {
                c[(r0 + r) * n + j0..][..cols].copy_from_slice(&tile[r * NR..][..cols]);
            }
        }
    }
}

/// `vdpbf16ps` in plain Rust: per lane, the high pair's product then the low pair's is added
/// to the running f32 sum (each addition rounded; the products of two bf16 are exact in f32).
/// Denormal inputs are not flushed, as the instruction would: sums of weights and activations
/// do not reach them.
///
/// # Safety
/// As [`Micro`].
pub unsafe fn micro_emulated(kp: usize, a: &[*const u32; MR], b: *const u32, tile: &mut [f32]) {
    let half = |v: u32, hi: bool| f32::from_bits(if hi { v & 0xffff_0000 } else { v << 16 });
    for (r, &row) in a.iter().enumerate() {
        for j in 0..NR {
            let mut acc = 0f32;
            for q in 0..kp {
                let (x, y) = (row.add(q).read_unaligned(), *b.add(q * NR + j));
                acc += half(x, true) * half(y, true);
                acc += half(x, false) * half(y, false);
            }
            tile[r * NR + j] = acc;
        }
    }
}

/// The AVX512-BF16 micro-kernel, where this build targets x86-64 (callers pick it only where
/// [`CpuFeatures::this_cpu`] found the instructions).
fn avx512_micro() -> Micro {
    #[cfg(target_arch = "x86_64")]
    {
        avx512::micro
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        micro_emulated
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// [`super::Micro`] on `vdpbf16ps`: the `MR x NR` sums in 16 registers, each step one
    /// broadcast pair of a row times two 16-pair vectors of the panel.
    ///
    /// # Safety
    /// As [`super::Micro`], on a CPU with AVX512F and AVX512-BF16.
    pub unsafe fn micro(kp: usize, a: &[*const u32; MR], b: *const u32, tile: &mut [f32]) {
        inner(kp, a, b, tile)
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn inner(kp: usize, a: &[*const u32; MR], b: *const u32, tile: &mut [f32]) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
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
        for (r, lanes) in acc.iter().enumerate() {
            _mm512_storeu_ps(tile.as_mut_ptr().add(r * NR), lanes[0]);
            _mm512_storeu_ps(tile.as_mut_ptr().add(r * NR + 16), lanes[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The product of bf16-rounded operands in f64, one output at a time.
    fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let r = |v: f32| bf16::from_f32(v).to_f32() as f64;
        (0..m * n)
            .map(|i| {
                let (row, col) = (i / n, i % n);
                (0..k)
                    .map(|j| r(x[row * k + j]) * r(w[col * k + j]))
                    .sum::<f64>() as f32
            })
            .collect()
    }

    /// The largest difference from `want`, relative to the sum of magnitudes a product adds up
    /// (f32 accumulation of `k` terms errs by about `k * 2^-24` of it).
    fn worst(got: &[f32], want: &[f32], scale: f32) -> f32 {
        got.iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs() / scale)
            .fold(0f32, f32::max)
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1f32..1.)).collect()
    }

    /// Both packed forms with a given micro-kernel, against the f64 reference, on shapes with
    /// remainders everywhere (rows not a multiple of MR, columns of NR, an odd depth).
    fn check(micro: Micro) -> std::result::Result<(), String> {
        for &(m, n, k) in &[(1, 1, 1), (13, 45, 37), (70, 33, 64), (8, 32, 2)] {
            let (x, w) = (random(m * k, 1), random(n * k, 2));
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let want = reference(&x, &w, m, n, k);
            let got = x_wt(&x, &wb, m, n, k, micro);
            let e = worst(&got, &want, k as f32);
            if e > 1e-6 {
                return Err(format!("x·wᵀ {m}x{n}x{k}: off by {e} of the scale"));
            }
            // The same numbers as w · cols: cols (2, k, m) holds x transposed, twice.
            let mut cols = vec![0f32; 2 * k * m];
            for s in 0..2 {
                for r in 0..m {
                    for j in 0..k {
                        cols[s * k * m + j * m + r] = x[r * k + j];
                    }
                }
            }
            let got = w_cols(&wb, &cols, 2, n, k, m, micro);
            for s in 0..2 {
                let plane = &got[s * n * m..(s + 1) * n * m];
                let t: Vec<f32> = (0..m * n).map(|i| plane[(i % n) * m + i / n]).collect();
                let e = worst(&t, &want, k as f32);
                if e > 1e-6 {
                    return Err(format!("w·cols {n}x{m}x{k}, sample {s}: off by {e}"));
                }
            }
        }
        Ok(())
    }

    #[test]
    fn emulated_kernel_matches_the_reference() {
        check(micro_emulated).unwrap();
    }

    /// The real instructions, where this CPU has them (the emulated kernel above checks the
    /// packing and loops on every CPU).
    #[test]
    fn avx512_bf16_kernel_matches_the_reference_where_present() {
        if !CpuFeatures::this_cpu().avx512bf16 {
            eprintln!("this CPU has no AVX512-BF16: the vdpbf16ps kernel is not run here");
            return;
        }
        check(avx512_micro()).unwrap();
    }

    /// A kernel that drops the second bf16 of each pair, or swaps the halves of one operand,
    /// is caught by the same check.
    #[test]
    fn a_broken_kernel_fails_the_check() {
        unsafe fn drops_low(kp: usize, a: &[*const u32; MR], b: *const u32, tile: &mut [f32]) {
            let hi = |v: u32| f32::from_bits(v & 0xffff_0000);
            for (r, &row) in a.iter().enumerate() {
                for j in 0..NR {
                    tile[r * NR + j] = (0..kp)
                        .map(|q| hi(row.add(q).read_unaligned()) * hi(*b.add(q * NR + j)))
                        .sum();
                }
            }
        }
        unsafe fn swaps(kp: usize, a: &[*const u32; MR], b: *const u32, tile: &mut [f32]) {
            let f = |v: u32, hi: bool| f32::from_bits(if hi { v & 0xffff_0000 } else { v << 16 });
            for (r, &row) in a.iter().enumerate() {
                for j in 0..NR {
                    tile[r * NR + j] = (0..kp)
                        .map(|q| {
                            let (x, y) = (row.add(q).read_unaligned(), *b.add(q * NR + j));
                            f(x, true) * f(y, false) + f(x, false) * f(y, true)
                        })
                        .sum();
                }
            }
        }
        assert!(check(drops_low).is_err());
        assert!(check(swaps).is_err());
    }

    /// The tensor entry points (whichever kernel this CPU runs) against f32 products of the
    /// widened weights: the activation's rounding to bf16 (AVX512-BF16 only) is the whole gap.
    #[test]
    fn products_with_bf16_weights_match_f32_on_the_rounded_weights() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (37, 50), &dev)?;
        let w = Tensor::randn(0f32, 1., (29, 50), &dev)?.to_dtype(DType::BF16)?;
        let wide = w.to_dtype(DType::F32)?;
        let tol = match Bf16Kernel::detect() {
            Bf16Kernel::Widen => 1e-5,
            // |x| ~ 1, rounded to bf16 (2^-9 relative), over 50 terms.
            Bf16Kernel::Avx512Bf16 => 0.15,
        };
        let diff: f32 = (matmul_wt(&x, &w)? - x.matmul(&wide.t()?)?)?
            .abs()?
            .max_all()?
            .to_scalar()?;
        assert!(diff < tol, "x·wᵀ off by {diff}");
        let cols = Tensor::randn(0f32, 1., (3, 50, 21), &dev)?;
        let want = wide.broadcast_as((3, 29, 50))?.matmul(&cols)?;
        let diff: f32 = (weight_matmul(&w, &cols)? - want)?
            .abs()?
            .max_all()?
            .to_scalar()?;
        assert!(diff < tol, "w·cols off by {diff}");
        Ok(())
    }

    /// A CPU without AVX512-BF16 gets the widening fallback (and says so), one with it the
    /// dot-product kernel.
    #[test]
    fn the_kernel_follows_the_cpu() {
        let without = Bf16Kernel::for_cpu(CpuFeatures { avx512bf16: false });
        assert_eq!(without, Bf16Kernel::Widen);
        assert!(without.describe().contains("no AVX512-BF16"));
        assert_eq!(
            Bf16Kernel::for_cpu(CpuFeatures { avx512bf16: true }),
            Bf16Kernel::Avx512Bf16
        );
    }
}
