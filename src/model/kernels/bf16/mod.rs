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
//! On AVX512-BF16 every product is one loop nest (`products::block`): depth slices of [`KC`]
//! pairs, blocks of [`MR`] rows times panels of [`NR`] columns, the innermost step (the
//! micro-kernel) passed in: the real one (`avx512`), or `micro_emulated`, which follows the
//! instruction's definition in plain Rust so that the packing and the loops are checked on any
//! CPU. Four forms feed it (`products`): linear layers, whose weights are packed into panels once
//! as the layer loads ([`pack_weight`]); weights times patches or pixels (1x1 and strided
//! convolutions); stride-1 convolutions with no patch matrix, their panels packed straight from
//! a zero-padded band of input rows ([`conv_same`]); and attention's products of two
//! activations, both rounded ([`matmul_rounded`]), or attention whole, its scores never stored
//! ([`attention`]). Activations are rounded as they are packed
//! (`pack`); sums stay f32, and biases are added block by block.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

mod attention;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod pack;
mod products;
#[cfg(test)]
mod tests;

use pack::{bytemuck_bf16, pack_weight_bits};
use products::{conv, rounded, w_cols, x_packed};

/// Rows of the output one call of the wide micro-kernel computes.
pub const MR: usize = 8;
/// Columns of the output one call of the wide micro-kernel computes (two 16-lane vectors); the
/// panels of packed linear weights are this wide.
pub const NR: usize = 32;
/// The most rows a micro-kernel computes: the narrow one's 16 (of one 16-lane vector each),
/// for outputs 16 columns wide (a 4x4 plane), where half of a wide panel would be padding.
pub const MR_MAX: usize = 16;

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
            kernels: Kernels::avx512(),
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
                kernels: Kernels::avx512(),
                bias: bias_values(bias)?,
            },
        ),
    }
}

/// Whether [`conv_same`] runs a `k x k` convolution on planes `width` wide here: an odd kernel
/// on AVX512-BF16, rows a whole number of 16-lane vectors (narrower planes go through patches).
pub fn conv_same_applies(k: usize, width: usize) -> bool {
    Bf16Kernel::detect() == Bf16Kernel::Avx512Bf16 && k % 2 == 1 && width.is_multiple_of(16)
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
            kernels: Kernels::avx512(),
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
            kernels: Kernels::avx512(),
            bias: None,
        },
    )
}

/// `softmax(scale · q kᵀ) v` per batch item in one pass on AVX512-BF16 (inference): `q`
/// `(bh, sq, dh)`, `k` `(bh, sk, dh)`, `v` `(bh, sk, dv)` f32 -> `(bh, sq, dv)` f32. Blocks of
/// query rows take their scores, exponentials and weighted sums in turn, the scores in cache:
/// no score matrix is allocated. Both products round their operands to bf16 (the scores'
/// exponentials too) and sum in f32; the softmax is f32.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    if Bf16Kernel::detect() != Bf16Kernel::Avx512Bf16 {
        candle_core::bail!("bf16 attention runs on AVX512-BF16 only; this CPU widens to f32")
    }
    q.contiguous()?.apply_op3_no_bwd(
        &k.contiguous()?,
        &v.contiguous()?,
        &Attention {
            scale: scale as f32,
            kernels: Kernels::avx512(),
        },
    )
}

/// [`attention`] as an op.
struct Attention {
    scale: f32,
    kernels: Kernels,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "bf16-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = super::contiguous_f32(qs, ql, "bf16 attention's queries")?;
        let k = super::contiguous_f32(ks, kl, "bf16 attention's keys")?;
        let v = super::contiguous_f32(vs, vl, "bf16 attention's values")?;
        let ((bh, sq, dh), (bk, sk, dk), (bv, sv, dv)) = (
            ql.shape().dims3()?,
            kl.shape().dims3()?,
            vl.shape().dims3()?,
        );
        if (bk, dk) != (bh, dh) || (bv, sv) != (bh, sk) || sk == 0 || dh == 0 {
            candle_core::bail!(
                "bf16 attention: queries {:?}, keys {:?}, values {:?}",
                ql.dims(),
                kl.dims(),
                vl.dims()
            )
        }
        let dims = (bh, sq, sk, dh, dv);
        let out = attention::fused((q, k, v), dims, self.scale, self.kernels);
        Ok((CpuStorage::F32(out), Shape::from((bh, sq, dv))))
    }
}

