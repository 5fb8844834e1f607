//! Samplers in k-diffusion's form: each a short function walking a sigma sequence with a
//! denoiser that returns x0. Port of `k_diffusion/sampling.py` at crowsonkb/k-diffusion@4601bf0,
//! keeping its names (`sigma_hat`, `sigma_down`, `sigma_up`, `eta`) so the two can be diffed.
//!
//! Every step calls `on_step` with a [`Step`]; returning `ControlFlow::Break` cancels the run
//! within that step.

use std::ops::ControlFlow;

use candle_core::{Result, Tensor};

use super::denoiser::Denoiser;
use super::noise::NoiseSource;

/// What a sampler reports after each step.
pub struct Step<'a> {
    pub i: usize,
    pub sigma: f64,
    pub sigma_hat: f64,
    /// The latent after this step.
    pub x: &'a Tensor,
    /// The denoiser's predicted clean latent at this step (what previews show).
    pub denoised: &'a Tensor,
}

/// How a sampling run ended.
#[derive(Debug)]
pub enum Outcome {
    Finished(Tensor),
    Cancelled { at_step: usize },
}

/// The per-step observer.
pub type OnStep<'a> = dyn FnMut(&Step) -> ControlFlow<()> + 'a;

/// The samplers offered to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Sampler {
    /// Euler ancestral, eta 1: the official default.
    #[serde(rename = "euler-a")]
    EulerAncestral,
    #[serde(rename = "euler")]
    Euler,
    #[serde(rename = "heun")]
    Heun,
    #[serde(rename = "dpmpp-2m")]
    DpmPp2M,
}

impl Sampler {
    pub const ALL: [Sampler; 4] = [Self::EulerAncestral, Self::Euler, Self::Heun, Self::DpmPp2M];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::EulerAncestral => "euler-a",
            Self::Euler => "euler",
            Self::Heun => "heun",
            Self::DpmPp2M => "dpmpp-2m",
        }
    }

    /// The name AUTOMATIC1111 writes in its `parameters` metadata.
    pub fn a1111_name(self) -> &'static str {
        match self {
            Self::EulerAncestral => "Euler a",
            Self::Euler => "Euler",
            Self::Heun => "Heun",
            Self::DpmPp2M => "DPM++ 2M",
        }
    }

    /// UNet evaluations for `steps` steps.
    pub fn evaluations(self, steps: usize) -> usize {
        match self {
            Self::Heun => (2 * steps).saturating_sub(1),
            _ => steps,
        }
    }

    /// Runs this sampler.
    pub fn sample(
        self,
        denoiser: &dyn Denoiser,
        x: Tensor,
        sigmas: &[f64],
        noise: &mut dyn NoiseSource,
        on_step: &mut OnStep,
    ) -> Result<Outcome> {
        match self {
            Self::EulerAncestral => euler_ancestral(denoiser, x, sigmas, noise, on_step, 1.0),
            Self::Euler => euler(denoiser, x, sigmas, on_step),
            Self::Heun => heun(denoiser, x, sigmas, on_step),
            Self::DpmPp2M => dpmpp_2m(denoiser, x, sigmas, on_step),
        }
    }
}

impl std::str::FromStr for Sampler {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "euler-a" | "euler_a" | "euler-ancestral" | "euler_ancestral" => {
                Ok(Self::EulerAncestral)
            }
            "euler" => Ok(Self::Euler),
            "heun" => Ok(Self::Heun),
            "dpmpp-2m" | "dpmpp_2m" | "dpm++2m" | "dpm++-2m" => Ok(Self::DpmPp2M),
            _ => Err(format!(
                "unknown sampler '{s}' (use euler-a, euler, heun or dpmpp-2m)"
            )),
        }
    }
}

/// Converts a denoiser output to a Karras ODE derivative (`to_d`).
pub fn to_d(x: &Tensor, sigma: f64, denoised: &Tensor) -> Result<Tensor> {
    (x - denoised)? / sigma
}

