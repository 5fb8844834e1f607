//! Classifier-free guidance with two conditionings (text and image), as two denoisers.
//!
//! Both evaluate the UNet once per step on a batch of three; the batch orders below are the
//! reference codes' (InstructDiffusion `edit_cli.py` `CFGDenoiser`, InstructPix2Pix
//! `edit_cli.py` `CFGDenoiser`). `T` instruction, `0` empty text, `I` source latent, `Z` zeros.
//!
//! - InstructDiffusion: batch `[(I,T), (I,0), (Z,T)]` -> `c, i, t`;
//!   `x0 = 0.5 (i + t) + sT (c - i) + sI (c - t)`. No unconditional pass; `sT = sI = 0.5` is
//!   no guidance.
//! - InstructPix2Pix: batch `[(I,T), (I,0), (Z,0)]` -> `c, i, u`; `x0 = u + sT (c - i) + sI (i - u)`.
//!
//! Either may be followed by the guidance rescale of Lin et al. (2024; diffusers'
//! `rescale_noise_cfg`, the "CFG rescale" of other UIs): the guided prediction scaled towards
//! the standard deviation of the fully conditioned one, which keeps strong guidance from
//! over-saturating a model trained to zero terminal SNR. See [`rescale`].

use candle_core::{Result, Tensor};

use super::denoiser::{Conditioning, Denoiser, EpsDenoiser};
use crate::settings::{GuidanceFormula, PredictionType};

/// InstructDiffusion's combination of the three predictions.
pub fn combine_instructdiffusion(
    c: &Tensor,
    i: &Tensor,
    t: &Tensor,
    text_cfg: f64,
    image_cfg: f64,
) -> Result<Tensor> {
    let base = ((i + t)? * 0.5)?;
    let text_dir = ((c - i)? * text_cfg)?;
    let image_dir = ((c - t)? * image_cfg)?;
    (base + text_dir)? + image_dir
}

/// InstructPix2Pix's combination of the three predictions.
pub fn combine_pix2pix(
    c: &Tensor,
    i: &Tensor,
    u: &Tensor,
    text_cfg: f64,
    image_cfg: f64,
) -> Result<Tensor> {
    let text_dir = ((c - i)? * text_cfg)?;
    let image_dir = ((i - u)? * image_cfg)?;
    (u + text_dir)? + image_dir
}

/// diffusers' `rescale_noise_cfg` on clean-latent predictions: with `cond` the fully
/// conditioned prediction and `guided` the combination, both as x0 of the noisy latent `x`,
/// returns the x0 whose model output (epsilon or v, as `prediction` says) is diffusers'
/// `phi * guided_out * std(cond_out) / std(guided_out) + (1 - phi) * guided_out`, standard
/// deviations per sample over all other dimensions (unbiased, as `torch.std`).
///
/// The model output is affine in x0 at a given `x` and sigma: `out = (x0 - c_skip x) / c_out`
/// with `c_skip = 1` for epsilon and `1 / (sigma^2 + 1)` for v (k-diffusion's scalings), so the
/// ratio of standard deviations is that of `x0 - c_skip x` and the rescaled x0 is
/// `c_skip x + f (guided - c_skip x)` with `f = phi * ratio + 1 - phi`.
pub fn rescale(
    x: &Tensor,
    cond: &Tensor,
    guided: &Tensor,
    sigma: f64,
    prediction: PredictionType,
    phi: f64,
) -> Result<Tensor> {
    if phi == 0.0 {
        return Ok(guided.clone());
    }
    let c_skip = match prediction {
        PredictionType::Epsilon => 1.0,
        PredictionType::VPrediction => 1.0 / (sigma * sigma + 1.0),
    };
    let skip = (x * c_skip)?;
    let guided_out = (guided - &skip)?;
    let ratio = (std_per_sample(&(cond - &skip)?)? / std_per_sample(&guided_out)?)?;
    let factor = ((ratio * phi)? + (1.0 - phi))?;
    skip + guided_out.broadcast_mul(&factor)?
}

/// Unbiased standard deviation of each sample of `t (b, ...)`, shaped `(b, 1, ..., 1)`.
fn std_per_sample(t: &Tensor) -> Result<Tensor> {
    let b = t.dim(0)?;
    let flat = t.flatten_from(1)?.to_dtype(candle_core::DType::F32)?;
    let n = flat.dim(1)?;
    let centred = flat.broadcast_sub(&flat.mean_keepdim(1)?)?;
    let var = (centred.sqr()?.sum_keepdim(1)? / (n.max(2) - 1) as f64)?;
    let mut shape = vec![b];
    shape.resize(t.rank(), 1);
    var.sqrt()?.to_dtype(t.dtype())?.reshape(shape)
}

/// A guided denoiser for one edit.
pub struct Guided<'a> {
    inner: &'a EpsDenoiser<'a>,
    formula: GuidanceFormula,
    text_cfg: f64,
    image_cfg: f64,
    /// The guidance rescale's `phi` ([`rescale`]); 0 leaves the guided prediction as it is.
    pub rescale: f64,
    batch_image: Tensor,
    batch_text: Tensor,
}

