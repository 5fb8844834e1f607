//! Vectorised element-wise math for the CPU kernels: `exp`, SiLU and GEGLU's erf GELU, their
//! gradients, softmax rows.
//!
//! The bodies are plain loops the compiler vectorises; each public function runs them compiled
//! for AVX-512 where the CPU has it (checked at run time) and for the baseline otherwise. The
//! approximations stay within a few ulps of the exact functions (tests below).

/// `e^x` for f32 (Cephes' `expf`: `x = n ln 2 + r`, a degree-6 polynomial for `e^r`, `2^n` from
/// the exponent bits), within about two ulps, written so the compiler vectorises it.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    // Above ~88.4 the result is +inf (2^128), as e^x overflows f32 from 88.72 on.
    let x = x.clamp(-87.3, 89.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n from the biased exponent n + 127 (1..=255 here), read off the bits of
    // 2^23 + n + 127: `n as i32` would saturate, which compilers do lane by lane in scalar
    // code (a profile showed the softmax spending most of its time there).
    let biased = (n + (127.0 + 8_388_608.0)).to_bits() - 0x4B00_0000;
    e * f32::from_bits(biased << 23)
}

#[inline(always)]
fn silu_body(v: &mut [f32]) {
    for a in v {
        *a /= 1.0 + exp_approx(-*a);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn silu_avx512(v: &mut [f32]) {
    silu_body(v)
}

/// `v <- v * sigmoid(v)` in place, in AVX-512 where the CPU has it.
pub fn silu_in_place(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        return unsafe { silu_avx512(v) };
    }
    silu_body(v)
}

/// `erf(x)` (Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7, i.e. about one f32 ulp
/// near 1), vectorisable.
#[inline(always)]
fn erf_approx(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let mut p = 1.061_405_4_f32;
    p = p * t - 1.453_152_1;
    p = p * t + 1.421_413_8;
    p = p * t - 0.284_496_74;
    p = p * t + 0.254_829_6;
    let y = 1.0 - p * t * exp_approx(-a * a);
    y.copysign(x)
}

#[inline(always)]
fn gelu_mul_body(out: &mut [f32], hidden: &[f32], gate: &[f32]) {
    for ((o, &h), &g) in out.iter_mut().zip(hidden).zip(gate) {
        *o = h * (0.5 * g * (1.0 + erf_approx(g * std::f32::consts::FRAC_1_SQRT_2)));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn gelu_mul_avx512(out: &mut [f32], hidden: &[f32], gate: &[f32]) {
    gelu_mul_body(out, hidden, gate)
}

/// `out = hidden * gelu_erf(gate)`, element by element (GEGLU).
pub fn gelu_mul(out: &mut [f32], hidden: &[f32], gate: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        return unsafe { gelu_mul_avx512(out, hidden, gate) };
    }
    gelu_mul_body(out, hidden, gate)
}

#[inline(always)]
fn silu_grad_body(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((o, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
        let s = 1.0 / (1.0 + exp_approx(-x));
        *o = g * s * (1.0 + x * (1.0 - s));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn silu_grad_avx512(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    silu_grad_body(x, dy, dx)
}

/// The gradient of SiLU: `dx = dy * s * (1 + x (1 - s))` with `s = sigmoid(x)`.
pub fn silu_grad(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        return unsafe { silu_grad_avx512(x, dy, dx) };
    }
    silu_grad_body(x, dy, dx)
}

#[inline(always)]
fn geglu_grad_body(
    hidden: &[f32],
    gate: &[f32],
    dy: &[f32],
    dhidden: &mut [f32],
    dgate: &mut [f32],
) {
    // gelu(x) = x Phi(x); gelu'(x) = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for i in 0..dy
        .len()
        .min(hidden.len())
        .min(gate.len())
        .min(dhidden.len())
        .min(dgate.len())
    {
        let (h, x, g) = (hidden[i], gate[i], dy[i]);
        let cdf = 0.5 * (1.0 + erf_approx(x * std::f32::consts::FRAC_1_SQRT_2));
        let pdf = INV_SQRT_2PI * exp_approx(-0.5 * x * x);
        dhidden[i] = g * x * cdf;
        dgate[i] = g * h * (cdf + x * pdf);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn geglu_grad_avx512(
    hidden: &[f32],
    gate: &[f32],
    dy: &[f32],
    dhidden: &mut [f32],
    dgate: &mut [f32],
) {
    geglu_grad_body(hidden, gate, dy, dhidden, dgate)
}

/// The gradients of `hidden * gelu_erf(gate)` for an incoming `dy`.
pub fn geglu_grad(
    hidden: &[f32],
    gate: &[f32],
    dy: &[f32],
    dhidden: &mut [f32],
    dgate: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        return unsafe { geglu_grad_avx512(hidden, gate, dy, dhidden, dgate) };
    }
    geglu_grad_body(hidden, gate, dy, dhidden, dgate)
}

/// `row` folded with `f` in 16 independent lanes, then across them: a reduction the compiler
/// can vectorise (one running value would chain every step on the previous one).
#[inline(always)]
fn lane_fold(row: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 16];
    let chunks = row.chunks_exact(16);
    let tail = chunks.remainder().iter().fold(init, |a, &v| f(a, v));
    for c in chunks {
        for l in 0..16 {
            acc[l] = f(acc[l], c[l]);
        }
    }
    acc.iter().fold(tail, |a, &v| f(a, v))
}

#[inline(always)]
fn softmax_body(row: &mut [f32]) {
    let inv = 1.0 / exp_scaled_body(row, 1.0);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn softmax_rows_avx512(data: &mut [f32], len: usize) {
    for row in data.chunks_exact_mut(len) {
        softmax_body(row)
    }
}

#[inline(always)]
fn exp_scaled_body(row: &mut [f32], scale: f32) -> f32 {
    let max = lane_fold(row, f32::NEG_INFINITY, f32::max);
    for v in row.iter_mut() {
        *v = exp_approx(scale * (*v - max));
    }
    lane_fold(row, 0.0, |a, b| a + b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn exp_scaled_avx512(row: &mut [f32], scale: f32) -> f32 {
    exp_scaled_body(row, scale)
}

/// `row[i] = exp(scale * (row[i] - max(row)))`, in place; returns their sum. Divided by it,
/// the row is the softmax of `scale * row` (attention divides its weighted sum instead, once
/// per output row). `scale` must be positive.
pub fn exp_scaled(row: &mut [f32], scale: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        return unsafe { exp_scaled_avx512(row, scale) };
    }
    exp_scaled_body(row, scale)
}

/// Softmax of each `len`-long row of `data`, in place.
pub fn softmax_rows(data: &mut [f32], len: usize) {
    if len == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        return unsafe { softmax_rows_avx512(data, len) };
    }
    for row in data.chunks_exact_mut(len) {
        softmax_body(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_silu_matches_the_exact_one_over_the_whole_range() {
        let xs: Vec<f32> = (-2000..=2000)
            .map(|i| i as f32 * 0.06)
            .chain([-1e30, -100.0, -88.5, 88.5, 100.0, 1e30, 0.0, -0.0])
            .collect();
        let mut fast = xs.clone();
        silu_in_place(&mut fast);
        for (&x, &y) in xs.iter().zip(&fast) {
            let exact = (x as f64 / (1.0 + (-x as f64).exp())) as f32;
            let err = (y - exact).abs();
            assert!(
                err <= 4.0 * f32::EPSILON * exact.abs() + 1e-30,
                "silu({x}) = {y}, exact {exact}"
            );
        }
    }

    #[test]
    fn the_fast_gelu_matches_the_exact_one() {
        let xs: Vec<f32> = (-1000..=1000).map(|i| i as f32 * 0.012).collect();
        let ones = vec![1f32; xs.len()];
        let mut fast = vec![0f32; xs.len()];
        gelu_mul(&mut fast, &ones, &xs);
        // candle's own erf GELU (the path training and other devices take) as the reference.
        let reference = candle_core::Tensor::new(xs.as_slice(), &candle_core::Device::Cpu)
            .and_then(|t| t.gelu_erf()?.to_vec1::<f32>())
            .unwrap();
        for ((&x, &y), &exact) in xs.iter().zip(&fast).zip(&reference) {
            let err = (y - exact).abs();
            assert!(
                err <= 3e-7 * x.abs().max(1.0),
                "gelu({x}) = {y}, candle {exact}"
            );
        }
    }

    #[test]
    fn the_fast_softmax_matches_candles() {
        let t = candle_core::Tensor::randn(0f32, 4.0, (6, 77), &candle_core::Device::Cpu).unwrap();
        let reference = candle_nn::ops::softmax_last_dim(&t).unwrap();
        let mut fast = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        softmax_rows(&mut fast, 77);
        let reference = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in fast.iter().zip(&reference) {
            assert!((a - b).abs() <= 1e-6 * b.max(1e-3), "{a} vs {b}");
        }
    }
}