/// `(sigma_down, sigma_up)` of an ancestral step from `sigma_from` to `sigma_to`
/// (`get_ancestral_step`).
pub fn ancestral_step(sigma_from: f64, sigma_to: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 {
        return (sigma_to, 0.0);
    }
    let sigma_up = sigma_to.min(
        eta * (sigma_to.powi(2) * (sigma_from.powi(2) - sigma_to.powi(2)) / sigma_from.powi(2))
            .sqrt(),
    );
    let sigma_down = (sigma_to.powi(2) - sigma_up.powi(2)).sqrt();
    (sigma_down, sigma_up)
}

fn report(on_step: &mut OnStep, i: usize, sigma: f64, x: &Tensor, denoised: &Tensor) -> bool {
    let step = Step {
        i,
        sigma,
        sigma_hat: sigma,
        x,
        denoised,
    };
    on_step(&step).is_break()
}

/// Euler method, Algorithm 2 of Karras et al. (2022) without churn (`sample_euler`).
pub fn euler(
    d: &dyn Denoiser,
    mut x: Tensor,
    sigmas: &[f64],
    on_step: &mut OnStep,
) -> Result<Outcome> {
    for i in 0..sigmas.len().saturating_sub(1) {
        let sigma_hat = sigmas[i];
        let denoised = d.denoise(&x, sigma_hat)?;
        let dx = to_d(&x, sigma_hat, &denoised)?;
        x = (x + (dx * (sigmas[i + 1] - sigma_hat))?)?;
        if report(on_step, i, sigma_hat, &x, &denoised) {
            return Ok(Outcome::Cancelled { at_step: i });
        }
    }
    Ok(Outcome::Finished(x))
}

/// Ancestral sampling with Euler steps (`sample_euler_ancestral`), the official sampler.
pub fn euler_ancestral(
    d: &dyn Denoiser,
    mut x: Tensor,
    sigmas: &[f64],
    noise: &mut dyn NoiseSource,
    on_step: &mut OnStep,
    eta: f64,
) -> Result<Outcome> {
    for i in 0..sigmas.len().saturating_sub(1) {
        let denoised = d.denoise(&x, sigmas[i])?;
        let (sigma_down, sigma_up) = ancestral_step(sigmas[i], sigmas[i + 1], eta);
        let dx = to_d(&x, sigmas[i], &denoised)?;
        x = (x + (dx * (sigma_down - sigmas[i]))?)?;
        if sigmas[i + 1] > 0.0 {
            let n = noise.sample(x.shape(), x.device())?.to_dtype(x.dtype())?;
            x = (x + (n * sigma_up)?)?;
        }
        if report(on_step, i, sigmas[i], &x, &denoised) {
            return Ok(Outcome::Cancelled { at_step: i });
        }
    }
    Ok(Outcome::Finished(x))
}

/// Heun's method, Algorithm 2 of Karras et al. (2022) without churn (`sample_heun`).
pub fn heun(
    d: &dyn Denoiser,
    mut x: Tensor,
    sigmas: &[f64],
    on_step: &mut OnStep,
) -> Result<Outcome> {
    for i in 0..sigmas.len().saturating_sub(1) {
        let sigma_hat = sigmas[i];
        let denoised = d.denoise(&x, sigma_hat)?;
        let dx = to_d(&x, sigma_hat, &denoised)?;
        let dt = sigmas[i + 1] - sigma_hat;
        if sigmas[i + 1] == 0.0 {
            // Euler method on the last step.
            x = (&x + (dx * dt)?)?;
        } else {
            let x_2 = (&x + (&dx * dt)?)?;
            let denoised_2 = d.denoise(&x_2, sigmas[i + 1])?;
            let d_2 = to_d(&x_2, sigmas[i + 1], &denoised_2)?;
            let d_prime = ((dx + d_2)? / 2.0)?;
            x = (&x + (d_prime * dt)?)?;
        }
        if report(on_step, i, sigma_hat, &x, &denoised) {
            return Ok(Outcome::Cancelled { at_step: i });
        }
    }
    Ok(Outcome::Finished(x))
}

