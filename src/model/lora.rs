//! LoRA adapters (Hu et al., 2021) on the UNet's attention projections (`to_q`, `to_k`, `to_v`,
//! `to_out.0`), as diffusers' and peft's default targets: the projection becomes
//! `W x + (alpha / r) B A x` with `A` `(r, in)` and `B` `(out, r)`; `W` stays frozen, `B`
//! starts at zero so training starts from the base model exactly.
//!
//! A full fine-tune of SD 1.5 holds weights, gradients and two Adam moments of 860M
//! parameters (~14 GB in f32); rank-4 adapters on its attention are ~0.8M.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Where and how big the adapters are.
#[derive(Clone)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    /// Creates the adapter weights (a `VarMap` in training), under the adapted layer's path.
    pub vb: VarBuilder<'static>,
}

impl std::fmt::Debug for LoraSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LoraSpec {{ rank: {}, alpha: {} }}",
            self.rank, self.alpha
        )
    }
}

impl PartialEq for LoraSpec {
    fn eq(&self, other: &Self) -> bool {
        (self.rank, self.alpha) == (other.rank, other.alpha)
    }
}

/// The names of an adapter's two matrices under its layer's path (peft's naming).
pub const A: &str = "lora_A.weight";
pub const B: &str = "lora_B.weight";

/// A linear layer, with an adapter when one was asked for.
#[derive(Debug, Clone)]
pub struct Linear {
    base: super::nn::Linear,
    adapter: Option<(Tensor, Tensor, f64)>,
}

impl Linear {
    /// The layer at `vb` (`weight`, and `bias` when `bias`), with an adapter from `lora`
    /// (at the same path in `lora.vb`).
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder,
        lora: Option<&LoraSpec>,
    ) -> Result<Self> {
        let base = super::nn::linear(in_dim, out_dim, bias, vb.clone())?;
        let adapter = match lora {
            None => None,
            Some(spec) => {
                let at = spec.vb.pp(vb.prefix());
                let bound = 1.0 / (in_dim as f64).sqrt();
                let a = at.get_with_hints(
                    (spec.rank, in_dim),
                    A,
                    candle_nn::Init::Uniform {
                        lo: -bound,
                        up: bound,
                    },
                )?;
                let b = at.get_with_hints((out_dim, spec.rank), B, candle_nn::Init::Const(0.))?;
                Some((a, b, spec.alpha / spec.rank as f64))
            }
        };
        Ok(Self { base, adapter })
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let y = self.base.forward(xs)?;
        match &self.adapter {
            None => Ok(y),
            Some((a, b, scale)) => {
                let low = xs.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)?;
                y + (low * *scale)?
            }
        }
    }
}

/// `W + (alpha / r) B A` for an adapter's matrices.
pub fn merge(weight: &Tensor, a: &Tensor, b: &Tensor, alpha: f64) -> Result<Tensor> {
    let rank = a.dim(0)?;
    let w = weight.to_dtype(a.dtype())?;
    w + (b.matmul(a)? * (alpha / rank as f64))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// With `B = 0` an adapted layer is the base layer; with trained matrices it equals the
    /// base layer with the merged weight.
    #[test]
    fn adapter_starts_as_the_base_and_merges_exactly() -> Result<()> {
        let dev = Device::Cpu;
        let mut base = std::collections::HashMap::new();
        base.insert(
            "l.weight".to_string(),
            Tensor::randn(0f32, 1.0, (5, 3), &dev)?,
        );
        base.insert("l.bias".to_string(), Tensor::randn(0f32, 1.0, 5, &dev)?);
        let fvb = VarBuilder::from_tensors(base.clone(), DType::F32, &dev);
        let varmap = VarMap::new();
        let spec = LoraSpec {
            rank: 2,
            alpha: 4.0,
            vb: VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        };
        let adapted = Linear::new(3, 5, true, fvb.pp("l"), Some(&spec))?;
        let plain = Linear::new(3, 5, true, fvb.pp("l"), None)?;
        let x = Tensor::randn(0f32, 1.0, (2, 4, 3), &dev)?;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        assert_eq!(diff(&adapted.forward(&x)?, &plain.forward(&x)?)?, 0.0);
        let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        assert!(names.contains(&format!("l.{A}")) && names.contains(&format!("l.{B}")));
        // "Train": give B values, then compare with the merged layer.
        let vars = varmap.data().lock().unwrap();
        vars[&format!("l.{B}")].set(&Tensor::randn(0f32, 1.0, (5, 2), &dev)?)?;
        let (a, b) = (
            vars[&format!("l.{A}")].as_tensor(),
            vars[&format!("l.{B}")].as_tensor(),
        );
        let merged = merge(&base["l.weight"], a, b, 4.0)?;
        let mut m = base.clone();
        m.insert("l.weight".into(), merged);
        let merged_layer = Linear::new(
            3,
            5,
            true,
            VarBuilder::from_tensors(m, DType::F32, &dev).pp("l"),
            None,
        )?;
        let d = diff(&adapted.forward(&x)?, &merged_layer.forward(&x)?)?;
        assert!(d < 1e-5, "{d}");
        Ok(())
    }
}