impl<'a> Guided<'a> {
    /// Prepares the batch-of-three conditioning once for all steps.
    pub fn new(
        inner: &'a EpsDenoiser<'a>,
        cond: &Conditioning,
        formula: GuidanceFormula,
        text_cfg: f64,
        image_cfg: f64,
    ) -> Result<Self> {
        let zeros = cond.no_image()?;
        let batch_image = Tensor::cat(&[&cond.image, &cond.image, &zeros], 0)?;
        let third_text = match formula {
            GuidanceFormula::InstructDiffusion => &cond.text,
            GuidanceFormula::Pix2Pix => &cond.empty_text,
        };
        let batch_text = Tensor::cat(&[&cond.text, &cond.empty_text, third_text], 0)?;
        Ok(Self {
            inner,
            formula,
            text_cfg,
            image_cfg,
            rescale: 0.0,
            batch_image,
            batch_text,
        })
    }
}

impl Denoiser for Guided<'_> {
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let x3 = Tensor::cat(&[x, x, x], 0)?;
        let out = self
            .inner
            .denoise_batch(&x3, sigma, &self.batch_image, &self.batch_text)?;
        let parts = out.chunk(3, 0)?;
        let (a, b, c) = (&parts[0], &parts[1], &parts[2]);
        let guided = match self.formula {
            GuidanceFormula::InstructDiffusion => {
                combine_instructdiffusion(a, b, c, self.text_cfg, self.image_cfg)
            }
            GuidanceFormula::Pix2Pix => combine_pix2pix(a, b, c, self.text_cfg, self.image_cfg),
        }?;
        rescale(x, a, &guided, sigma, self.inner.prediction, self.rescale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: f32) -> Tensor {
        Tensor::new(&[v], &Device::Cpu).unwrap()
    }

    fn val(x: Tensor) -> f32 {
        x.to_vec1::<f32>().unwrap()[0]
    }

    #[test]
    fn instructdiffusion_formula() {
        // c=1, i=2, t=4, sT=3, sI=5: 0.5*6 + 3*(1-2) + 5*(1-4) = 3 - 3 - 15 = -15
        assert_eq!(
            val(combine_instructdiffusion(&t(1.), &t(2.), &t(4.), 3., 5.).unwrap()),
            -15.
        );
        // sT = sI = 0.5 is no guidance: the conditional prediction itself.
        assert_eq!(
            val(combine_instructdiffusion(&t(1.), &t(2.), &t(4.), 0.5, 0.5).unwrap()),
            1.
        );
    }

    #[test]
    fn pix2pix_formula() {
        // c=1, i=2, u=4, sT=3, sI=5: 4 + 3*(1-2) + 5*(2-4) = 4 - 3 - 10 = -9
        assert_eq!(
            val(combine_pix2pix(&t(1.), &t(2.), &t(4.), 3., 5.).unwrap()),
            -9.
        );
        // sT = sI = 1 is no guidance.
        assert_eq!(
            val(combine_pix2pix(&t(1.), &t(2.), &t(4.), 1., 1.).unwrap()),
            1.
        );
    }

    /// Against diffusers' `rescale_noise_cfg` on the outputs (epsilon and v, three noise levels,
    /// both formulas), turned into x0 by k-diffusion's scalings
    /// (tools/reference/guidance_rescale_fixture.py).
    #[test]
    fn rescale_matches_diffusers() {
        let golden: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/guidance/rescale.json"))
                .unwrap();
        let cases = golden["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 24);
        let dev = Device::Cpu;
        for case in cases {
            let shape: Vec<usize> = serde_json::from_value(case["shape"].clone()).unwrap();
            let tensor = |v: &serde_json::Value| {
                let v: Vec<f32> = serde_json::from_value(v.clone()).unwrap();
                Tensor::from_vec(v, shape.as_slice(), &dev).unwrap()
            };
            let x = tensor(&case["x"]);
            let [a, b, c] = [0, 1, 2].map(|k| tensor(&case["x0"][k]));
            let (st, si) = (
                case["text_cfg"].as_f64().unwrap(),
                case["image_cfg"].as_f64().unwrap(),
            );
            let guided = match case["formula"].as_str().unwrap() {
                "instructdiffusion" => combine_instructdiffusion(&a, &b, &c, st, si),
                _ => combine_pix2pix(&a, &b, &c, st, si),
            }
            .unwrap();
            let prediction = match case["prediction"].as_str().unwrap() {
                "epsilon" => PredictionType::Epsilon,
                _ => PredictionType::VPrediction,
            };
            let sigma = case["sigma"].as_f64().unwrap();
            let phi = case["phi"].as_f64().unwrap();
            let got = rescale(&x, &a, &guided, sigma, prediction, phi)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let want: Vec<f32> = serde_json::from_value(case["expected"].clone()).unwrap();
            let unscaled = guided.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut moved = 0f32;
            for ((g, w), u) in got.iter().zip(&want).zip(&unscaled) {
                assert!(
                    (g - w).abs() <= 2e-4 * (1.0 + w.abs()),
                    "{prediction:?} sigma {sigma} phi {phi}: {g} against diffusers' {w}"
                );
                moved = moved.max((w - u).abs());
            }
            assert!(
                moved > 1e-2,
                "{prediction:?} sigma {sigma}: the rescale had no effect"
            );
        }
    }

    #[test]
    fn no_rescale_is_the_guided_prediction() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (1, 4, 2, 2), &dev).unwrap();
        let g = Tensor::randn(0f32, 3., (1, 4, 2, 2), &dev).unwrap();
        let out = rescale(&x, &x, &g, 1.0, PredictionType::VPrediction, 0.0).unwrap();
        assert_eq!(
            out.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            g.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
