//! The image autoencoder (diffusers `AutoencoderKL`): pixels <-> 4-channel latents at 1/8 size.
//!
//! InstructDiffusion conditions on the posterior **mean** of the encoder (LDM's
//! `encode_first_stage(x).mode()`), unscaled; the sampled latent is divided by the scaling
//! factor before decoding. [`AutoencoderKL::encode_mean`] exposes that mean, which
//! candle-transformers 0.11 does not. Reference: diffusers/models/autoencoders/vae.py.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::nn;
use super::resnet::{ResnetBlock2D, ResnetConfig};
use super::unet_blocks::{Downsample2D, Upsample2D};

/// Architecture of an [`AutoencoderKL`].
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    /// Multiplies latents going into the UNet (0.18215 for SD 1.x).
    pub scaling_factor: f64,
}

impl VaeConfig {
    /// SD 1.5's VAE (runwayml/stable-diffusion-v1-5 `vae/config.json`).
    pub fn sd15() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
        }
    }

    /// The built-in miniature model's VAE: 4x downscaling to 8 channels (32x32x8 latents at
    /// 128 px, 6x fewer numbers than pixels). A probe on this machine (PyTorch, the same
    /// data and recipe) reached 20 dB after 600 steps with this shape against ~16 dB for 8x
    /// downscaling with 16 channels and the 4-level net; the shallower net learns faster and
    /// keeps the detail that masks and keypoint discs need. The scaling factor is measured
    /// after training (1 / std of the latents).
    pub fn tiny() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![32, 64, 64],
            layers_per_block: 1,
            latent_channels: 8,
            norm_num_groups: 8,
            scaling_factor: 1.0,
        }
    }

    /// The diffusers `config.json` for this VAE.
    pub fn to_json(&self) -> serde_json::Value {
        let n = self.block_out_channels.len();
        serde_json::json!({
            "_class_name": "AutoencoderKL",
            "act_fn": "silu",
            "block_out_channels": self.block_out_channels,
            "down_block_types": vec!["DownEncoderBlock2D"; n],
            "up_block_types": vec!["UpDecoderBlock2D"; n],
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "latent_channels": self.latent_channels,
            "layers_per_block": self.layers_per_block,
            "norm_num_groups": self.norm_num_groups,
            "scaling_factor": self.scaling_factor,
        })
    }

    /// Pixel size of one latent cell (8 for SD).
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// Mirror of diffusers' `vae/config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfigJson {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    #[serde(default = "sd_scale")]
    pub scaling_factor: f64,
}

fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn four() -> usize {
    4
}
fn thirty_two() -> usize {
    32
}
fn sd_scale() -> f64 {
    0.18215
}

impl From<VaeConfigJson> for VaeConfig {
    fn from(j: VaeConfigJson) -> Self {
        Self {
            in_channels: j.in_channels,
            out_channels: j.out_channels,
            block_out_channels: j.block_out_channels,
            layers_per_block: j.layers_per_block,
            latent_channels: j.latent_channels,
            norm_num_groups: j.norm_num_groups,
            scaling_factor: j.scaling_factor,
        }
    }
}

/// Single-head self-attention over pixels with a residual (`mid_block.attentions.0`).
#[derive(Debug, Clone)]
struct AttentionBlock {
    group_norm: nn::GroupNorm,
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    /// [`nn::bf16_products`].
    bf16: bool,
}

impl AttentionBlock {
    fn new(channels: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            group_norm: nn::group_norm(groups, channels, 1e-6, vb.pp("group_norm"))?,
            to_q: nn::linear(channels, channels, true, vb.pp("to_q"))?,
            to_k: nn::linear(channels, channels, true, vb.pp("to_k"))?,
            to_v: nn::linear(channels, channels, true, vb.pp("to_v"))?,
            to_out: nn::linear(channels, channels, true, vb.pp("to_out.0"))?,
            bf16: nn::bf16_products(&vb),
        })
    }
}

impl Module for AttentionBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let tokens = self
            .group_norm
            .forward(xs)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?;
        let q = self.to_q.forward(&tokens)?.contiguous()?;
        let k = self.to_k.forward(&tokens)?.contiguous()?;
        let v = self.to_v.forward(&tokens)?.contiguous()?;
        let out = self
            .to_out
            .forward(&nn::attention(&q, &k, &v, Some(1), self.bf16)?)?;
        out.transpose(1, 2)?.reshape((b, c, h, w))? + xs
    }
}

/// Resnet, attention, resnet (the VAE's `mid_block`).
#[derive(Debug, Clone)]
struct VaeMidBlock {
    resnet_0: ResnetBlock2D,
    attention: AttentionBlock,
    resnet_1: ResnetBlock2D,
}

impl VaeMidBlock {
    fn new(channels: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        let rc = resnet_cfg(channels, channels, groups);
        Ok(Self {
            resnet_0: ResnetBlock2D::new(&rc, vb.pp("resnets.0"))?,
            attention: AttentionBlock::new(channels, groups, vb.pp("attentions.0"))?,
            resnet_1: ResnetBlock2D::new(&rc, vb.pp("resnets.1"))?,
        })
    }
}

impl Module for VaeMidBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.resnet_0.forward(xs, None)?;
        let xs = self.attention.forward(&xs)?;
        self.resnet_1.forward(&xs, None)
    }
}

fn resnet_cfg(cin: usize, cout: usize, groups: usize) -> ResnetConfig {
    ResnetConfig {
        in_channels: cin,
        out_channels: cout,
        temb_channels: None,
        groups,
        eps: 1e-6,
    }
}

#[derive(Debug, Clone)]
struct Encoder {
    conv_in: nn::Conv2d,
    down: Vec<(Vec<ResnetBlock2D>, Option<Downsample2D>)>,
    mid: VaeMidBlock,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2d,
}

