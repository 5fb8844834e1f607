//! Spatial transformers of the UNet (diffusers `Transformer2DModel`, `BasicTransformerBlock`,
//! `Attention`, `FeedForward` with GEGLU).
//!
//! GEGLU uses the exact (erf) GELU as diffusers does; candle-transformers 0.11 uses the tanh
//! approximation, which is one reason this crate owns its networks.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::kernels::swap_last_two;
use super::lora::{Linear, LoraSpec};
use super::nn::{self, LayerNorm};

/// Multi-head attention with `to_q`, `to_k`, `to_v` (no bias) and `to_out.0`.
#[derive(Debug, Clone)]
pub struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    slice: Option<usize>,
    /// [`nn::bf16_products`].
    bf16: bool,
}

impl CrossAttention {
    /// `context_dim` is `None` for self-attention; `lora` adds adapters to the projections.
    pub fn new(
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        dim_head: usize,
        slice: Option<usize>,
        lora: Option<&LoraSpec>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let inner = heads * dim_head;
        let context_dim = context_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: Linear::new(query_dim, inner, false, vb.pp("to_q"), lora)?,
            to_k: Linear::new(context_dim, inner, false, vb.pp("to_k"), lora)?,
            to_v: Linear::new(context_dim, inner, false, vb.pp("to_v"), lora)?,
            to_out: Linear::new(inner, query_dim, true, vb.pp("to_out.0"), lora)?,
            heads,
            slice,
            bf16: nn::bf16_products(&vb),
        })
    }

    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, n, c) = xs.dims3()?;
        xs.reshape((b, n, self.heads, c / self.heads))?
            .transpose(1, 2)?
            .reshape((b * self.heads, n, c / self.heads))?
            .contiguous()
    }

    /// `xs`: `(b, n, query_dim)`; `context`: `(b, m, context_dim)` or `None` (self-attention).
    pub fn forward(&self, xs: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let context = context.unwrap_or(xs);
        let q = self.split_heads(&self.to_q.forward(xs)?)?;
        let k = self.split_heads(&self.to_k.forward(context)?)?;
        let v = self.split_heads(&self.to_v.forward(context)?)?;
        let out = nn::attention(&q, &k, &v, self.slice, self.bf16)?;
        let (bh, n, dh) = out.dims3()?;
        let b = bh / self.heads;
        let out = out
            .reshape((b, self.heads, n, dh))?
            .transpose(1, 2)?
            .reshape((b, n, self.heads * dh))?;
        self.to_out.forward(&out)
    }
}

/// `net.0.proj` (GEGLU, erf GELU) then `net.2`.
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj: nn::Linear,
    out: nn::Linear,
}

impl FeedForward {
    pub fn new(dim: usize, mult: usize, vb: VarBuilder) -> Result<Self> {
        let inner = dim * mult;
        Ok(Self {
            proj: nn::linear(dim, inner * 2, true, vb.pp("net.0.proj"))?,
            out: nn::linear(inner, dim, true, vb.pp("net.2"))?,
        })
    }
}

impl Module for FeedForward {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.out.forward(&nn::geglu(&self.proj.forward(xs)?)?)
    }
}

