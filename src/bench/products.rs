//! `bench --products`: the layers' products alone, in bf16, on the shapes of SD 1.5's UNet at
//! 256 px (a guided batch of three), and attention at 256 and 512 px: the best time and GFLOP/s of each, to set against
//! `tools/bench/pytorch_products.py` (PyTorch's bf16 `linear`, `conv2d` and
//! `scaled_dot_product_attention` on the same shapes).
//! Each layer is built the way a loaded model builds it (linear weights packed at load,
//! convolutions by plane width), with random weights.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use serde::Serialize;

use crate::model::nn;

/// One layer's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ProductRow {
    pub layer: String,
    pub flops: f64,
    pub best_s: f64,
    pub gflops: f64,
}

/// Every layer's figures and how the products ran.
#[derive(Debug, Clone, Serialize)]
pub struct ProductsReport {
    pub kernel: String,
    pub rows: Vec<ProductRow>,
}

/// Linear layers: (rows, in, out, what it is).
const LINEAR: [(usize, usize, usize, &str); 5] = [
    (3072, 320, 320, "attention projection, 32x32"),
    (3072, 320, 2560, "feed-forward in, 32x32"),
    (3072, 1280, 320, "feed-forward out, 32x32"),
    (768, 640, 5120, "feed-forward in, 16x16"),
    (192, 1280, 10240, "feed-forward in, 8x8"),
];

/// 3x3 convolutions, stride 1, batch 3: (channels, plane side).
const CONV: [(usize, usize); 4] = [(320, 32), (640, 16), (1280, 8), (1280, 4)];

/// Attention (batch x heads, query tokens, key tokens, head width, what it is).
const ATTENTION: [(usize, usize, usize, usize, &str); 4] = [
    (24, 1024, 1024, 40, "UNet self, 256 px"),
    (24, 1024, 77, 40, "UNet cross, 256 px"),
    (24, 4096, 4096, 40, "UNet self, 512 px"),
    (1, 4096, 4096, 512, "VAE, 512 px"),
];

/// Times each layer `repeats` times after a warm-up.
pub fn run(repeats: usize) -> anyhow::Result<ProductsReport> {
    let dev = Device::Cpu;
    let random = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, &dev);
    let builder = |w: Tensor, b: Tensor| {
        let map = HashMap::from([("weight".to_string(), w), ("bias".to_string(), b)]);
        VarBuilder::from_tensors(map, DType::BF16, &dev)
    };
    let mut rows = Vec::new();
    let mut measure = |layer: String, flops: f64, f: &dyn Fn() -> anyhow::Result<()>| {
        let row = super::time(&layer, repeats.max(1), &dev, f)?;
        rows.push(ProductRow {
            layer,
            flops,
            best_s: row.min_s,
            gflops: flops / row.min_s / 1e9,
        });
        anyhow::Ok(())
    };
    for &(m, k, n, what) in &LINEAR {
        let layer = nn::linear(k, n, true, builder(random(&[n, k])?, random(&[n])?))?;
        let x = random(&[m, k])?;
        let flops = 2.0 * (m * k * n) as f64;
        let name = format!("linear {m}x{k} -> {n} ({what})");
        measure(name, flops, &|| {
            layer.forward(&x)?;
            Ok(())
        })?;
    }
    for &(c, side) in &CONV {
        let vb = builder(random(&[c, c, 3, 3])?, random(&[c])?);
        let layer = nn::conv2d(c, c, 3, 1, 1, vb)?;
        let x = random(&[3, c, side, side])?;
        let flops = 2.0 * (3 * c * 9 * c * side * side) as f64;
        let name = format!("conv 3x3 {c} -> {c}, 3 x {side}x{side}");
        measure(name, flops, &|| {
            layer.forward(&x)?;
            Ok(())
        })?;
    }
    // Attention runs on bf16 dot products only where the CPU has them (else in f32).
    let kernel = crate::model::kernels::bf16::Bf16Kernel::detect();
    let bf16 = kernel == crate::model::kernels::bf16::Bf16Kernel::Avx512Bf16;
    for &(bh, sq, sk, dh, what) in &ATTENTION {
        let (q, k, v) = (
            random(&[bh, sq, dh])?,
            random(&[bh, sk, dh])?,
            random(&[bh, sk, dh])?,
        );
        let flops = 4.0 * (bh * sq * sk * dh) as f64;
        let name = format!("attention {bh} x {sq}x{sk}x{dh} ({what})");
        measure(name, flops, &|| {
            nn::attention(&q, &k, &v, None, bf16)?;
            Ok(())
        })?;
    }
    let kernel = format!("{kernel:?}");
    Ok(ProductsReport { kernel, rows })
}

/// The report as a table for stderr.
pub fn table(r: &ProductsReport) -> String {
    let mut s = format!("bf16 products ({} kernel)\n", r.kernel);
    s.push_str(&format!(
        "{:<60} {:>9} {:>8}\n",
        "layer", "best ms", "GFLOP/s"
    ));
    for row in &r.rows {
        s.push_str(&format!(
            "{:<60} {:>9.2} {:>8.0}\n",
            row.layer,
            row.best_s * 1e3,
            row.gflops
        ));
    }
    s
}
