//! Cheap live previews: the predicted clean latent mapped linearly to RGB, so the worker can
//! send pixels (never tensors) to the UI at every step.
//!
//! The matrix is the model's own (`SamplingDefaults::latent_rgb`, fitted by the trainer with
//! [`fit_latent_rgb`]) or ComfyUI's SD 1.x latent-to-RGB factors (rows: latent channels;
//! columns: R, G, B), applied to latents scaled by the VAE factor, output in `[-1, 1]`.

use candle_core::{DType, Result, Tensor};

/// ComfyUI `latent_formats.SD15.latent_rgb_factors`.
pub const SD15_LATENT_RGB: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];

/// An RGBA preview image.
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    pub width: usize,
    pub height: usize,
    /// `width * height * 4` bytes, row-major RGBA.
    pub rgba: Vec<u8>,
}

/// Maps a scaled latent `(1, c, h, w)` to an RGBA preview of `w x h` pixels with `factors`
/// (`c` rows, then optionally a bias row), or SD 1.x's when `None` (then `c` must be 4).
pub fn latent_to_rgba(latent: &Tensor, factors: Option<&[[f32; 3]]>) -> Result<Preview> {
    let (_, c, h, w) = latent.dims4()?;
    let factors = factors.unwrap_or(&SD15_LATENT_RGB);
    if factors.len() != c && factors.len() != c + 1 {
        candle_core::bail!(
            "the preview has {} factor rows for {c} latent channels",
            factors.len()
        )
    }
    let bias = factors.get(c).copied().unwrap_or([0.0; 3]);
    let lat = latent
        .to_dtype(DType::F32)?
        .get(0)?
        .flatten_from(1)?
        .to_vec2::<f32>()?;
    let mut rgba = vec![255u8; h * w * 4];
    for p in 0..h * w {
        for (k, out) in rgba[p * 4..p * 4 + 3].iter_mut().enumerate() {
            let v: f32 = bias[k] + (0..c).map(|ch| lat[ch][p] * factors[ch][k]).sum::<f32>();
            *out = (((v + 1.0) * 127.5).clamp(0.0, 255.0)) as u8;
        }
    }
    Ok(Preview {
        width: w,
        height: h,
        rgba,
    })
}

/// Least-squares preview factors (`c` rows and a bias row) from scaled latents `(n, c, h, w)`
/// and the images they encode, average-pooled to the latent grid, `(n, 3, h, w)` in `[-1, 1]`.
pub fn fit_latent_rgb(latents: &Tensor, pooled_rgb: &Tensor) -> Result<Vec<[f32; 3]>> {
    let c = latents.dim(1)?;
    // Rows: one per latent cell; columns: the c channels and 1.
    let x = latents
        .transpose(0, 1)?
        .flatten_from(1)?
        .t()?
        .to_dtype(DType::F64)?;
    let y = pooled_rgb
        .transpose(0, 1)?
        .flatten_from(1)?
        .t()?
        .to_dtype(DType::F64)?;
    let x = Tensor::cat(&[&x, &x.ones_like()?.narrow(1, 0, 1)?], 1)?;
    let xtx = x.t()?.matmul(&x)?.to_vec2::<f64>()?;
    let xty = x.t()?.matmul(&y)?.to_vec2::<f64>()?;
    let n = c + 1;
    // Normal equations with a small ridge, by Gauss-Jordan elimination with partial pivoting.
    let mut a: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let mut row = xtx[i].clone();
            row[i] += 1e-6;
            row.extend(&xty[i]);
            row
        })
        .collect();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        let d = a[col][col];
        if d.abs() < 1e-12 {
            candle_core::bail!("cannot fit preview factors: the latents are degenerate")
        }
        for v in a[col].iter_mut() {
            *v /= d;
        }
        for i in 0..n {
            if i != col {
                let f = a[i][col];
                let pivot_row = a[col].clone();
                for (v, p) in a[i].iter_mut().zip(pivot_row) {
                    *v -= f * p;
                }
            }
        }
    }
    Ok(a.iter()
        .map(|row| [row[n] as f32, row[n + 1] as f32, row[n + 2] as f32])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn zero_latent_is_mid_grey_and_channels_map_by_the_matrix() -> Result<()> {
        let z = Tensor::zeros((1, 4, 2, 3), DType::F32, &Device::Cpu)?;
        let p = latent_to_rgba(&z, None)?;
        assert_eq!((p.width, p.height), (3, 2));
        assert_eq!(&p.rgba[..4], &[127, 127, 127, 255]);
        // Channel 3 = 1 everywhere: RGB = row 3 of the matrix.
        let mut v = vec![0f32; 4 * 6];
        v[18..24].fill(1.0);
        let p = latent_to_rgba(&Tensor::from_vec(v, (1, 4, 2, 3), &Device::Cpu)?, None)?;
        let expect = |f: f32| (((f + 1.0) * 127.5).clamp(0.0, 255.0)) as u8;
        assert_eq!(
            &p.rgba[..3],
            &[expect(-0.2120), expect(-0.2616), expect(-0.7177)]
        );
        Ok(())
    }

    /// Factors fitted to latents that are a known linear function of the pooled colours
    /// recover that function, bias included, and map a latent to the colour it encodes.
    #[test]
    fn fitted_factors_recover_a_linear_code() -> Result<()> {
        let dev = Device::Cpu;
        let rgb = Tensor::rand(-1f32, 1.0, (6, 3, 4, 5), &dev)?;
        // latent = M rgb + b for a 5-channel code with a redundant channel.
        let m = Tensor::new(
            &[
                [0.5f32, 0.1, -0.2],
                [0.0, 1.0, 0.3],
                [-0.4, 0.2, 0.9],
                [0.1, 0.1, 0.1],
                [0.3, -0.3, 0.0],
            ],
            &dev,
        )?;
        let flat = rgb.transpose(0, 1)?.flatten_from(1)?; // (3, n*h*w)
        let lat = (m.matmul(&flat)? + 0.25)?
            .reshape((5, 6, 4, 5))?
            .transpose(0, 1)?
            .contiguous()?;
        let f = fit_latent_rgb(&lat, &rgb)?;
        assert_eq!(f.len(), 6);
        let one = lat.narrow(0, 2, 1)?;
        let p = latent_to_rgba(&one, Some(&f))?;
        let want = rgb.get(2)?.flatten_from(1)?.to_vec2::<f32>()?; // (3, h*w)
        for (p, px) in p.rgba.chunks_exact(4).enumerate() {
            for (k, &v) in px[..3].iter().enumerate() {
                let got = v as f32 / 127.5 - 1.0;
                assert!((got - want[k][p]).abs() < 0.02, "pixel {p} channel {k}");
            }
        }
        Ok(())
    }
}
