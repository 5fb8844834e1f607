//! The UNet's down, middle and up blocks (diffusers `CrossAttnDownBlock2D`/`DownBlock2D`,
//! `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D`/`UpBlock2D`, `Downsample2D`, `Upsample2D`).
//!
//! A block with `heads = None` is the plain (attention-free) variant.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{Transformer2D, Transformer2DConfig};
use super::nn;
use super::resnet::{ResnetBlock2D, ResnetConfig};

/// What every block of one UNet shares.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockShared {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
    pub context_dim: usize,
    pub use_linear_projection: bool,
    pub attention_slice: Option<usize>,
    pub lora: Option<super::lora::LoraSpec>,
}

impl BlockShared {
    fn resnet(&self, cin: usize, cout: usize, vb: VarBuilder) -> Result<ResnetBlock2D> {
        let cfg = ResnetConfig {
            in_channels: cin,
            out_channels: cout,
            temb_channels: Some(self.temb_channels),
            groups: self.groups,
            eps: self.eps,
        };
        ResnetBlock2D::new(&cfg, vb)
    }

    fn transformer(&self, channels: usize, heads: Heads, vb: VarBuilder) -> Result<Transformer2D> {
        let cfg = Transformer2DConfig {
            channels,
            heads: heads.count,
            only_cross_attention: heads.only_cross_attention,
            context_dim: self.context_dim,
            groups: self.groups,
            use_linear_projection: self.use_linear_projection,
            attention_slice: self.attention_slice,
            lora: self.lora.clone(),
        };
        Transformer2D::new(&cfg, vb)
    }
}

/// The attention of a block: its head count and whether its first attention attends to the
/// text instead of the image (diffusers' `only_cross_attention`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heads {
    pub count: usize,
    pub only_cross_attention: bool,
}

impl Heads {
    /// Self-attention then cross-attention, as in Stable Diffusion.
    pub fn usual(count: usize) -> Self {
        Self {
            count,
            only_cross_attention: false,
        }
    }
}

/// A 3x3 stride-2 convolution with padding 1 (`downsamplers.0.conv`).
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: nn::Conv2d,
}

impl Downsample2D {
    pub fn new(channels: usize, padding: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: nn::conv2d(channels, channels, 3, 2, padding, vb.pp("conv"))?,
        })
    }
}

impl Module for Downsample2D {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.conv.forward(xs)
    }
}

/// Nearest-neighbour x2 upsampling then a 3x3 convolution (`upsamplers.0.conv`).
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: nn::Conv2d,
}

impl Upsample2D {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: nn::conv2d(channels, channels, 3, 1, 1, vb.pp("conv"))?,
        })
    }

    /// Upsamples to `size` when given (odd skip sizes), else to twice the input.
    pub fn forward(&self, xs: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let up = match size {
            Some((th, tw)) if (th, tw) != (2 * h, 2 * w) => xs.upsample_nearest2d(th, tw)?,
            _ => super::kernels::upsample_nearest_2x(xs)?,
        };
        self.conv.forward(&up)
    }
}

/// One down block: `layers` resnets (each followed by a transformer when `heads` is set) and
/// an optional downsampler.
#[derive(Debug, Clone)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    pub fn new(
        cin: usize,
        cout: usize,
        layers: usize,
        heads: Option<Heads>,
        add_downsample: bool,
        shared: &BlockShared,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::new();
        for i in 0..layers {
            let c = if i == 0 { cin } else { cout };
            resnets.push(shared.resnet(c, cout, vb.pp(format!("resnets.{i}")))?);
            if let Some(heads) = heads {
                attentions.push(shared.transformer(
                    cout,
                    heads,
                    vb.pp(format!("attentions.{i}")),
                )?);
            }
        }
        let downsampler = if add_downsample {
            Some(Downsample2D::new(cout, 1, vb.pp("downsamplers.0"))?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Returns the block output and the skip activations it hands to the up path.
    pub fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut xs = xs.clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = resnet.forward(&xs, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, context)?;
            }
            skips.push(xs.clone());
        }
        if let Some(down) = &self.downsampler {
            xs = down.forward(&xs)?;
            skips.push(xs.clone());
        }
        Ok((xs, skips))
    }
}

/// Resnet, transformer, resnet at the lowest resolution.
#[derive(Debug, Clone)]
pub struct MidBlock {
    resnet_0: ResnetBlock2D,
    attention: Transformer2D,
    resnet_1: ResnetBlock2D,
}

impl MidBlock {
    pub fn new(
        channels: usize,
        heads: Heads,
        shared: &BlockShared,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            resnet_0: shared.resnet(channels, channels, vb.pp("resnets.0"))?,
            attention: shared.transformer(channels, heads, vb.pp("attentions.0"))?,
            resnet_1: shared.resnet(channels, channels, vb.pp("resnets.1"))?,
        })
    }

    pub fn forward(&self, xs: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let xs = self.resnet_0.forward(xs, Some(temb))?;
        let xs = self.attention.forward(&xs, context)?;
        self.resnet_1.forward(&xs, Some(temb))
    }
}

/// One up block: `layers` resnets fed with skip activations (each followed by a transformer when
/// `heads` is set) and an optional upsampler.
#[derive(Debug, Clone)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    upsampler: Option<Upsample2D>,
}

/// Channel counts around one up block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpChannels {
    /// Channels of the matching down block's input (the last skip).
    pub input: usize,
    /// Channels coming from the previous up block.
    pub prev_output: usize,
    pub output: usize,
}

impl UpBlock {
    pub fn new(
        ch: UpChannels,
        layers: usize,
        heads: Option<Heads>,
        add_upsample: bool,
        shared: &BlockShared,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::new();
        for i in 0..layers {
            let skip = if i == layers - 1 { ch.input } else { ch.output };
            let cin = if i == 0 { ch.prev_output } else { ch.output };
            resnets.push(shared.resnet(cin + skip, ch.output, vb.pp(format!("resnets.{i}")))?);
            if let Some(heads) = heads {
                attentions.push(shared.transformer(
                    ch.output,
                    heads,
                    vb.pp(format!("attentions.{i}")),
                )?);
            }
        }
        let upsampler = if add_upsample {
            Some(Upsample2D::new(ch.output, vb.pp("upsamplers.0"))?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// Number of skip activations this block consumes.
    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// `skips` in the order the down path produced them; consumed from the end.
    pub fn forward(
        &self,
        xs: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        upsample_size: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = &skips[skips.len() - 1 - i];
            xs = resnet.forward(&Tensor::cat(&[&xs, skip], 1)?, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, context)?;
            }
        }
        match &self.upsampler {
            Some(up) => up.forward(&xs, upsample_size),
            None => Ok(xs),
        }
    }
}
