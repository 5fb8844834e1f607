//! Noise levels: the discrete training schedule and the sigma sequences samplers walk.
//!
//! Port of k-diffusion's `DiscreteSchedule` (`external.py`) and `get_sigmas_karras` /
//! `append_zero` (`sampling.py`) at crowsonkb/k-diffusion@4601bf0, in f64 on the host.

use crate::settings::{BetaSchedule, SchedulerConfig};

/// `alphas_cumprod` of the training schedule.
pub fn alphas_cumprod(cfg: &SchedulerConfig) -> Vec<f64> {
    let n = cfg.num_train_timesteps;
    let lerp = |a: f64, b: f64, i: usize| {
        if n <= 1 {
            a
        } else {
            a + (b - a) * i as f64 / (n - 1) as f64
        }
    };
    let betas: Vec<f64> = (0..n)
        .map(|i| match cfg.beta_schedule {
            BetaSchedule::ScaledLinear => {
                lerp(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), i).powi(2)
            }
            BetaSchedule::Linear => lerp(cfg.beta_start, cfg.beta_end, i),
        })
        .collect();
    let mut acp = 1.0;
    let acps: Vec<f64> = betas
        .iter()
        .map(|b| {
            acp *= 1.0 - b;
            acp
        })
        .collect();
    if cfg.rescale_betas_zero_snr {
        rescale_zero_terminal_snr(&acps)
    } else {
        acps
    }
}

/// `alphas_cumprod` rescaled to zero terminal SNR (diffusers' `rescale_zero_terminal_snr`):
/// `sqrt(acp)` shifted so that its last value is 0 and scaled so that its first is kept. (The
/// diffusers function returns betas; their cumulative product is these values.)
fn rescale_zero_terminal_snr(acp: &[f64]) -> Vec<f64> {
    let (first, last) = (acp[0].sqrt(), acp[acp.len() - 1].sqrt());
    acp.iter()
        .map(|a| ((a.sqrt() - last) * first / (first - last)).powi(2))
        .collect()
}

/// What diffusers' Euler schedulers put in place of a zero `alphas_cumprod` for a finite
/// sigma.
pub const ZERO_SNR_STAND_IN: f64 = 1.0 / (1u64 << 24) as f64;

/// The training noise levels `sigma_t = sqrt((1 - acp_t) / acp_t)` and the maps between
/// continuous sigma and fractional timestep.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscreteSchedule {
    pub sigmas: Vec<f64>,
    pub log_sigmas: Vec<f64>,
}

impl DiscreteSchedule {
    pub fn new(cfg: &SchedulerConfig) -> Self {
        let sigmas: Vec<f64> = alphas_cumprod(cfg)
            .into_iter()
            .map(|a| if a > 0.0 { a } else { ZERO_SNR_STAND_IN })
            .map(|a| ((1.0 - a) / a).sqrt())
            .collect();
        let log_sigmas = sigmas.iter().map(|s| s.ln()).collect();
        Self { sigmas, log_sigmas }
    }

    pub fn sigma_min(&self) -> f64 {
        self.sigmas[0]
    }

    pub fn sigma_max(&self) -> f64 {
        self.sigmas[self.sigmas.len() - 1]
    }

    /// The fractional timestep of `sigma`: linear interpolation in log-sigma between the two
    /// neighbouring training levels (k-diffusion `sigma_to_t`, `quantize=False`).
    pub fn sigma_to_t(&self, sigma: f64) -> f64 {
        let ls = &self.log_sigmas;
        let log_sigma = sigma.ln();
        // low_idx = number of levels <= log_sigma, minus one, clamped to [0, n-2].
        let count = ls.iter().filter(|&&l| log_sigma - l >= 0.0).count();
        let low = count.saturating_sub(1).min(ls.len() - 2);
        let high = low + 1;
        let w = ((ls[low] - log_sigma) / (ls[low] - ls[high])).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * high as f64
    }