impl Encoder {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let mut down = Vec::with_capacity(ch.len());
        for (i, &cout) in ch.iter().enumerate() {
            let vb_b = vb.pp(format!("down_blocks.{i}"));
            let cin = if i == 0 { ch[0] } else { ch[i - 1] };
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    let c = if j == 0 { cin } else { cout };
                    ResnetBlock2D::new(&resnet_cfg(c, cout, g), vb_b.pp(format!("resnets.{j}")))
                })
                .collect::<Result<Vec<_>>>()?;
            let downsample = if i + 1 < ch.len() {
                Some(Downsample2D::new(cout, 0, vb_b.pp("downsamplers.0"))?)
            } else {
                None
            };
            down.push((resnets, downsample));
        }
        let last = *ch.last().expect("validated non-empty");
        Ok(Self {
            conv_in: nn::conv2d(cfg.in_channels, ch[0], 3, 1, 1, vb.pp("conv_in"))?,
            down,
            mid: VaeMidBlock::new(last, g, vb.pp("mid_block"))?,
            norm_out: nn::group_norm(g, last, 1e-6, vb.pp("conv_norm_out"))?,
            conv_out: nn::conv2d(last, 2 * cfg.latent_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }
}

impl Module for Encoder {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(xs)?;
        for (resnets, downsample) in &self.down {
            for r in resnets {
                xs = r.forward(&xs, None)?;
            }
            if let Some(d) = downsample {
                // diffusers pads (0, 1, 0, 1) before the unpadded stride-2 conv.
                xs = d.forward(&xs.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?)?;
            }
        }
        let xs = self.mid.forward(&xs)?;
        self.conv_out.forward(&self.norm_out.forward_silu(&xs)?)
    }
}

#[derive(Debug, Clone)]
struct Decoder {
    conv_in: nn::Conv2d,
    mid: VaeMidBlock,
    up: Vec<(Vec<ResnetBlock2D>, Option<Upsample2D>)>,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2d,
}

impl Decoder {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let g = cfg.norm_num_groups;
        let mut up = Vec::with_capacity(rev.len());
        for (i, &cout) in rev.iter().enumerate() {
            let vb_b = vb.pp(format!("up_blocks.{i}"));
            let cin = if i == 0 { rev[0] } else { rev[i - 1] };
            let resnets = (0..=cfg.layers_per_block)
                .map(|j| {
                    let c = if j == 0 { cin } else { cout };
                    ResnetBlock2D::new(&resnet_cfg(c, cout, g), vb_b.pp(format!("resnets.{j}")))
                })
                .collect::<Result<Vec<_>>>()?;
            let upsample = if i + 1 < rev.len() {
                Some(Upsample2D::new(cout, vb_b.pp("upsamplers.0"))?)
            } else {
                None
            };
            up.push((resnets, upsample));
        }
        let first = *rev.last().expect("validated non-empty");
        Ok(Self {
            conv_in: nn::conv2d(cfg.latent_channels, rev[0], 3, 1, 1, vb.pp("conv_in"))?,
            mid: VaeMidBlock::new(rev[0], g, vb.pp("mid_block"))?,
            up,
            norm_out: nn::group_norm(g, first, 1e-6, vb.pp("conv_norm_out"))?,
            conv_out: nn::conv2d(first, cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }
}

impl Module for Decoder {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.mid.forward(&self.conv_in.forward(xs)?)?;
        for (resnets, upsample) in &self.up {
            for r in resnets {
                xs = r.forward(&xs, None)?;
            }
            if let Some(u) = upsample {
                xs = u.forward(&xs, None)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&xs)?)
    }
}

/// The VAE: [`encode_mean`](Self::encode_mean) and [`decode`](Self::decode).
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: nn::Conv2d,
    post_quant_conv: nn::Conv2d,
    pub config: VaeConfig,
}

impl AutoencoderKL {
    pub fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.block_out_channels.is_empty()
            || cfg
                .block_out_channels
                .iter()
                .any(|c| c % cfg.norm_num_groups != 0)
        {
            candle_core::bail!(
                "invalid VAE config: channels {:?} with {} groups",
                cfg.block_out_channels,
                cfg.norm_num_groups
            )
        }
        let l2 = 2 * cfg.latent_channels;
        Ok(Self {
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
            quant_conv: nn::conv2d(l2, l2, 1, 1, 0, vb.pp("quant_conv"))?,
            post_quant_conv: nn::conv2d(
                cfg.latent_channels,
                cfg.latent_channels,
                1,
                1,
                0,
                vb.pp("post_quant_conv"),
            )?,
            config: cfg.clone(),
        })
    }

    /// Posterior parameters `(mean, logvar)`, each `(b, latent, h/8, w/8)`, from pixels
    /// `(b, 3, h, w)` in `[-1, 1]`.
    pub fn encode_moments(&self, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        let moments = self.quant_conv.forward(&self.encoder.forward(xs)?)?;
        let l = self.config.latent_channels;
        Ok((
            moments.narrow(1, 0, l)?,
            moments.narrow(1, l, l)?.clamp(-30., 20.)?,
        ))
    }

    /// The posterior mean (`mode()`), unscaled: InstructDiffusion's image conditioning.
    pub fn encode_mean(&self, xs: &Tensor) -> Result<Tensor> {
        self.encode_moments(xs).map(|(mean, _)| mean)
    }

    /// Pixels `(b, 3, h, w)` in about `[-1, 1]` from **unscaled** latents `(b, latent, h/8, w/8)`
    /// (divide sampled latents by [`VaeConfig::scaling_factor`] first).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.decoder
            .forward(&self.post_quant_conv.forward(latents)?)
    }
}