/// DPM-Solver++(2M) of Lu et al. (2022) (`sample_dpmpp_2m`).
pub fn dpmpp_2m(
    d: &dyn Denoiser,
    mut x: Tensor,
    sigmas: &[f64],
    on_step: &mut OnStep,
) -> Result<Outcome> {
    let t_fn = |sigma: f64| -sigma.ln();
    let mut old_denoised: Option<Tensor> = None;
    for i in 0..sigmas.len().saturating_sub(1) {
        let denoised = d.denoise(&x, sigmas[i])?;
        // sigma_fn(t_next) / sigma_fn(t) = sigma_next / sigma, and -expm1(-h) = 1 - that ratio;
        // written this way they stay finite when sigma_next = 0 (h = inf).
        let ratio = sigmas[i + 1] / sigmas[i];
        let coef = -(-(t_fn(sigmas[i + 1]) - t_fn(sigmas[i]))).exp_m1();
        let coef = if sigmas[i + 1] == 0.0 { 1.0 } else { coef };
        let denoised_d = match &old_denoised {
            Some(old) if sigmas[i + 1] != 0.0 => {
                let h = t_fn(sigmas[i + 1]) - t_fn(sigmas[i]);
                let h_last = t_fn(sigmas[i]) - t_fn(sigmas[i - 1]);
                let r = h_last / h;
                ((&denoised * (1.0 + 1.0 / (2.0 * r)))? - (old * (1.0 / (2.0 * r)))?)?
            }
            _ => denoised.clone(),
        };
        x = ((x * ratio)? + (denoised_d * coef)?)?;
        if report(on_step, i, sigmas[i], &x, &denoised) {
            return Ok(Outcome::Cancelled { at_step: i });
        }
        old_denoised = Some(denoised);
    }
    Ok(Outcome::Finished(x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A denoiser that always predicts the same clean latent.
    struct Oracle(Tensor);
    impl Denoiser for Oracle {
        fn denoise(&self, _: &Tensor, _: f64) -> Result<Tensor> {
            Ok(self.0.clone())
        }
    }

    fn run(sampler: Sampler) -> Result<Vec<f32>> {
        let target = Tensor::new(&[0.5f32, -1.0, 2.0], &Device::Cpu)?;
        let sigmas = super::super::schedule::sigmas_karras(12, 0.03, 14.6, 7.0);
        let x = (Tensor::new(&[1.3f32, 0.2, -0.7], &Device::Cpu)? * sigmas[0])?;
        let mut noise = super::super::noise::SeededNoise::new(1);
        let out = sampler.sample(&Oracle(target), x, &sigmas, &mut noise, &mut |_| {
            ControlFlow::Continue(())
        })?;
        match out {
            Outcome::Finished(x) => x.to_vec1(),
            Outcome::Cancelled { .. } => panic!("not cancelled"),
        }
    }

    /// With a perfect denoiser every sampler must land on its prediction at sigma = 0.
    #[test]
    fn every_sampler_converges_to_a_perfect_prediction() -> Result<()> {
        for s in Sampler::ALL {
            let x = run(s)?;
            for (a, b) in x.iter().zip([0.5f32, -1.0, 2.0]) {
                assert!((a - b).abs() < 1e-4, "{}: {a} vs {b}", s.name());
            }
        }
        Ok(())
    }

    #[test]
    fn cancel_stops_within_one_step() -> Result<()> {
        let target = Tensor::new(&[0.5f32], &Device::Cpu)?;
        let sigmas = super::super::schedule::sigmas_karras(10, 0.03, 14.6, 7.0);
        let mut calls = 0;
        let out = euler(
            &Oracle(target),
            Tensor::new(&[1f32], &Device::Cpu)?,
            &sigmas,
            &mut |s| {
                calls += 1;
                if s.i == 2 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )?;
        assert!(matches!(out, Outcome::Cancelled { at_step: 2 }));
        assert_eq!(calls, 3);
        Ok(())
    }

    #[test]
    fn ancestral_step_splits_the_variance() {
        let (down, up) = ancestral_step(2.0, 1.0, 1.0);
        assert!((down * down + up * up - 1.0).abs() < 1e-12);
        assert_eq!(ancestral_step(2.0, 1.0, 0.0), (1.0, 0.0));
    }
}
