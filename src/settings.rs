//! What a model's files say about how to sample it: the noise schedule, the prediction type and
//! the guidance formula it was trained for, with recommended defaults. The loader fills these
//! in, the sampler and the editor read them; none of them needs the others' modules for it.
//!
//! diffusers keeps the schedule in `scheduler/scheduler_config.json`; the guidance formula has no
//! standard home, so this project writes `instructdiffusion.json` beside `model_index.json`.
//! Without it, a folder whose pipeline class is InstructPix2Pix's gets that formula.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::tasks::{Phrasing, Task};

/// How the three conditional predictions are combined (formulas in `sample::guidance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuidanceFormula {
    /// `0.5(i + t) + sT(c - i) + sI(c - t)` (Geng et al. 2023).
    InstructDiffusion,
    /// `u + sT(c - i) + sI(i - u)` (Brooks et al. 2023).
    Pix2Pix,
}

impl GuidanceFormula {
    pub fn name(self) -> &'static str {
        match self {
            GuidanceFormula::InstructDiffusion => "instructdiffusion",
            GuidanceFormula::Pix2Pix => "pix2pix",
        }
    }
}

impl std::str::FromStr for GuidanceFormula {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "instructdiffusion" | "instruct-diffusion" => Ok(Self::InstructDiffusion),
            "pix2pix" | "instructpix2pix" | "instruct-pix2pix" | "magicbrush" => Ok(Self::Pix2Pix),
            _ => Err(format!(
                "unknown guidance formula '{s}' (use instructdiffusion or pix2pix)"
            )),
        }
    }
}

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    VPrediction,
}

/// How the training betas were spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// `linspace(sqrt(start), sqrt(end), n)^2` (SD's and LDM's "linear").
    ScaledLinear,
    /// `linspace(start, end, n)`.
    Linear,
}

/// The discrete training schedule (diffusers `scheduler_config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "train_steps")]
    pub num_train_timesteps: usize,
    #[serde(default = "beta_start")]
    pub beta_start: f64,
    #[serde(default = "beta_end")]
    pub beta_end: f64,
    #[serde(default = "scaled_linear")]
    pub beta_schedule: BetaSchedule,
    #[serde(default = "epsilon")]
    pub prediction_type: PredictionType,
    /// The schedule rescaled to zero terminal SNR (Lin et al., 2024; diffusers'
    /// `rescale_betas_zero_snr`): the last training timestep is pure noise, as the first
    /// sampling step is. Its sigma is infinite; samplers start from diffusers' stand-in,
    /// `alphas_cumprod = 2^-24` (sigma ~4096).
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
}

fn train_steps() -> usize {
    1000
}
fn beta_start() -> f64 {
    0.00085
}
fn beta_end() -> f64 {
    0.012
}
fn scaled_linear() -> BetaSchedule {
    BetaSchedule::ScaledLinear
}
fn epsilon() -> PredictionType {
    PredictionType::Epsilon
}

impl Default for SchedulerConfig {
    /// SD 1.x's schedule, which InstructDiffusion keeps.
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            prediction_type: PredictionType::Epsilon,
            rescale_betas_zero_snr: false,
        }
    }
}

/// Sampling defaults recorded with a model (`instructdiffusion.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingDefaults {
    pub guidance: GuidanceFormula,
    #[serde(default = "text_cfg")]
    pub text_cfg: f64,
    #[serde(default = "image_cfg")]
    pub image_cfg: f64,
    /// The guidance rescale's `phi` (Lin et al., 2024; diffusers' `guidance_rescale`): 0, off,
    /// unless the model was measured better with it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub guidance_rescale: f64,
    #[serde(default = "steps")]
    pub steps: usize,
    /// Long side, in pixels, that inputs are resized to.
    #[serde(default = "resolution")]
    pub resolution: usize,
    /// Live-preview factors for this model's VAE: one RGB row per latent channel, then a bias
    /// row, mapping a scaled latent to `[-1, 1]` (fitted by the trainer); absent: Stable
    /// Diffusion 1.x's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latent_rgb: Option<Vec<[f32; 3]>>,
    /// Guidance `[text, image]` per task family measured best for this model
    /// (`eval --grid ... --save-guidance`); a family not listed takes the official recipe
    /// ([`Task::guidance`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub task_guidance: BTreeMap<Task, [f64; 2]>,
    /// How the model was taught to be asked (what the task picker writes). Loaders record
    /// InstructDiffusion's for the layouts it released (a single-file checkpoint, a diffusers
    /// folder without this file); absent from a file: InstructPix2Pix's free text for its
    /// formula, else this project's templates (the trainer wrote the file before this key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phrasing: Option<Phrasing>,
}

