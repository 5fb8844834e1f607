//! What an edit asks for: an [`EditRequest`] as the user gave it (defaults unset), checked once
//! by [`EditRequest::validate`] into the [`EditPlan`] the pipeline runs.

use serde::Serialize;

use super::samplers::Sampler;
use crate::fullres::FullRes;
use crate::model::load::Model;
use crate::settings::GuidanceFormula;

/// An edit as a user asked for it; `None` fields take the model's defaults.
#[derive(Debug, Clone, Default)]
pub struct EditRequest {
    pub prompt: String,
    pub steps: Option<usize>,
    pub text_cfg: Option<f64>,
    pub image_cfg: Option<f64>,
    /// The guidance rescale's `phi` in `[0, 1]` ([`super::guidance::rescale`]).
    pub guidance_rescale: Option<f64>,
    pub sampler: Option<Sampler>,
    pub guidance: Option<GuidanceFormula>,
    pub seed: Option<u64>,
    /// Long side at which the model runs.
    pub resolution: Option<usize>,
    /// Return the model's own pixels at its size instead of the photo's.
    pub keep_model_resolution: bool,
    /// How the result comes back at the photo's size.
    pub full_res: FullRes,
}

/// Why an [`EditRequest`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("steps must be between 1 and 1000, got {0}")]
    Steps(usize),
    #[error("{name} must be a finite number, got {value}")]
    NotFinite { name: &'static str, value: f64 },
    #[error("resolution must be a multiple of 64 between 64 and 4096, got {0}")]
    Resolution(usize),
    #[error("the guidance rescale must be between 0 (off) and 1, got {0}")]
    Rescale(f64),
}

/// A validated edit, every setting resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EditPlan {
    pub prompt: String,
    pub steps: usize,
    pub text_cfg: f64,
    pub image_cfg: f64,
    pub guidance_rescale: f64,
    pub sampler: Sampler,
    pub guidance: GuidanceFormula,
    pub seed: u64,
    pub resolution: usize,
    pub keep_model_resolution: bool,
    pub full_res: FullRes,
}

impl EditRequest {
    /// Resolves defaults from `model` and checks every value.
    pub fn validate(&self, model: &Model) -> Result<EditPlan, RequestError> {
        let d = &model.defaults;
        let steps = self.steps.unwrap_or(d.steps);
        if !(1..=1000).contains(&steps) {
            return Err(RequestError::Steps(steps));
        }
        let text_cfg = self.text_cfg.unwrap_or(d.text_cfg);
        let image_cfg = self.image_cfg.unwrap_or(d.image_cfg);
        for (name, value) in [("text_cfg", text_cfg), ("image_cfg", image_cfg)] {
            if !value.is_finite() {
                return Err(RequestError::NotFinite { name, value });
            }
        }
        let guidance_rescale = self.guidance_rescale.unwrap_or(d.guidance_rescale);
        if !(0.0..=1.0).contains(&guidance_rescale) {
            return Err(RequestError::Rescale(guidance_rescale));
        }
        let resolution = self.resolution.unwrap_or(d.resolution);
        if !resolution.is_multiple_of(64) || !(64..=4096).contains(&resolution) {
            return Err(RequestError::Resolution(resolution));
        }
        Ok(EditPlan {
            prompt: self.prompt.clone(),
            steps,
            text_cfg,
            image_cfg,
            guidance_rescale,
            sampler: self.sampler.unwrap_or(Sampler::EulerAncestral),
            guidance: self.guidance.unwrap_or(d.guidance),
            seed: self.seed.unwrap_or_else(rand::random),
            resolution,
            keep_model_resolution: self.keep_model_resolution,
            full_res: self.full_res,
        })
    }
}
