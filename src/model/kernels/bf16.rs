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

/// Pairs of the depth one pass over the panels covers: the panels of a block (at most
/// [`MAX_COLS`] columns, 512 KiB) stay in the L2 cache and one micro-kernel's rows (16 KiB)
/// in the L1 while they are read.
pub const KC: usize = 512;
/// The most output columns one block packs panels for.
const MAX_COLS: usize = 256;

/// `x · wᵀ`: `x` `(m, k)` f32, `w` `(n, k)` bf16 (a linear layer's weight) -> `(m, n)` f32.
/// A layer packs its weight once ([`pack_weight`], [`matmul_packed`]); this packs it per call.
pub fn matmul_wt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    match Bf16Kernel::detect() {
        Bf16Kernel::Widen => x.matmul(&w.to_dtype(DType::F32)?.t()?),
        Bf16Kernel::Avx512Bf16 => {
            let (n, k) = w.dims2()?;
            matmul_packed(x, &pack_weight(w)?, (n, k), None)
        }
    }
}

/// A linear layer's bf16 weight `w` `(n, k)` in the layout [`matmul_packed`] reads: panels of
/// [`NR`] rows of `w`, each `kp = ceil(k / 2)` groups of [`NR`] bf16 pairs (`(panels, kp, NR)`
/// u32, the bytes of `w` plus the zeros that pad its last panel).
pub fn pack_weight(w: &Tensor) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    let w = w.contiguous()?;
    let (storage, layout) = w.storage_and_layout();
    let bits: &[u16] = match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(CpuStorage::BF16(v)), Some((a, b))) => bytemuck_bf16(&v[a..b]),
        _ => candle_core::bail!("packing a bf16 weight: not a contiguous bf16 CPU tensor"),
    };
    let out = pack_weight_bits(bits, n, k);
    drop(storage);
    Tensor::from_vec(out, (n.div_ceil(NR), k.div_ceil(2), NR), w.device())
}

/// [`pack_weight`] on the bits of a `(n, k)` weight.
fn pack_weight_bits(bits: &[u16], n: usize, k: usize) -> Vec<u32> {
    let (kp, panels) = (k.div_ceil(2), n.div_ceil(NR));
    let mut out = vec![0u32; panels * kp * NR];
    out.par_chunks_mut((kp * NR).max(1))
        .enumerate()
        .for_each(|(pi, panel)| {
            for jj in 0..NR.min(n - pi * NR) {
                let row = &bits[(pi * NR + jj) * k..][..k];
                for (q, two) in row.chunks(2).enumerate() {
                    panel[q * NR + jj] = pair(two[0], two.get(1).copied().unwrap_or(0));
                }
            }
        });
    out
}

/// The bits of bf16 values.
fn bytemuck_bf16(v: &[bf16]) -> &[u16] {
    // SAFETY: `bf16` is a `repr(transparent)` `u16`.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u16>(), v.len()) }
}

/// `x` `(m, k)` f32 times the transpose of the `(n, k)` weight `packed` by [`pack_weight`]
/// (plus `bias` `(n,)` on each row) -> `(m, n)` f32, on AVX512-BF16.
pub fn matmul_packed(
    x: &Tensor,
    packed: &Tensor,
    (n, k): (usize, usize),
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(
        packed,
        &Product {
            form: Form::XPacked { n, k },
            micro: avx512_micro(),
            bias: bias_values(bias)?,
        },
    )
}

/// `w · cols` for each sample: `w` `(o, k)` bf16 (a convolution's flattened weight), `cols`
/// `(b, k, p)` f32 (patches, or the pixels of a 1x1 convolution), plus `bias` `(o,)` on each
/// row -> `(b, o, p)` f32.
pub fn weight_matmul(w: &Tensor, cols: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match Bf16Kernel::detect() {
        Bf16Kernel::Widen => {
            let (b, o, k) = (cols.dim(0)?, w.dim(0)?, w.dim(1)?);
            let out = w
                .to_dtype(DType::F32)?
                .broadcast_as((b, o, k))?
                .matmul(cols)?;
            match bias {
                Some(bias) => out.broadcast_add(&bias.reshape((1, o, 1))?),
                None => Ok(out),
            }
        }
        Bf16Kernel::Avx512Bf16 => cols.contiguous()?.apply_op2_no_bwd(
            &w.contiguous()?,
            &Product {
                form: Form::WCols,
                micro: avx512_micro(),
                bias: bias_values(bias)?,
            },
        ),
    }
}

/// Whether [`conv_same`] runs a `k x k` convolution on planes `width` wide here: an odd kernel
/// on AVX512-BF16, rows a whole number of 16-lane vectors (narrower planes go through patches).
pub fn conv_same_applies(k: usize, width: usize) -> bool {
    Bf16Kernel::detect() == Bf16Kernel::Avx512Bf16 && k % 2 == 1 && width % 16 == 0
}

