//! Cheap live previews: the predicted clean latent mapped linearly to RGB, so the worker can
//! send pixels (never tensors) to the UI at every step.
//!
//! The matrix is ComfyUI's SD 1.x latent-to-RGB factors (rows: latent channels; columns: R, G,
//! B), applied to latents scaled by the VAE factor, output in `[-1, 1]`.

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

/// Maps a scaled latent `(1, 4, h, w)` to an RGBA preview of `w x h` pixels.
pub fn latent_to_rgba(latent: &Tensor) -> Result<Preview> {
    let (_, c, h, w) = latent.dims4()?;
    if c != 4 {
        candle_core::bail!("previews need 4 latent channels, got {c}")
    }
    let lat = latent
        .to_dtype(DType::F32)?
        .get(0)?
        .flatten_from(1)?
        .to_vec2::<f32>()?;
    let mut rgba = vec![255u8; h * w * 4];
    for p in 0..h * w {
        for (k, out) in rgba[p * 4..p * 4 + 3].iter_mut().enumerate() {
            let v: f32 = (0..4).map(|ch| lat[ch][p] * SD15_LATENT_RGB[ch][k]).sum();
            *out = (((v + 1.0) * 127.5).clamp(0.0, 255.0)) as u8;
        }
    }
    Ok(Preview {
        width: w,
        height: h,
        rgba,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn zero_latent_is_mid_grey_and_channels_map_by_the_matrix() -> Result<()> {
        let z = Tensor::zeros((1, 4, 2, 3), DType::F32, &Device::Cpu)?;
        let p = latent_to_rgba(&z)?;
        assert_eq!((p.width, p.height), (3, 2));
        assert_eq!(&p.rgba[..4], &[127, 127, 127, 255]);
        // Channel 3 = 1 everywhere: RGB = row 3 of the matrix.
        let mut v = vec![0f32; 4 * 6];
        v[18..24].fill(1.0);
        let p = latent_to_rgba(&Tensor::from_vec(v, (1, 4, 2, 3), &Device::Cpu)?)?;
        let expect = |f: f32| (((f + 1.0) * 127.5).clamp(0.0, 255.0)) as u8;
        assert_eq!(
            &p.rgba[..3],
            &[expect(-0.2120), expect(-0.2616), expect(-0.7177)]
        );
        Ok(())
    }
}
