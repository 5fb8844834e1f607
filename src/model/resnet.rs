//! The residual block shared by the UNet and the VAE (diffusers `ResnetBlock2D`).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::nn;

/// Hyper-parameters of one [`ResnetBlock2D`].
#[derive(Debug, Clone, PartialEq)]
pub struct ResnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the time embedding, `None` in the VAE.
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
}

/// `norm1 -> SiLU -> conv1 (+ time_emb_proj) -> norm2 -> SiLU -> conv2`, plus the shortcut.
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2d,
    time_emb_proj: Option<nn::Linear>,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2d,
    conv_shortcut: Option<nn::Conv2d>,
}

impl ResnetBlock2D {
    pub fn new(cfg: &ResnetConfig, vb: VarBuilder) -> Result<Self> {
        let (cin, cout) = (cfg.in_channels, cfg.out_channels);
        let time_emb_proj = match cfg.temb_channels {
            Some(t) => Some(nn::linear(t, cout, true, vb.pp("time_emb_proj"))?),
            None => None,
        };
        let conv_shortcut = if cin != cout {
            Some(nn::conv2d(cin, cout, 1, 1, 0, vb.pp("conv_shortcut"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: nn::group_norm(cfg.groups, cin, cfg.eps, vb.pp("norm1"))?,
            conv1: nn::conv2d(cin, cout, 3, 1, 1, vb.pp("conv1"))?,
            time_emb_proj,
            norm2: nn::group_norm(cfg.groups, cout, cfg.eps, vb.pp("norm2"))?,
            conv2: nn::conv2d(cout, cout, 3, 1, 1, vb.pp("conv2"))?,
            conv_shortcut,
        })
    }

    /// `xs`: `(b, in, h, w)`; `temb`: `(b, temb_channels)` or `None`. Returns `(b, out, h, w)`.
    pub fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let mut h = self.conv1.forward(&self.norm1.forward_silu(xs)?)?;
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj
                .forward(&super::nn::silu(temb)?)?
                .unsqueeze(2)?
                .unsqueeze(3)?;
            h = h.broadcast_add(&t)?;
        }
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(xs)?,
            None => xs.clone(),
        };
        shortcut + h
    }
}