/// Self-attention, cross-attention and feed-forward, each pre-normed and residual. With
/// `only_cross_attention` (diffusers' flag) the first attention attends to the text instead of
/// the image's own tokens: two cross-attentions, and no attention from every cell to every cell.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    only_cross_attention: bool,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    /// A block of `cfg.channels` channels (its heads of `cfg.channels / cfg.heads`).
    pub fn new(cfg: &Transformer2DConfig, vb: VarBuilder) -> Result<Self> {
        let (dim, heads, context_dim) = (cfg.channels, cfg.heads, cfg.context_dim);
        let (dim_head, slice, lora) = (dim / heads, cfg.attention_slice, cfg.lora.as_ref());
        let attn1_context = cfg.only_cross_attention.then_some(context_dim);
        Ok(Self {
            norm1: LayerNorm::new(dim, 1e-5, vb.pp("norm1"))?,
            attn1: CrossAttention::new(
                dim,
                attn1_context,
                heads,
                dim_head,
                slice,
                lora,
                vb.pp("attn1"),
            )?,
            only_cross_attention: cfg.only_cross_attention,
            norm2: LayerNorm::new(dim, 1e-5, vb.pp("norm2"))?,
            attn2: CrossAttention::new(
                dim,
                Some(context_dim),
                heads,
                dim_head,
                slice,
                lora,
                vb.pp("attn2"),
            )?,
            norm3: LayerNorm::new(dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::new(dim, 4, vb.pp("ff"))?,
        })
    }

    /// `xs`: `(b, n, dim)`; `context`: `(b, m, context_dim)`.
    pub fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let attn1_context = self.only_cross_attention.then_some(context);
        let xs = (self
            .attn1
            .forward(&self.norm1.forward(xs)?, attn1_context)?
            + xs)?;
        let xs = (self
            .attn2
            .forward(&self.norm2.forward(&xs)?, Some(context))?
            + xs)?;
        self.ff.forward(&self.norm3.forward(&xs)?)? + xs
    }
}

/// Hyper-parameters of one [`Transformer2D`].
#[derive(Debug, Clone, PartialEq)]
pub struct Transformer2DConfig {
    pub channels: usize,
    pub heads: usize,
    pub context_dim: usize,
    pub groups: usize,
    /// SD 1.x projects with 1x1 convolutions, SD 2.x with linear layers.
    pub use_linear_projection: bool,
    pub attention_slice: Option<usize>,
    /// Adapters on the attention projections (training a LoRA).
    pub lora: Option<LoraSpec>,
    /// The first attention attends to the text too (see [`BasicTransformerBlock`]).
    pub only_cross_attention: bool,
}

#[derive(Debug, Clone)]
enum Projection {
    Conv(nn::Conv2d),
    Linear(nn::Linear),
}

/// GroupNorm, `proj_in`, one [`BasicTransformerBlock`], `proj_out`, residual.
#[derive(Debug, Clone)]
pub struct Transformer2D {
    norm: nn::GroupNorm,
    proj_in: Projection,
    block: BasicTransformerBlock,
    proj_out: Projection,
}

impl Transformer2D {
    pub fn new(cfg: &Transformer2DConfig, vb: VarBuilder) -> Result<Self> {
        let c = cfg.channels;
        let proj = |name: &str| -> Result<Projection> {
            Ok(if cfg.use_linear_projection {
                Projection::Linear(nn::linear(c, c, true, vb.pp(name))?)
            } else {
                Projection::Conv(nn::conv2d(c, c, 1, 1, 0, vb.pp(name))?)
            })
        };
        Ok(Self {
            norm: nn::group_norm(cfg.groups, c, 1e-6, vb.pp("norm"))?,
            proj_in: proj("proj_in")?,
            block: BasicTransformerBlock::new(cfg, vb.pp("transformer_blocks.0"))?,
            proj_out: proj("proj_out")?,
        })
    }

    /// `xs`: `(b, c, h, w)`; `context`: `(b, m, context_dim)`. Returns `(b, c, h, w)`.
    pub fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let normed = self.norm.forward(xs)?;
        // (b, c, h, w) <-> (b, h*w, c), in tiles (candle's strided copy of the permuted view
        // went element by element).
        let to_tokens = |t: &Tensor| swap_last_two(&t.reshape((b, c, h * w))?);
        let tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed)?)?,
            Projection::Linear(lin) => lin.forward(&to_tokens(&normed)?)?,
        };
        let tokens = self.block.forward(&tokens, context)?;
        let to_image = |t: &Tensor| swap_last_two(t)?.reshape((b, c, h, w));
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_image(&tokens)?)?,
            Projection::Linear(lin) => to_image(&lin.forward(&tokens)?)?,
        };
        out + xs
    }
}