/// The innermost step: `c[r][j] (+)= Σ_q a[r][q] · b[q][j]` over `kp` bf16 pairs, for rows
/// `r < rows` and columns `j < cols` of `c` (rows `ldc` apart), adding to what `c` holds when
/// `accumulate`. `a` holds the kernel's row pointers (to their first pair; unaligned; rows past
/// `rows` repeat a valid one), `b` a panel of `kp` groups of the kernel's column count of pairs.
///
/// # Safety
/// Each `a[r]` is valid for `kp` reads of `u32`, `b` for `kp` groups, `c` for `rows` rows of
/// `cols`.
pub type Micro = unsafe fn(&Tile);

/// One call of a micro-kernel ([`Micro`]).
pub struct Tile<'a> {
    pub kp: usize,
    pub a: &'a [*const u32; MR_MAX],
    pub b: *const u32,
    pub c: *mut f32,
    pub ldc: usize,
    pub rows: usize,
    pub cols: usize,
    pub accumulate: bool,
}

/// A micro-kernel and the block it computes (`mr` rows, `nr` columns).
#[derive(Clone, Copy)]
pub struct Kernel {
    pub micro: Micro,
    pub mr: usize,
    pub nr: usize,
}

/// The two micro-kernels a product chooses between.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// [`MR`] x [`NR`].
    pub wide: Kernel,
    /// [`MR_MAX`] x 16, for blocks of at most 16 columns.
    pub narrow: Kernel,
}

impl Kernels {
    /// The kernel for blocks `cols` wide.
    pub fn for_cols(self, cols: usize) -> Kernel {
        if cols <= 16 {
            self.narrow
        } else {
            self.wide
        }
    }

    /// The emulated kernels ([`micro_emulated`]), for any CPU.
    pub fn emulated() -> Self {
        Self {
            wide: Kernel {
                micro: micro_emulated::<MR, NR>,
                mr: MR,
                nr: NR,
            },
            narrow: Kernel {
                micro: micro_emulated::<MR_MAX, 16>,
                mr: MR_MAX,
                nr: 16,
            },
        }
    }

    /// The AVX512-BF16 kernels, where this build targets x86-64 (callers pick them only where
    /// [`CpuFeatures::this_cpu`] found the instructions).
    fn avx512() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            Self {
                wide: Kernel {
                    micro: avx512::micro,
                    mr: MR,
                    nr: NR,
                },
                narrow: Kernel {
                    micro: avx512::micro_narrow,
                    mr: MR_MAX,
                    nr: 16,
                },
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Self::emulated()
        }
    }
}

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
    kernels: Kernels,
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
            let out = x_packed(x, packed, (m, n, k), self.bias.as_deref(), self.kernels);
            return Ok((CpuStorage::F32(out), Shape::from((m, n))));
        }
        if self.form == Form::Rounded {
            let b = super::contiguous_f32(ws, wl, "a bf16-rounded product")?;
            let (bt, m, k) = xl.shape().dims3()?;
            let (bt2, k2, n) = wl.shape().dims3()?;
            if (bt2, k2) != (bt, k) {
                candle_core::bail!("bf16 product: {:?} times {:?}", xl.dims(), wl.dims())
            }
            let out = rounded(x, b, (bt, m, k, n), self.kernels);
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
                self.kernels,
            );
            return Ok((CpuStorage::F32(out), Shape::from((b, o, h, wd))));
        }
        let (o, k) = wl.shape().dims2()?;
        let (b, kc, p) = xl.shape().dims3()?;
        if kc != k {
            candle_core::bail!("bf16 product: w is {o}x{k}, cols are {b}x{kc}x{p}")
        }
        let out = w_cols(w, x, (b, o, k, p), self.bias.as_deref(), self.kernels);
        Ok((CpuStorage::F32(out), Shape::from((b, o, p))))
    }
}

/// `vdpbf16ps` in plain Rust: per lane, the high pair's product then the low pair's is added
/// to the running f32 sum (each addition rounded; the products of two bf16 are exact in f32).
/// Denormal inputs are not flushed, as the instruction would: sums of weights and activations
/// do not reach them.
///
/// `R x C` is the block it computes.
///
/// # Safety
/// As [`Micro`].
pub unsafe fn micro_emulated<const R: usize, const C: usize>(t: &Tile) {
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
    let half = |v: u32, hi: bool| f32::from_bits(if hi { v & 0xffff_0000 } else { v << 16 });
    for (r, &row) in a.iter().enumerate().take(rows.min(R)) {
        for j in 0..cols.min(C) {
            let dst = c.add(r * ldc + j);
            let mut acc = if accumulate { *dst } else { 0f32 };
            for q in 0..kp {
                let (x, y) = (row.add(q).read_unaligned(), *b.add(q * C + j));
                acc += half(x, true) * half(y, true);
                acc += half(x, false) * half(y, false);
            }
            *dst = acc;
        }
    }
}