fn text_cfg() -> f64 {
    5.0
}
fn image_cfg() -> f64 {
    1.25
}
fn is_zero(v: &f64) -> bool {
    *v == 0.0
}
fn steps() -> usize {
    100
}
fn resolution() -> usize {
    512
}

impl SamplingDefaults {
    /// The official InstructDiffusion CLI defaults (`edit_cli.py`: 100 steps, 5.0 / 1.25, 512).
    pub fn instructdiffusion() -> Self {
        Self {
            guidance: GuidanceFormula::InstructDiffusion,
            text_cfg: 5.0,
            image_cfg: 1.25,
            guidance_rescale: 0.0,
            steps: 100,
            resolution: 512,
            latent_rgb: None,
            task_guidance: BTreeMap::new(),
            phrasing: None,
        }
    }

    /// The official InstructPix2Pix defaults (100 steps, 7.5 / 1.5, 512).
    pub fn pix2pix() -> Self {
        Self {
            guidance: GuidanceFormula::Pix2Pix,
            text_cfg: 7.5,
            image_cfg: 1.5,
            guidance_rescale: 0.0,
            steps: 100,
            resolution: 512,
            latent_rgb: None,
            task_guidance: BTreeMap::new(),
            phrasing: None,
        }
    }

    /// How this model is asked: its recorded phrasing, else by its guidance formula (see
    /// [`SamplingDefaults::phrasing`]'s field).
    pub fn phrasing(&self) -> Phrasing {
        self.phrasing.unwrap_or(match self.guidance {
            GuidanceFormula::InstructDiffusion => Phrasing::Templates,
            GuidanceFormula::Pix2Pix => Phrasing::Free,
        })
    }

    /// InstructDiffusion's released defaults, asked in its structures.
    pub fn instructdiffusion_release() -> Self {
        Self {
            phrasing: Some(Phrasing::InstructDiffusion),
            ..Self::instructdiffusion()
        }
    }

    /// The guidance `(text, image)` to use for `task` on this model: its measured table's
    /// entry, else the official recipe.
    pub fn guidance_for(&self, task: Task) -> (f64, f64) {
        self.task_guidance
            .get(&task)
            .map_or_else(|| task.guidance(), |[t, i]| (*t, *i))
    }
}

/// The file name of [`SamplingDefaults`] inside a model folder.
pub const DEFAULTS_FILE: &str = "instructdiffusion.json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_models_task_table_overrides_the_official_recipe_only_where_it_has_an_entry() {
        let json = r#"{"guidance": "instructdiffusion", "task_guidance": {"denoise": [1.0, 1.5]}}"#;
        let d: SamplingDefaults = serde_json::from_str(json).unwrap();
        assert_eq!(d.guidance_for(Task::Denoise), (1.0, 1.5));
        assert_eq!(d.guidance_for(Task::Keypoints), (6.0, 0.5));
        // Written back, the table survives; a model without one writes no key.
        let again: SamplingDefaults =
            serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(again, d);
        let plain = serde_json::to_string(&SamplingDefaults::instructdiffusion()).unwrap();
        assert!(!plain.contains("task_guidance"), "{plain}");
    }

    #[test]
    fn phrasing_from_metadata_else_from_the_formula() {
        assert_eq!(
            SamplingDefaults::instructdiffusion_release().phrasing(),
            Phrasing::InstructDiffusion
        );
        assert_eq!(
            SamplingDefaults::instructdiffusion().phrasing(),
            Phrasing::Templates
        );
        assert_eq!(SamplingDefaults::pix2pix().phrasing(), Phrasing::Free);
        let own: SamplingDefaults =
            serde_json::from_str(r#"{"guidance": "instructdiffusion", "phrasing": "templates"}"#)
                .unwrap();
        assert_eq!(own.phrasing(), Phrasing::Templates);
    }
}
