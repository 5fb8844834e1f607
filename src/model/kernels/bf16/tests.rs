//! The packed products against an f64 reference, with the instruction emulated (every CPU)
//! and real (where present), and mutated kernels that must fail the same check.

use super::attention::fused;
use super::pack::{bytemuck_bf16, pack_along, pack_panel, pack_weight_bits, pair, round};
use super::products::{conv, rounded, w_cols, x_packed};
use super::*;
use candle_core::Device;
use half::bf16;

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

/// `softmax(scale · q kᵀ) v` per batch item on bf16-rounded `q`, `k`, `v`, in f64.
fn reference_attention(
    (q, k, v): (&[f32], &[f32], &[f32]),
    (bh, sq, sk, dh, dv): (usize, usize, usize, usize, usize),
    scale: f64,
) -> Vec<f32> {
    let mut out = vec![0f32; bh * sq * dv];
    for h in 0..bh {
        for i in 0..sq {
            let scores: Vec<f64> = (0..sk)
                .map(|j| {
                    let dot = (0..dh)
                        .map(|t| r(q[(h * sq + i) * dh + t]) * r(k[(h * sk + j) * dh + t]))
                        .sum::<f64>();
                    scale * dot
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for c in 0..dv {
                let acc: f64 = (0..sk).map(|j| e[j] * r(v[(h * sk + j) * dv + c])).sum();
                out[(h * sq + i) * dv + c] = (acc / sum) as f32;
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

/// The four packed forms with given micro-kernels, against the f64 reference, on shapes with
/// remainders everywhere (rows not a multiple of the kernel's, columns not of the panel's, odd
/// depths, more than one depth slice of KC pairs), blocks of 16 columns or fewer (the narrow
/// kernel) and wider.
fn check(kernels: Kernels) -> std::result::Result<(), String> {
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
        let got = x_packed(&x, &packed, (m, n, k), Some(&bias), kernels);
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
        let got = rounded(&a2, &b2, (2, m, k, n), kernels);
        for s in 0..2 {
            let e = worst(&got[s * m * n..(s + 1) * m * n], &want, k as f32);
            if e > 1e-6 {
                return Err(format!("a·b {m}x{k}x{n}, item {s}: off by {e}"));
            }
        }
        let got = w_cols(&wb, &cols, (2, n, k, m), None, kernels);
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
    // (blocks that start mid-row), a depth of more than KC pairs, planes of 16 pixels (the
    // narrow kernel, with more rows than its 16).
    for &(b, c, h, wd, o, k) in &[
        (2, 3, 5, 16, 13, 3),
        (2, 3, 1, 16, 13, 3),
        (1, 8, 1, 16, 37, 3),
        (1, 4, 3, 32, 9, 1),
        (1, 2, 4, 16, 3, 5),
        (2, 6, 7, 48, 70, 3),
        (1, 120, 2, 16, 10, 3),
        // 300 output channels on 32 pixels: the rows split four ways or more, so the pixels
        // are packed once, whole, for every block of rows.
        (1, 4, 2, 16, 300, 3),
        // Rows wider than a block of pixels (256): each block reads a window of its row, at
        // the left edge, inside and at the right edge.
        (1, 3, 2, 768, 5, 3),
    ] {
        let (x, w) = (random(b * c * h * wd, 3), random(o * c * k * k, 4));
        let want = reference_conv(&x, (b, c, h, wd), &w, o, k);
        // With a bias on each channel.
        let bias = random(o, 8);
        let got = conv(
            &x,
            (b, c, h, wd),
            (&to_bf16(&w), o, k),
            Some(&bias),
            kernels,
        );
        let unbiased: Vec<f32> = (got.iter().enumerate())
            .map(|(i, v)| v - bias[i / (h * wd) % o])
            .collect();
        let e = worst(&unbiased, &want, (c * k * k) as f32);
        if e > 1e-6 {
            return Err(format!("conv {b}x{c}x{h}x{wd} -> {o}, {k}x{k}: off by {e}"));
        }
    }
    // Fused attention: odd sizes everywhere, 77 keys (a prompt), heads of 40 (the values'
    // narrow kernel) and 160 channels, more keys than KC pairs. Its weights are rounded to
    // bf16 before the values' product, so an output may be off by 2^-9 of the largest value
    // (every operand is within [-1, 1)); a kernel that drops or swaps bf16 halves is far off.
    for &(bh, sq, sk, dh, dv) in &[
        (3, 5, 3, 5, 3),
        (2, 20, 77, 40, 40),
        (1, 17, 33, 160, 160),
        (1, 40, 1100, 8, 64),
    ] {
        let (q, k) = (random(bh * sq * dh, 9), random(bh * sk * dh, 10));
        let v = random(bh * sk * dv, 11);
        // A scale that spreads the softmax: with 1/sqrt(dh) on these small values every
        // weight is alike, and an output near the values' mean hides a wrong score.
        let scale = 4.0;
        let dims = (bh, sq, sk, dh, dv);
        let want = reference_attention((&q, &k, &v), dims, scale);
        let got = fused((&q, &k, &v), dims, scale as f32, kernels);
        let e = worst(&got, &want, 1.0);
        if e > 1.0 / 512.0 {
            return Err(format!("attention {dims:?}: off by {e}"));
        }
    }
    Ok(())
}

/// On one thread, a linear product of three blocks of rows and three of columns gives each job
/// two blocks of columns for the rows it rounds once: the second block must read the same rows.
#[test]
fn a_job_reuses_its_rounded_rows_across_column_blocks() {
    let (m, n, k) = (600, 600, 40);
    let (x, w) = (random(m * k, 12), random(n * k, 13));
    let packed = pack_weight_bits(bytemuck_bf16(&to_bf16(&w)), n, k);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let got = pool.install(|| x_packed(&x, &packed, (m, n, k), None, Kernels::emulated()));
    let e = worst(&got, &reference(&x, &w, m, n, k), k as f32);
    assert!(e <= 1e-6, "off by {e} of the scale");
}

#[test]
fn emulated_kernel_matches_the_reference() {
    check(Kernels::emulated()).unwrap();
}

/// The real instructions, where this CPU has them (the emulated kernel above checks the
/// packing and loops on every CPU).
#[test]
fn avx512_bf16_kernel_matches_the_reference_where_present() {
    if !CpuFeatures::this_cpu().avx512bf16 {
        eprintln!("this CPU has no AVX512-BF16: the vdpbf16ps kernel is not run here");
        return;
    }
    check(Kernels::avx512()).unwrap();
}

/// A kernel that drops the second bf16 of each pair, swaps the halves of one operand, or
/// forgets what earlier depth slices summed, is caught by the same check.
#[test]
fn a_broken_kernel_fails_the_check() {
    /// `micro_emulated` with each pair's two products taken by `f`, summing from zero
    /// when `restart`.
    unsafe fn with(t: &Tile, restart: bool, f: impl Fn(u32, u32) -> f32) {
        for (r, &row) in t.a.iter().enumerate().take(t.rows) {
            for j in 0..t.cols {
                let dst = t.c.add(r * t.ldc + j);
                let start = if t.accumulate && !restart { *dst } else { 0. };
                *dst = start
                    + (0..t.kp)
                        .map(|q| f(row.add(q).read_unaligned(), *t.b.add(q * NR + j)))
                        .sum::<f32>();
            }
        }
    }
    fn h(v: u32, hi: bool) -> f32 {
        f32::from_bits(if hi { v & 0xffff_0000 } else { v << 16 })
    }
    macro_rules! broken {
        ($name:ident, $restart:expr, $f:expr) => {
            unsafe fn $name(t: &Tile) {
                with(t, $restart, $f)
            }
        };
    }
    broken!(drops_low, false, |x, y| h(x, true) * h(y, true));
    broken!(swaps, false, |x, y| h(x, true) * h(y, false)
        + h(x, false) * h(y, true));
    broken!(restarts, true, |x, y| h(x, true) * h(y, true)
        + h(x, false) * h(y, false));
    let wide = |micro: Micro| Kernels {
        wide: Kernel {
            micro,
            mr: MR,
            nr: NR,
        },
        ..Kernels::emulated()
    };
    assert!(check(wide(drops_low)).is_err());
    assert!(check(wide(swaps)).is_err());
    assert!(check(wide(restarts)).is_err());
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
            unsafe { pack_panel(&rows, runs, got.as_mut_ptr(), NR) };
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