    /// The sigma of fractional timestep `t` (k-diffusion `t_to_sigma`).
    pub fn t_to_sigma(&self, t: f64) -> f64 {
        let low = t.floor() as usize;
        let high = (t.ceil() as usize).min(self.log_sigmas.len() - 1);
        let w = t - t.floor();
        ((1.0 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()
    }

    /// The official schedule for `n` steps: `t = linspace(t_max, 0, n)`, mapped to sigmas,
    /// then a final 0 (k-diffusion `DiscreteSchedule.get_sigmas`).
    pub fn sigmas(&self, n: usize) -> Vec<f64> {
        let t_max = (self.sigmas.len() - 1) as f64;
        let ts: Vec<f64> = match n {
            0 => vec![],
            1 => vec![t_max],
            _ => (0..n)
                .map(|i| t_max - t_max * i as f64 / (n - 1) as f64)
                .collect(),
        };
        append_zero(ts.into_iter().map(|t| self.t_to_sigma(t)).collect())
    }
}

/// The noise schedule of Karras et al. (2022), `rho = 7` in the paper (k-diffusion
/// `get_sigmas_karras`).
pub fn sigmas_karras(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    let ramp = |i: usize| {
        if n <= 1 {
            0.0
        } else {
            i as f64 / (n - 1) as f64
        }
    };
    append_zero(
        (0..n)
            .map(|i| (max_inv_rho + ramp(i) * (min_inv_rho - max_inv_rho)).powf(rho))
            .collect(),
    )
}

/// Appends the final noise level 0.
pub fn append_zero(mut sigmas: Vec<f64>) -> Vec<f64> {
    sigmas.push(0.0);
    sigmas
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd() -> DiscreteSchedule {
        DiscreteSchedule::new(&SchedulerConfig::default())
    }

    /// SD 1.x's betas rescaled to zero terminal SNR, against diffusers' own values
    /// (`tools/reference/zero_snr_fixture.py`, f32 there): the cumulative alphas, and the
    /// training sigmas with the Euler schedulers' stand-in for the last, infinite one.
    #[test]
    fn zero_terminal_snr_matches_diffusers() {
        let golden: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/schedule/zero_snr.json"))
                .unwrap();
        let cfg = SchedulerConfig {
            rescale_betas_zero_snr: true,
            ..SchedulerConfig::default()
        };
        let (acp, sched) = (alphas_cumprod(&cfg), DiscreteSchedule::new(&cfg));
        let get = |k: &str| -> Vec<f64> {
            golden[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        };
        let ts = golden["timesteps"].as_array().unwrap();
        for (i, t) in ts.iter().enumerate() {
            let t = t.as_u64().unwrap() as usize;
            let (want_acp, want_sigma) = (get("alphas_cumprod")[i], get("sigmas")[i]);
            assert!(
                (acp[t] - want_acp).abs() <= 1e-6 * want_acp.max(1e-3),
                "acp[{t}] {} vs {want_acp}",
                acp[t]
            );
            let rel = (sched.sigmas[t] - want_sigma).abs() / want_sigma;
            assert!(rel < 1e-4, "sigma[{t}] {} vs {want_sigma}", sched.sigmas[t]);
        }
        assert_eq!(acp[999], 0.0, "pure noise at the last timestep");
        // The schedule is SD's at its start, as the rescaling keeps the first value.
        assert_eq!(acp[0], alphas_cumprod(&SchedulerConfig::default())[0]);
    }

    /// SD 1.x's well-known extremes: sigma_min ~0.0292, sigma_max ~14.6146.
    #[test]
    fn sd_sigma_range() {
        let s = sd();
        assert!((s.sigma_min() - 0.029168).abs() < 1e-5, "{}", s.sigma_min());
        assert!(
            (s.sigma_max() - 14.614642).abs() < 1e-4,
            "{}",
            s.sigma_max()
        );
    }

    #[test]
    fn sigma_to_t_inverts_t_to_sigma() {
        let s = sd();
        for t in [0.0, 0.5, 10.25, 500.0, 998.75, 999.0] {
            let back = s.sigma_to_t(s.t_to_sigma(t));
            assert!((back - t).abs() < 1e-6, "{t} -> {back}");
        }
    }

    #[test]
    fn official_schedule_runs_from_max_to_zero() {
        let s = sd();
        let sig = s.sigmas(20);
        assert_eq!(sig.len(), 21);
        assert!((sig[0] - s.sigma_max()).abs() < 1e-9);
        assert!((sig[19] - s.sigma_min()).abs() < 1e-9);
        assert_eq!(sig[20], 0.0);
        assert!(sig.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn karras_endpoints() {
        let k = sigmas_karras(10, 0.1, 10.0, 7.0);
        assert!((k[0] - 10.0).abs() < 1e-9 && (k[9] - 0.1).abs() < 1e-9 && k[10] == 0.0);
    }
}
