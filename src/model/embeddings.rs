//! Timestep embeddings of the UNet, one timestep per batch element.
//!
//! Mirrors diffusers' `get_timestep_embedding` + `TimestepEmbedding`
//! (diffusers/models/embeddings.py). Unlike candle-transformers 0.11, the timestep is a
//! `(batch,)` tensor, so the samples of one batch can sit at different noise levels (training).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::nn;

/// Sinusoidal projection of fractional timesteps: `(b,)` -> `(b, dim)`.
#[derive(Debug, Clone)]
pub struct Timesteps {
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
}

impl Timesteps {
    /// `dim` channels; SD uses `flip_sin_to_cos = true`, `downscale_freq_shift = 0`.
    pub fn new(dim: usize, flip_sin_to_cos: bool, downscale_freq_shift: f64) -> Self {
        Self {
            dim,
            flip_sin_to_cos,
            downscale_freq_shift,
        }
    }

    /// Embeds `t` of shape `(b,)` (any float dtype) into `(b, dim)` in f32.
    pub fn forward(&self, t: &Tensor) -> Result<Tensor> {
        let half = self.dim / 2;
        let exponent: Vec<f32> = (0..half)
            .map(|i| {
                (-(10000f64.ln()) * i as f64 / (half as f64 - self.downscale_freq_shift)).exp()
                    as f32
            })
            .collect();
        let freqs = Tensor::from_vec(exponent, (1, half), t.device())?;
        let args = t
            .to_dtype(DType::F32)?
            .unsqueeze(1)?
            .broadcast_mul(&freqs)?;
        let (sin, cos) = (args.sin()?, args.cos()?);
        let emb = if self.flip_sin_to_cos {
            Tensor::cat(&[cos, sin], 1)?
        } else {
            Tensor::cat(&[sin, cos], 1)?
        };
        if self.dim % 2 == 1 {
            emb.pad_with_zeros(1, 0, 1)
        } else {
            Ok(emb)
        }
    }
}

/// `linear_1 -> SiLU -> linear_2` (diffusers `TimestepEmbedding`).
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: nn::Linear,
    linear_2: nn::Linear,
}

impl TimestepEmbedding {
    pub fn new(in_dim: usize, time_embed_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear_1: nn::linear(in_dim, time_embed_dim, true, vb.pp("linear_1"))?,
            linear_2: nn::linear(time_embed_dim, time_embed_dim, true, vb.pp("linear_2"))?,
        })
    }
}

impl Module for TimestepEmbedding {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.linear_2
            .forward(&super::nn::silu(&self.linear_1.forward(xs)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Values from `diffusers.models.embeddings.get_timestep_embedding(torch.tensor([0., 999.]), 4,
    /// flip_sin_to_cos=True, downscale_freq_shift=0)`: freqs are `[1, 0.01]`.
    #[test]
    fn sinusoidal_layout_matches_diffusers() -> Result<()> {
        let t = Tensor::new(&[0f32, 999.], &Device::Cpu)?;
        let emb = Timesteps::new(4, true, 0.).forward(&t)?.to_vec2::<f32>()?;
        assert_eq!(emb[0], vec![1., 1., 0., 0.]);
        let expected = [999f32.cos(), 9.99f32.cos(), 999f32.sin(), 9.99f32.sin()];
        for (a, b) in emb[1].iter().zip(expected) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        Ok(())
    }
}