/// `conv2d(x, w)`, stride 1, padding `(k - 1) / 2`, no bias: `x` `(b, c, h, w)` f32, `w`
/// `(o, c, k, k)` bf16, where [`conv_same_applies`]. No patch matrix: the panels are packed
/// straight from a zero-padded band of input rows, each tap a shifted read. `bias` `(o,)` is
/// added to each output channel.
pub fn conv_same(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(
        &w.contiguous()?,
        &Product {
            form: Form::ConvSame,
            micro: avx512_micro(),
            bias: bias_values(bias)?,
        },
    )
}

/// `a · b` per batch item with both operands rounded to bf16 (f32 sums), for products of two
/// activations (attention's scores and their weighted values) where the weights are bf16:
/// `a` `(bt, m, k)`, `b` `(bt, k, n)` f32 -> `(bt, m, n)` f32, on AVX512-BF16.
pub fn matmul_rounded(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.contiguous()?.apply_op2_no_bwd(
        &b.contiguous()?,
        &Product {
            form: Form::Rounded,
            micro: avx512_micro(),
            bias: None,
        },
    )
}

/// The innermost step: `c[r][j] (+)= Σ_q a[r][q] · b[q][j]` over `kp` bf16 pairs, for rows
/// `r < rows` and columns `j < cols` of `c` (rows `ldc` apart), adding to what `c` holds when
/// `accumulate`. `a` holds [`MR`] row pointers (to their first pair; unaligned; rows past `rows`
/// repeat a valid one), `b` a panel of `kp` groups of [`NR`] pairs.
///
/// # Safety
/// Each `a[r]` is valid for `kp` reads of `u32`, `b` for `kp * NR`, `c` for `rows` rows of `cols`.
pub type Micro = unsafe fn(
    kp: usize,
    a: &[*const u32; MR],
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
);

/// Which product a [`Product`] op computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `x (m, k) · wᵀ` with `w (n, k)` packed by [`pack_weight`].
    XPacked { n: usize, k: usize },
    /// `w (o, k) · cols (b, k, p)`.
    WCols,
    /// `conv2d(x (b, c, h, w), w (o, c, k, k))`, stride 1, "same" padding.
    ConvSame,
    /// `a (bt, m, k) · b (bt, k, n)`, both f32, rounded as they are packed.
    Rounded,
}

/// A bf16-weight product as an op on (f32 activation, weight).
struct Product {
    form: Form,
    micro: Micro,
    /// Added to each output column (linear layers) or row (convolutions).
    bias: Option<Vec<f32>>,
}

