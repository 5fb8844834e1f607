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

use candle_core::{Result, Tensor};

use super::denoiser::{Conditioning, Denoiser, EpsDenoiser};
use crate::model::meta::GuidanceFormula;

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

/// A guided denoiser for one edit.
pub struct Guided<'a> {
    inner: &'a EpsDenoiser<'a>,
    formula: GuidanceFormula,
    text_cfg: f64,
    image_cfg: f64,
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
        match self.formula {
            GuidanceFormula::InstructDiffusion => {
                combine_instructdiffusion(a, b, c, self.text_cfg, self.image_cfg)
            }
            GuidanceFormula::Pix2Pix => combine_pix2pix(a, b, c, self.text_cfg, self.image_cfg),
        }
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
}
