//! Denoisers: functions from a noisy latent at noise level sigma to the predicted clean latent
//! (x0). Samplers only ever see this interface.
//!
//! [`EpsDenoiser`] wraps an epsilon (or v) predicting UNet as k-diffusion's
//! `DiscreteEpsDDPMDenoiser` / `DiscreteVDDPMDenoiser` do (`external.py` @4601bf0):
//! `c_in = 1 / sqrt(sigma^2 + 1)`, `t = sigma_to_t(sigma)`, `x0 = x - sigma * eps`.

use candle_core::{DType, Result, Tensor};

use super::schedule::DiscreteSchedule;
use crate::model::unet::UNet2DConditionModel;
use crate::settings::PredictionType;

/// Anything that predicts the clean latent from a noisy one.
pub trait Denoiser {
    /// `x`: `(b, 4, h, w)` noisy latent at noise level `sigma`. Returns x0, same shape.
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor>;
}

/// The UNet as a denoiser of batches whose conditioning is given per call.
pub struct EpsDenoiser<'a> {
    pub unet: &'a UNet2DConditionModel,
    pub schedule: DiscreteSchedule,
    pub prediction: PredictionType,
}

impl EpsDenoiser<'_> {
    /// `x`: `(b, 4, h, w)`; `image`: `(b, 4, h, w)` source latents (zeros for "no image");
    /// `text`: `(b, 77, d)` embeddings. Returns x0 `(b, 4, h, w)`.
    pub fn denoise_batch(
        &self,
        x: &Tensor,
        sigma: f64,
        image: &Tensor,
        text: &Tensor,
    ) -> Result<Tensor> {
        let b = x.dim(0)?;
        let c_in = 1.0 / (sigma * sigma + 1.0).sqrt();
        let t = self.schedule.sigma_to_t(sigma);
        let t = Tensor::full(t as f32, b, x.device())?;
        let input = Tensor::cat(&[&(x * c_in)?, image], 1)?;
        let out = self.unet.forward_split(&input, &t, text)?;
        match self.prediction {
            PredictionType::Epsilon => x - (out * sigma)?,
            PredictionType::VPrediction => {
                // sigma_data = 1: c_skip = 1/(s^2+1), c_out = -s/sqrt(s^2+1).
                let c_skip = 1.0 / (sigma * sigma + 1.0);
                let c_out = -sigma * c_in;
                (x * c_skip)? + (out * c_out)?
            }
        }
    }
}

/// The conditioning of one edit: instruction and empty-prompt embeddings `(1, 77, d)` and the
/// source latent `(1, 4, h, w)` (posterior mean, unscaled).
#[derive(Debug, Clone)]
pub struct Conditioning {
    pub text: Tensor,
    pub empty_text: Tensor,
    pub image: Tensor,
}

impl Conditioning {
    /// The all-zeros "no image" latent.
    pub fn no_image(&self) -> Result<Tensor> {
        self.image.zeros_like()
    }

    /// Casts every part to `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            text: self.text.to_dtype(dtype)?,
            empty_text: self.empty_text.to_dtype(dtype)?,
            image: self.image.to_dtype(dtype)?,
        })
    }
}