/// A bias tensor's values, for [`Product`].
fn bias_values(bias: Option<&Tensor>) -> Result<Option<Vec<f32>>> {
    bias.map(|b| b.flatten_all()?.to_dtype(DType::F32)?.to_vec1())
        .transpose()
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
        if let Form::XPacked { n, k } = self.form {
            let packed = match (ws, wl.contiguous_offsets()) {
                (CpuStorage::U32(v), Some((a, b))) => &v[a..b],
                _ => candle_core::bail!("a bf16-weight product needs its packed weights"),
            };
            let (m, kx) = xl.shape().dims2()?;
            if kx != k || packed.len() != n.div_ceil(NR) * k.div_ceil(2) * NR {
                candle_core::bail!("bf16 product: x is {m}x{kx}, the packed weight {n}x{k}")
            }
            if self.bias.as_ref().is_some_and(|b| b.len() != n) {
                candle_core::bail!("bf16 product: a bias that is not {n} long")
            }
            let out = x_packed(x, packed, (m, n, k), self.bias.as_deref(), self.micro);
            return Ok((CpuStorage::F32(out), Shape::from((m, n))));
        }
        if self.form == Form::Rounded {
            let b = super::contiguous_f32(ws, wl, "a bf16-rounded product")?;
            let (bt, m, k) = xl.shape().dims3()?;
            let (bt2, k2, n) = wl.shape().dims3()?;
            if (bt2, k2) != (bt, k) {
                candle_core::bail!("bf16 product: {:?} times {:?}", xl.dims(), wl.dims())
            }
            let out = rounded(x, b, (bt, m, k, n), self.micro);
            return Ok((CpuStorage::F32(out), Shape::from((bt, m, n))));
        }
        let w = match (ws, wl.contiguous_offsets()) {
            (CpuStorage::BF16(v), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!("a bf16-weight product needs contiguous bf16 weights"),
        };
        let o = wl.dims()[0];
        if self.bias.as_ref().is_some_and(|b| b.len() != o) {
            candle_core::bail!("bf16 product: a bias that is not {o} long")
        }
        if self.form == Form::ConvSame {
            let (b, c, h, wd) = xl.shape().dims4()?;
            let (o, c2, k, k2) = wl.shape().dims4()?;
            if c2 != c || k2 != k || k % 2 == 0 || wd % 16 != 0 {
                candle_core::bail!("bf16 conv: input {:?}, weight {:?}", xl.dims(), wl.dims())
            }
            let out = conv(
                x,
                (b, c, h, wd),
                (w, o, k),
                self.bias.as_deref(),
                self.micro,
            );
            return Ok((CpuStorage::F32(out), Shape::from((b, o, h, wd))));
        }
        let (o, k) = wl.shape().dims2()?;
        let (b, kc, p) = xl.shape().dims3()?;
        if kc != k {
            candle_core::bail!("bf16 product: w is {o}x{k}, cols are {b}x{kc}x{p}")
        }
        let out = w_cols(w, x, (b, o, k, p), self.bias.as_deref(), self.micro);
        Ok((CpuStorage::F32(out), Shape::from((b, o, p))))
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

/// Whether the packing below runs on AVX512-BF16's conversions (else in plain Rust; the two
/// give the same bits but for subnormals, which the instructions flush to zero).
fn simd_packing() -> bool {
    static SIMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SIMD.get_or_init(|| CpuFeatures::this_cpu().avx512bf16)
}

/// `out[q] = pair(round(x[2q]), round(x[2q + 1]))` (past the end: 0): a row along the depth
/// as pairs, `out.len() == x.len().div_ceil(2)`.
fn pack_along(x: &[f32], out: &mut [std::mem::MaybeUninit<u32>]) {
    assert_eq!(out.len(), x.len().div_ceil(2));
    #[cfg(target_arch = "x86_64")]
    if simd_packing() {
        // SAFETY: the CPU has the instructions; `x` and `out` have the lengths checked above
        // (every element of `out` is written).
        unsafe { return avx512::pack_along(x.as_ptr(), x.len(), out.as_mut_ptr().cast()) }
    }
    for (v, two) in out.iter_mut().zip(x.chunks(2)) {
        v.write(pair(round(two[0]), two.get(1).map_or(0, |&h| round(h))));
    }
}

/// A pointer that parallel jobs write disjoint blocks through.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: each job writes its own block of the output (see the callers).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The element `i` past the start.
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// Runs `f` on each job, across the threads (in turn inside a split batch's share).
fn for_each_job<J: Send + Sync + Copy>(jobs: &[J], f: impl Fn(J) + Sync) {
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
fn blocks(rows: usize, cols: usize, images: usize, max_rows: usize) -> (usize, usize) {
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
/// of `a` at `a + r * lda` (`kp` pairs), and `panels(q0, kc, scratch)` giving the panels of
/// pairs `q0..q0 + kc` of every column: a pointer to the first and the distance between two.
///
/// # Safety
/// `a` valid for `rows` rows of `kp` pairs, `lda` apart; the panels for `kc * NR` pairs each;
/// `c` for `rows` rows of `cols` (`ldc` apart) no other thread touches.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    kp: usize,
    (rows, cols): (usize, usize),
    (a, lda): (*const u32, usize),
    mut panels: impl FnMut(usize, usize, &mut Vec<u32>) -> (*const u32, usize),
    (c, ldc): (*mut f32, usize),
    micro: Micro,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    if kp == 0 {
        for r in 0..rows {
            std::ptr::write_bytes(c.add(r * ldc), 0, cols);
        }
        return;
    }
    let mut scratch = Vec::new();
    for q0 in (0..kp).step_by(KC) {
        let kc = KC.min(kp - q0);
        let (b, panel_step) = panels(q0, kc, &mut scratch);
        for r0 in (0..rows).step_by(MR) {
            let nr = MR.min(rows - r0);
            let ar: [*const u32; MR] =
                std::array::from_fn(|r| a.add((r0 + r.min(nr - 1)) * lda + q0));
            for (pi, j0) in (0..cols).step_by(NR).enumerate() {
                let nc = NR.min(cols - j0);
                micro(
                    kc,
                    &ar,
                    b.add(pi * panel_step),
                    c.add(r0 * ldc + j0),
                    ldc,
                    nr,
                    nc,
                    q0 > 0,
                );
            }
        }
    }
}

/// Fills `scratch` with the panels of `cols` columns for pairs `q0..q0 + kc` (`depth` rows
/// in all): column `j` of depth row `t` is read at `row(t) + offset(j)`, where the 16 columns
/// from a multiple of 16 lie one after another. Returns [`block`]'s pointer and panel step.
fn pack_panels(
    scratch: &mut Vec<u32>,
    (cols, depth): (usize, usize),
    (q0, kc): (usize, usize),
    row: impl Fn(usize) -> *const f32,
    offset: impl Fn(usize) -> usize,
) -> (*const u32, usize) {
    let panels = cols.div_ceil(NR);
    scratch.resize(panels * kc * NR, 0);
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
        // The panel's two runs of 16 columns: (offset, length).
        let runs: [(usize, usize); 2] = std::array::from_fn(|h| {
            let j = pi * NR + 16 * h;
            if j < cols {
                (offset(j), 16.min(cols - j))
            } else {
                (0, 0)
            }
        });
        let dst = scratch[pi * kc * NR..][..kc * NR].as_mut_ptr();
        // SAFETY: the caller's `row` and `offset` give `len` readable elements per run; `dst`
        // has `kc * NR` pairs.
        unsafe { pack_panel(&rows, runs, dst) }
    }
    (scratch.as_ptr(), kc * NR)
}

/// One panel: `out[q * NR + 16h + i] = pair(rows[q][0][o_h + i], rows[q][1][o_h + i])` rounded,
/// for the runs `(o_h, len_h)`.
///
/// # Safety
/// Each non-null row pointer is valid for reads at each run; `out` for `rows.len() * NR`.
unsafe fn pack_panel(rows: &[[*const f32; 2]], runs: [(usize, usize); 2], out: *mut u32) {
    #[cfg(target_arch = "x86_64")]
    if simd_packing() {
        return avx512::pack_panel(rows, runs, out);
    }
    for (q, &[lo, hi]) in rows.iter().enumerate() {
        for (h, &(off, len)) in runs.iter().enumerate() {
            for i in 0..len {
                let hi = if hi.is_null() {
                    0
                } else {
                    round(*hi.add(off + i))
                };
                *out.add(q * NR + 16 * h + i) = pair(round(*lo.add(off + i)), hi);
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
fn output(len: usize) -> (Vec<f32>, Out) {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = Out(out.spare_capacity_mut().as_mut_ptr().cast());
    (out, dst)
}

/// `x (m, k) · wᵀ (+ bias)` from the packed weight: blocks of rows of `x` rounded to pairs,
/// times the panels as they are.
fn x_packed(
    x: &[f32],
    packed: &[u32],
    (m, n, k): (usize, usize, usize),
    bias: Option<&[f32]>,
    micro: Micro,
) -> Vec<f32> {
    let kp = k.div_ceil(2);
    let (mut out, dst) = output(m * n);
    let (rb, cb) = blocks(m, n, 1, 256);
    let jobs: Vec<(usize, usize)> = (0..m)
        .step_by(rb)
        .flat_map(|r0| (0..n).step_by(cb).map(move |c0| (r0, c0)))
        .collect();
    for_each_job(&jobs, |(r0, c0)| {
        let (rows, cols) = (rb.min(m - r0), cb.min(n - c0));
        let a = rows_along(&x[r0 * k..], rows, k);
        let first = &packed[(c0 / NR) * kp * NR..];
        let c = dst.at(r0 * n + c0);
        // SAFETY: `a` holds `rows` rows of `kp`; panel `c0 / NR + i` starts `i * kp * NR` after
        // `first` and holds `kp * NR` pairs; the job writes rows `r0..` columns `c0..` of `out`
        // (`m x n`), which no other job does.
        unsafe {
            block(
                kp,
                (rows, cols),
                (a.as_ptr(), kp),
                |q0, _, _| (first.as_ptr().add(q0 * NR), kp * NR),
                (c, n),
                micro,
            );
            if let Some(bias) = bias {
                add_bias(c, n, (rows, cols), &bias[c0..], false);
            }
        }
    });
    // SAFETY: the jobs cover every row and column.
    unsafe { out.set_len(m * n) };
    out
}

/// The first `rows` rows of `x` (`k` long) as rows of bf16 pairs ([`pack_along`]).
fn rows_along(x: &[f32], rows: usize, k: usize) -> Vec<u32> {
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

/// `a (bt, m, k) · b (bt, k, n)` per batch item: rows of `a` rounded to pairs per block, the
/// panels of `b` rounded as they are packed.
fn rounded(
    a: &[f32],
    b: &[f32],
    (bt, m, k, n): (usize, usize, usize, usize),
    micro: Micro,
) -> Vec<f32> {
    let kp = k.div_ceil(2);
    let (mut out, dst) = output(bt * m * n);
    let (rb, cb) = blocks(m, n, bt, 256);
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
                (rows, cols),
                (rows_a.as_ptr(), kp),
                |q0, kc, scratch| {
                    let row = |t: usize| bs.add(t * n + c0);
                    pack_panels(scratch, (cols, k), (q0, kc), row, |j| j)
                },
                (c, n),
                micro,
            )
        }
    });
    // SAFETY: the jobs cover every item, row and column.
    unsafe { out.set_len(bt * m * n) };
    out
}

/// Rows of pairs of a bf16 weight `(o, k)`: the weight itself when `k` is even (each two bf16
/// of a row are one pair), else a copy with each row padded by a zero.
fn weight_rows(w: &[bf16], o: usize, k: usize) -> std::borrow::Cow<'_, [u32]> {
    let kp = k.div_ceil(2);
    if k % 2 == 0 && w.as_ptr().cast::<u32>().is_aligned() {
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

/// The jobs of a weight-times-pixels product: `(sample, first row, first column)`, and the
/// block's size.
fn pixel_jobs(b: usize, o: usize, p: usize) -> (Vec<(usize, usize, usize)>, usize, usize) {
    let (rb, cb) = blocks(o, p, b, usize::MAX);
    let jobs = (0..b)
        .flat_map(|s| {
            (0..o)
                .step_by(rb)
                .flat_map(move |r0| (0..p).step_by(cb).map(move |c0| (s, r0, c0)))
        })
        .collect();
    (jobs, rb, cb)
}

/// `w (o, k) · cols (b, k, p) (+ bias)` per sample: the weight's rows as they are, the panels
/// of `cols` rounded to bf16 pairs as they are packed.
fn w_cols(
    w: &[bf16],
    cols: &[f32],
    (b, o, k, p): (usize, usize, usize, usize),
    bias: Option<&[f32]>,
    micro: Micro,
) -> Vec<f32> {
    let kp = k.div_ceil(2);
    let a = weight_rows(w, o, k);
    let (mut out, dst) = output(b * o * p);
    let (jobs, rb, cb) = pixel_jobs(b, o, p);
    for_each_job(&jobs, |(s, r0, c0)| {
        let (rows, ncols) = (rb.min(o - r0), cb.min(p - c0));
        let x = cols[s * k * p..(s + 1) * k * p].as_ptr();
        let c = dst.at((s * o + r0) * p + c0);
        // SAFETY: `a` holds `o` rows of `kp`; depth row `t` of sample `s` starts at `x + t * p`
        // and its columns `c0..c0 + ncols` are read; the job writes rows `r0..` columns `c0..`
        // of sample `s`'s `(o, p)` plane, which no other job does.
        unsafe {
            block(
                kp,
                (rows, ncols),
                (a.as_ptr().add(r0 * kp), kp),
                |q0, kc, scratch| {
                    let row = |t: usize| x.add(t * p + c0);
                    pack_panels(scratch, (ncols, k), (q0, kc), row, |j| j)
                },
                (c, p),
                micro,
            );
            if let Some(bias) = bias {
                add_bias(c, p, (rows, ncols), &bias[r0..], true);
            }
        }
    });
    // SAFETY: the jobs cover every sample, row and column.
    unsafe { out.set_len(b * o * p) };
    out
}

/// The implicit-patch convolution ([`conv_same`]): depth row `t = (ci, ky, kx)` of the patch
/// matrix (the weight's own order) at pixel `j` is the padded input at `ci`, shifted by
/// `(ky, kx)`; a block of pixels packs its panels from a padded band of the rows it covers.
fn conv(
    x: &[f32],
    (b, c, h, wd): (usize, usize, usize, usize),
    (w, o, k): (&[bf16], usize, usize),
    bias: Option<&[f32]>,
    micro: Micro,
) -> Vec<f32> {
    let depth = c * k * k;
    let kp = depth.div_ceil(2);
    let a = weight_rows(w, o, depth);
    let p = h * wd;
    let (mut out, dst) = output(b * o * p);
    let (jobs, rb, cb) = pixel_jobs(b, o, p);
    let wp = wd + k - 1;
    for_each_job(&jobs, |(s, r0, c0)| {
        let (rows, ncols) = (rb.min(o - r0), cb.min(p - c0));
        // The input rows this block's pixels read, zero-padded.
        let (y0, y1) = (c0 / wd, (c0 + ncols - 1) / wd + 1);
        let (padded, plane) = super::band::padded_band(x, (c, h, wd), k, (s, y0, y1), 0);
        let row = |t: usize| {
            let (ci, ky, kx) = (t / (k * k), t / k % k, t % k);
            padded[ci * plane + ky * wp + kx..].as_ptr()
        };
        // Pixel `j` of the block, in its padded row.
        let offset = |j: usize| (c0 + j) / wd * wp - y0 * wp + (c0 + j) % wd;
        let c = dst.at((s * o + r0) * p + c0);
        // SAFETY: `a` holds `o` rows of `kp`; the job writes rows `r0..` pixels `c0..` of
        // sample `s`'s `(o, p)` plane, which no other job does; a run of 16 pixels from a
        // multiple of 16 lies in one output row (`wd % 16 == 0`, `c0 % 32 == 0`), so its reads
        // stay inside that row of the padded band (`wp` long).
        unsafe {
            block(
                kp,
                (rows, ncols),
                (a.as_ptr().add(r0 * kp), kp),
                |q0, kc, scratch| pack_panels(scratch, (ncols, depth), (q0, kc), row, offset),
                (c, p),
                micro,
            );
            if let Some(bias) = bias {
                add_bias(c, p, (rows, ncols), &bias[r0..], true);
            }
        }
    });
    // SAFETY: the jobs cover every sample, row and pixel.
    unsafe { out.set_len(b * o * p) };
    out
}

/// `vdpbf16ps` in plain Rust: per lane, the high pair's product then the low pair's is added
/// to the running f32 sum (each addition rounded; the products of two bf16 are exact in f32).
/// Denormal inputs are not flushed, as the instruction would: sums of weights and activations
/// do not reach them.
///
/// # Safety
/// As [`Micro`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn micro_emulated(
    kp: usize,
    a: &[*const u32; MR],
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    let half = |v: u32, hi: bool| f32::from_bits(if hi { v & 0xffff_0000 } else { v << 16 });
    for (r, &row) in a.iter().enumerate().take(rows) {
        for j in 0..cols {
            let dst = c.add(r * ldc + j);
            let mut acc = if accumulate { *dst } else { 0f32 };
            for q in 0..kp {
                let (x, y) = (row.add(q).read_unaligned(), *b.add(q * NR + j));
                acc += half(x, true) * half(y, true);
                acc += half(x, false) * half(y, false);
            }
            *dst = acc;
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
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn micro(
        kp: usize,
        a: &[*const u32; MR],
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        inner(kp, a, b, c, ldc, rows, cols, accumulate)
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn inner(
        kp: usize,
        a: &[*const u32; MR],
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
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

    /// [`super::pack_panel`] on the CPU's rounding (`vcvtneps2bf16`).
    ///
    /// # Safety
    /// AVX512F and AVX512-BF16; as [`super::pack_panel`].
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn pack_panel(rows: &[[*const f32; 2]], runs: [(usize, usize); 2], out: *mut u32) {
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
                _mm512_mask_storeu_epi32(out.add(q * NR + 16 * h) as *mut i32, m, v);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// bf16-rounded, as f64.
    fn r(v: f32) -> f64 {
        bf16::from_f32(v).to_f32() as f64
    }

    /// `x (m, k) · wᵀ` of bf16-rounded operands in f64.
    fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        (0..m * n)
            .map(|i| {
                let (row, col) = (i / n, i % n);
                (0..k)
                    .map(|j| r(x[row * k + j]) * r(w[col * k + j]))
                    .sum::<f64>() as f32
            })
            .collect()
    }

    /// A stride-1 "same" convolution of bf16-rounded operands in f64.
    fn reference_conv(
        x: &[f32],
        (b, c, h, wd): (usize, usize, usize, usize),
        w: &[f32],
        o: usize,
        k: usize,
    ) -> Vec<f32> {
        let p = (k - 1) / 2;
        let mut out = vec![0f32; b * o * h * wd];
        for s in 0..b {
            for co in 0..o {
                for y in 0..h {
                    for xx in 0..wd {
                        let mut acc = 0f64;
                        for ci in 0..c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (iy, ix) = (y + ky, xx + kx);
                                    if iy < p || ix < p || iy - p >= h || ix - p >= wd {
                                        continue;
                                    }
                                    let v = x[((s * c + ci) * h + iy - p) * wd + ix - p];
                                    acc += r(v) * r(w[((co * c + ci) * k + ky) * k + kx]);
                                }
                            }
                        }
                        out[((s * o + co) * h + y) * wd + xx] = acc as f32;
                    }
                }
            }
        }
        out
    }

    /// The largest difference from `want`, relative to the sum of magnitudes a product adds up
    /// (f32 accumulation of `k` terms errs by about `k * 2^-24` of it).
    fn worst(got: &[f32], want: &[f32], scale: f32) -> f32 {
        assert_eq!(got.len(), want.len());
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

    fn to_bf16(v: &[f32]) -> Vec<bf16> {
        v.iter().map(|&v| bf16::from_f32(v)).collect()
    }

    /// The three packed forms with a given micro-kernel, against the f64 reference, on shapes
    /// with remainders everywhere (rows not a multiple of MR, columns of NR, odd depths, more
    /// than one depth slice of KC pairs).
    fn check(micro: Micro) -> std::result::Result<(), String> {
        for &(m, n, k) in &[
            (1, 1, 1),
            (13, 45, 37),
            (70, 33, 64),
            (8, 32, 2),
            (9, 40, 1100),
        ] {
            let (x, w) = (random(m * k, 1), random(n * k, 2));
            let wb = to_bf16(&w);
            let want = reference(&x, &w, m, n, k);
            let packed = pack_weight_bits(bytemuck_bf16(&wb), n, k);
            // With a bias on each column.
            let bias = random(n, 7);
            let got = x_packed(&x, &packed, (m, n, k), Some(&bias), micro);
            let unbiased: Vec<f32> = got
                .iter()
                .enumerate()
                .map(|(i, v)| v - bias[i % n])
                .collect();
            let e = worst(&unbiased, &want, k as f32);
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
            // And as a product of two activations: a = x twice, b = wᵀ twice.
            let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            let (a2, b2) = ([&x[..], &x[..]].concat(), [&wt[..], &wt[..]].concat());
            let got = rounded(&a2, &b2, (2, m, k, n), micro);
            for s in 0..2 {
                let e = worst(&got[s * m * n..(s + 1) * m * n], &want, k as f32);
                if e > 1e-6 {
                    return Err(format!("a·b {m}x{k}x{n}, item {s}: off by {e}"));
                }
            }
            let got = w_cols(&wb, &cols, (2, n, k, m), None, micro);
            for s in 0..2 {
                let plane = &got[s * n * m..(s + 1) * n * m];
                let t: Vec<f32> = (0..m * n).map(|i| plane[(i % n) * m + i / n]).collect();
                let e = worst(&t, &want, k as f32);
                if e > 1e-6 {
                    return Err(format!("w·cols {n}x{m}x{k}, sample {s}: off by {e}"));
                }
            }
        }
        // Convolutions: an odd depth (3 channels), 1x1 and 5x5 kernels, rows of 16 and 48
        // (blocks that start mid-row), a depth of more than KC pairs.
        for &(b, c, h, wd, o, k) in &[
            (2, 3, 5, 16, 13, 3),
            (1, 4, 3, 32, 9, 1),
            (1, 2, 4, 16, 3, 5),
            (2, 6, 7, 48, 70, 3),
            (1, 120, 2, 16, 10, 3),
        ] {
            let (x, w) = (random(b * c * h * wd, 3), random(o * c * k * k, 4));
            let want = reference_conv(&x, (b, c, h, wd), &w, o, k);
            // With a bias on each channel.
            let bias = random(o, 8);
            let got = conv(&x, (b, c, h, wd), (&to_bf16(&w), o, k), Some(&bias), micro);
            let unbiased: Vec<f32> = (got.iter().enumerate())
                .map(|(i, v)| v - bias[i / (h * wd) % o])
                .collect();
            let e = worst(&unbiased, &want, (c * k * k) as f32);
            if e > 1e-6 {
                return Err(format!("conv {b}x{c}x{h}x{wd} -> {o}, {k}x{k}: off by {e}"));
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

    /// A kernel that drops the second bf16 of each pair, swaps the halves of one operand, or
    /// forgets what earlier depth slices summed, is caught by the same check.
    #[test]
    fn a_broken_kernel_fails_the_check() {
        /// `micro_emulated` with each pair's two products taken by `f`, summing from zero
        /// when `restart`.
        unsafe fn with(
            (kp, a, b, c, ldc, rows, cols, accumulate): (
                usize,
                &[*const u32; MR],
                *const u32,
                *mut f32,
                usize,
                usize,
                usize,
                bool,
            ),
            restart: bool,
            f: impl Fn(u32, u32) -> f32,
        ) {
            for (r, &row) in a.iter().enumerate().take(rows) {
                for j in 0..cols {
                    let dst = c.add(r * ldc + j);
                    let start = if accumulate && !restart { *dst } else { 0. };
                    *dst = start
                        + (0..kp)
                            .map(|q| f(row.add(q).read_unaligned(), *b.add(q * NR + j)))
                            .sum::<f32>();
                }
            }
        }
        fn h(v: u32, hi: bool) -> f32 {
            f32::from_bits(if hi { v & 0xffff_0000 } else { v << 16 })
        }
        macro_rules! broken {
            ($name:ident, $restart:expr, $f:expr) => {
                #[allow(clippy::too_many_arguments)]
                unsafe fn $name(
                    kp: usize,
                    a: &[*const u32; MR],
                    b: *const u32,
                    c: *mut f32,
                    ldc: usize,
                    rows: usize,
                    cols: usize,
                    acc: bool,
                ) {
                    with((kp, a, b, c, ldc, rows, cols, acc), $restart, $f)
                }
            };
        }
        broken!(drops_low, false, |x, y| h(x, true) * h(y, true));
        broken!(swaps, false, |x, y| h(x, true) * h(y, false)
            + h(x, false) * h(y, true));
        broken!(restarts, true, |x, y| h(x, true) * h(y, true)
            + h(x, false) * h(y, false));
        assert!(check(drops_low).is_err());
        assert!(check(swaps).is_err());
        assert!(check(restarts).is_err());
    }

    /// The packing's two ways of rounding (the CPU's conversions where present, plain Rust)
    /// give the same bits: ties to even, infinities, NaN staying NaN, runs of every length.
    #[test]
    fn packing_rounds_like_half() {
        let mut v = random(64, 5);
        v.extend([
            f32::from_bits(0x3f80_8000), // a tie: down to even
            f32::from_bits(0x3f81_8000), // a tie: up to even
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -0.0,
            f32::NAN,
        ]);
        let (lo, hi) = (v.as_ptr(), v[10..].as_ptr());
        for len in [0, 1, 7, 15, 16] {
            for (off, with_hi) in [(0, true), (55 - len.min(55), true), (3, false)] {
                let rows = [[lo, if with_hi { hi } else { std::ptr::null() }]; 3];
                let runs = [(off, len), (off + 1, 16.min(len + 1))];
                let mut got = vec![0u32; 3 * NR];
                // SAFETY: every run stays inside `v` (71 long), `got` holds 3 panels' rows.
                unsafe { pack_panel(&rows, runs, got.as_mut_ptr()) };
                for (h, &(o, l)) in runs.iter().enumerate() {
                    for i in 0..l {
                        let hi = if with_hi { round(v[10 + o + i]) } else { 0 };
                        let want = pair(round(v[o + i]), hi);
                        assert_eq!(got[2 * NR + 16 * h + i], want, "run {h}, {len} from {off}");
                    }
                }
            }
        }
        for n in [0, 1, 15, 16, 17, 31, 33, 71] {
            let x = &v[..n];
            let mut along = vec![std::mem::MaybeUninit::new(0u32); n.div_ceil(2)];
            pack_along(x, &mut along);
            // SAFETY: every element was initialised.
            let along: Vec<u32> = along.iter().map(|v| unsafe { v.assume_init() }).collect();
            for (q, &g) in along.iter().enumerate() {
                let hi = x.get(2 * q + 1).map_or(0, |&h| round(h));
                assert_eq!(g, pair(round(x[2 * q]), hi), "along, {n}: {q}");
            }
        }
        let nan = round(f32::NAN);
        assert!(bf16::from_bits(nan).is_nan());
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
        let max_diff = |a: Tensor, b: Tensor| -> Result<f32> {
            (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar()
        };
        let diff = max_diff(matmul_wt(&x, &w)?, x.matmul(&wide.t()?)?)?;
        assert!(diff < tol, "x·wᵀ off by {diff}");
        let cols = Tensor::randn(0f32, 1., (3, 50, 21), &dev)?;
        let want = wide.broadcast_as((3, 29, 50))?.matmul(&cols)?;
        let diff = max_diff(weight_matmul(&w, &cols, None)?, want)?;
        assert!(diff < tol, "w·cols off by {diff}");
        if Bf16Kernel::detect() == Bf16Kernel::Avx512Bf16 {
            // Both operands rounded: twice the activation's rounding.
            let a = Tensor::randn(0f32, 1., (2, 9, 40), &dev)?;
            let b = Tensor::randn(0f32, 1., (2, 40, 33), &dev)?;
            let diff = max_diff(matmul_rounded(&a, &b)?, a.matmul(&b)?)?;
            assert!(diff < 2. * tol, "a·b off by {diff}");
        }
        if conv_same_applies(3, 16) {
            let x = Tensor::randn(0f32, 1., (2, 6, 5, 16), &dev)?;
            let w = Tensor::randn(0f32, 0.3, (7, 6, 3, 3), &dev)?.to_dtype(DType::BF16)?;
            let want = x.conv2d(&w.to_dtype(DType::F32)?, 1, 1, 1, 1)?;
            let diff = max_diff(conv_same(&x, &w, None)?, want)?;
            assert!(diff < tol, "conv off by {diff}");
        }
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

#[cfg(test)]
mod timing {
    use super::*;
    use candle_core::Device;

    fn time<F: FnMut()>(mut f: F) -> f64 {
        f();
        let t = std::time::Instant::now();
        for _ in 0..3 {
            f();
        }
        t.elapsed().as_secs_f64() / 3.
    }

    #[test]
    #[ignore]
    fn kernel_speed() {
        let dev = Device::Cpu;
        for &(m, n, k) in &[
            (3072, 320, 320),
            (3072, 2560, 320),
            (3072, 320, 1280),
            (768, 640, 640),
            (231, 320, 768),
        ] {
            let x = Tensor::randn(0f32, 1., (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1., (n, k), &dev).unwrap();
            let wt = w.t().unwrap().contiguous().unwrap();
            let wb = w.to_dtype(DType::BF16).unwrap();
            let pk = pack_weight(&wb).unwrap();
            let f = time(|| {
                x.matmul(&wt).unwrap();
            });
            let b = time(|| {
                matmul_packed(&x, &pk, (n, k), None).unwrap();
            });
            let g = 2. * (m * n * k) as f64 / 1e9;
            eprintln!(
                "x_wt {m}x{n}x{k}: f32 {:.1} GF/s, bf16 {:.1} GF/s",
                g / f,
                g / b
            );
        }
        for &(b, o, k, p) in &[
            (3, 320, 2880, 1024),
            (3, 1280, 11520, 16),
            (3, 320, 320, 1024),
        ] {
            let cols = Tensor::randn(0f32, 1., (b, k, p), &dev).unwrap();
            let w = Tensor::randn(0f32, 1., (o, k), &dev).unwrap();
            let wb = w.to_dtype(DType::BF16).unwrap();
            let f = time(|| {
                w.broadcast_as((b, o, k)).unwrap().matmul(&cols).unwrap();
            });
            let t = time(|| {
                weight_matmul(&wb, &cols, None).unwrap();
            });
            let g = 2. * (b * o * k * p) as f64 / 1e9;
            eprintln!(
                "w_cols {b}x{o}x{k}x{p}: f32 {:.1} GF/s, bf16 {:.1} GF/s",
                g / f,
                g / t
            );
        }
        for &(b, c, o, hw) in &[
            (3, 320, 320, 32),
            (3, 640, 640, 16),
            (1, 128, 128, 256),
            (1, 512, 512, 64),
            (1, 256, 256, 128),
        ] {
            let x = Tensor::randn(0f32, 1., (b, c, hw, hw), &dev).unwrap();
            let w = Tensor::randn(0f32, 1., (o, c, 3, 3), &dev).unwrap();
            let wb = w.to_dtype(DType::BF16).unwrap();
            let bias = Tensor::zeros(o, DType::F32, &dev).unwrap();
            let f = time(|| {
                crate::model::kernels::shifted_conv::conv_same(&x, &w, &bias).unwrap();
            });
            let t = time(|| {
                conv_same(&x, &wb, None).unwrap();
            });
            let g = 2. * (b * o * c * 9 * hw * hw) as f64 / 1e9;
            eprintln!(
                "conv {b}x{c}->{o} {hw}x{hw}: f32 {:.1} GF/s, bf16 {:.1} GF/s",
                g / f,
                g / t
            );
        }
    }
}
