//! The CLIP text encoder (transformers `CLIPTextModel`) and its tokenizer.
//!
//! Stable Diffusion conditions on the last hidden state after `final_layer_norm`, for 77 tokens
//! padded with the end token; the empty prompt is the "no text" conditioning.
//! Reference: transformers/models/clip/modeling_clip.py.

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::kernels;
use super::nn::{self, LayerNorm};

/// The MLP activation of a CLIP text model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP, SD 1.x).
    QuickGelu,
    /// Exact GELU (OpenCLIP, SD 2.x).
    Gelu,
}

/// Architecture of a [`ClipTextModel`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
}

impl ClipConfig {
    /// OpenAI CLIP ViT-L/14's text model, SD 1.5's text encoder
    /// (openai/clip-vit-large-patch14 `config.json`, `text_config`).
    pub fn vit_l_14() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            layer_norm_eps: 1e-5,
            activation: Activation::QuickGelu,
        }
    }
}

impl ClipConfig {
    /// The built-in miniature model's text encoder (CLIP's vocabulary, trained from scratch).
    pub fn tiny() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 64,
            intermediate_size: 256,
            num_hidden_layers: 3,
            num_attention_heads: 4,
            max_position_embeddings: 77,
            layer_norm_eps: 1e-5,
            activation: Activation::QuickGelu,
        }
    }

    /// The transformers `config.json` for this text model.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["CLIPTextModel"],
            "model_type": "clip_text_model",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "layer_norm_eps": self.layer_norm_eps,
            "hidden_act": match self.activation { Activation::QuickGelu => "quick_gelu", Activation::Gelu => "gelu" },
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,
            "projection_dim": self.hidden_size,
        })
    }
}

/// Mirror of transformers' `text_encoder/config.json` (`CLIPTextConfig`).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfigJson {
    #[serde(default = "vocab")]
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
}

fn vocab() -> usize {
    49408
}
fn positions() -> usize {
    77
}
fn eps() -> f64 {
    1e-5
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}

impl TryFrom<ClipConfigJson> for ClipConfig {
    type Error = String;

    fn try_from(j: ClipConfigJson) -> std::result::Result<Self, String> {
        let activation = match j.hidden_act.as_str() {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            other => return Err(format!("unsupported CLIP hidden_act '{other}'")),
        };
        if j.num_attention_heads == 0 || !j.hidden_size.is_multiple_of(j.num_attention_heads) {
            return Err(format!(
                "CLIP hidden_size {} does not split into {} heads",
                j.hidden_size, j.num_attention_heads
            ));
        }
        Ok(Self {
            vocab_size: j.vocab_size,
            hidden_size: j.hidden_size,
            intermediate_size: j.intermediate_size,
            num_hidden_layers: j.num_hidden_layers,
            num_attention_heads: j.num_attention_heads,
            max_position_embeddings: j.max_position_embeddings,
            layer_norm_eps: j.layer_norm_eps,
            activation,
        })
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    layer_norm2: LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    heads: usize,
    activation: Activation,
}

impl EncoderLayer {
    fn new(cfg: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        let attn = vb.pp("self_attn");
        Ok(Self {
            layer_norm1: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            q_proj: nn::linear_few_rows(d, d, true, attn.pp("q_proj"))?,
            k_proj: nn::linear_few_rows(d, d, true, attn.pp("k_proj"))?,
            v_proj: nn::linear_few_rows(d, d, true, attn.pp("v_proj"))?,
            out_proj: nn::linear_few_rows(d, d, true, attn.pp("out_proj"))?,
            layer_norm2: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: nn::linear_few_rows(d, i, true, vb.pp("mlp.fc1"))?,
            fc2: nn::linear_few_rows(i, d, true, vb.pp("mlp.fc2"))?,
            heads: cfg.num_attention_heads,
            activation: cfg.activation,
        })
    }

    fn attention(&self, xs: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let (b, n, d) = xs.dims3()?;
        let dh = d / self.heads;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, n, self.heads, dh))?
                .transpose(1, 2)?
                .contiguous()
        };
        let scale = 1.0 / (dh as f64).sqrt();
        let q = split((self.q_proj.forward(xs)? * scale)?)?;
        let k = split(self.k_proj.forward(xs)?)?;
        let v = split(self.v_proj.forward(xs)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(causal_mask)?;
        let out = nn::softmax_last_dim(&scores)?.matmul(&v)?;
        self.out_proj
            .forward(&out.transpose(1, 2)?.reshape((b, n, d))?)
    }

    fn forward(&self, xs: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let xs = (self.attention(&self.layer_norm1.forward(xs)?, causal_mask)? + xs)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&xs)?)?;
        let h = match self.activation {
            // x * sigmoid(1.702 x) = silu(1.702 x) / 1.702, with the one-pass SiLU kernel.
            Activation::QuickGelu => nn::silu(&h.affine(1.702, 0.)?)?.affine(1. / 1.702, 0.)?,
            Activation::Gelu => h.gelu_erf()?,
        };
        self.fc2.forward(&h)? + xs
    }
}

/// CLIP's text transformer: token ids `(b, n)` -> hidden states `(b, n, hidden)`.
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    token_embedding: candle_nn::Embedding,
    position_embedding: candle_nn::Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    pub config: ClipConfig,
}

impl ClipTextModel {
    /// `vb` is rooted where `embeddings.token_embedding.weight` lives (inside `text_model.`).
    pub fn new(cfg: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let emb = vb.pp("embeddings");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(cfg, vb.pp(format!("encoder.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            token_embedding: embedding(cfg.vocab_size, d, emb.pp("token_embedding"))?,
            position_embedding: embedding(
                cfg.max_position_embeddings,
                d,
                emb.pp("position_embedding"),
            )?,
            layers,
            final_layer_norm: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("final_layer_norm"))?,
            config: cfg.clone(),
        })
    }

    fn causal_mask(n: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0. }))
            .collect();
        Tensor::from_vec(mask, (n, n), device)?.to_dtype(dtype)
    }

    /// `ids`: `(b, n)` u32 token ids, `n <= max_position_embeddings`. Returns the last hidden
    /// state after `final_layer_norm`, `(b, n, hidden)`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, n) = ids.dims2()?;
        if n > self.config.max_position_embeddings {
            candle_core::bail!(
                "{n} tokens exceed the text encoder's {} positions",
                self.config.max_position_embeddings
            )
        }
        let positions = Tensor::arange(0u32, n as u32, ids.device())?;
        let mut xs = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = Self::causal_mask(n, xs.dtype(), ids.device())?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &mask)?;
        }
        self.final_layer_norm.forward(&xs)
    }
}

/// CLIP's BPE tokenizer, padding and truncating to a fixed length as SD does.
pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    end_id: u32,
    pad_id: u32,
    length: usize,
}

impl ClipTokenizer {
    /// CLIP ViT-L/14's `tokenizer.json`, compiled in.
    pub const BUNDLED_JSON: &'static [u8] =
        include_bytes!("../../models/builtin/tokenizer/tokenizer.json");

    /// Loads a Hugging Face `tokenizer.json` holding CLIP's vocabulary.
    pub fn from_file(path: &Path, length: usize) -> std::result::Result<Self, String> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| e.to_string())?;
        Self::with(inner, length)
    }

    /// The CLIP ViT-L/14 tokenizer compiled into the binary, so that every model (and folders
    /// that ship only `vocab.json`/`merges.txt`) can tokenize without extra files.
    pub fn bundled(length: usize) -> Self {
        let inner = tokenizers::Tokenizer::from_bytes(Self::BUNDLED_JSON)
            .expect("the bundled tokenizer parses");
        Self::with(inner, length).expect("the bundled tokenizer is CLIP's")
    }

    /// CLIP's tokenizer over a folder's own `vocab.json` and `merges.txt` (the files of
    /// transformers' slow `CLIPTokenizer`, all that Stable Diffusion folders ship): the bundled
    /// tokenizer's normalizer and pre-tokenizer with the folder's vocabulary and merges.
    pub fn from_vocab_merges(
        vocab: &Path,
        merges: &Path,
        length: usize,
    ) -> std::result::Result<Self, String> {
        use tokenizers::models::bpe::BPE;
        use tokenizers::processors::roberta::RobertaProcessing;
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .unk_token("<|endoftext|>".into())
            .end_of_word_suffix("</w>".into())
            .build()
            .map_err(|e| format!("{} / {}: {e}", vocab.display(), merges.display()))?;
        let id = |t: &str| {
            tokenizers::Model::token_to_id(&bpe, t)
                .ok_or_else(|| format!("{} has no '{t}' token (is it CLIP's?)", vocab.display()))
        };
        let (start, end) = (id("<|startoftext|>")?, id("<|endoftext|>")?);
        let mut inner = tokenizers::Tokenizer::from_bytes(Self::BUNDLED_JSON)
            .expect("the bundled tokenizer parses");
        inner.with_model(bpe);
        inner.with_post_processor(Some(
            RobertaProcessing::new(
                ("<|endoftext|>".into(), end),
                ("<|startoftext|>".into(), start),
            )
            .trim_offsets(false)
            .add_prefix_space(false),
        ));
        Self::with(inner, length)
    }

    fn with(inner: tokenizers::Tokenizer, length: usize) -> std::result::Result<Self, String> {
        let end_id = inner
            .token_to_id("<|endoftext|>")
            .ok_or("the tokenizer has no '<|endoftext|>' token (is it CLIP's?)")?;
        Ok(Self {
            inner,
            end_id,
            pad_id: end_id,
            length,
        })
    }

    /// Token ids of `text`: start token, at most `length - 2` text tokens, end token, then
    /// padding to `length` (LDM's `FrozenCLIPEmbedder`: truncation, `padding="max_length"`).
    pub fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, String> {
        let enc = self.inner.encode(text, true).map_err(|e| e.to_string())?;
        let mut ids = enc.get_ids().to_vec();
        if ids.len() > self.length {
            ids.truncate(self.length - 1);
            ids.push(self.end_id);
        }
        ids.resize(self.length, self.pad_id);
        Ok(ids)
    }

    /// How many text tokens of `text` fall past the encoder's window (shown to users).
    pub fn overflow(&self, text: &str) -> usize {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().len().saturating_sub(self.length))
            .unwrap_or(0)
    }
}

/// Encodes prompts to `(prompts.len(), length, hidden)` embeddings, on the CPU one share of
/// the prompts per thread ([`kernels::in_shares`]; with one thread, one batch: a product of
/// `2 x 77` rows runs faster than two of 77).
pub fn embed_prompts(
    tokenizer: &ClipTokenizer,
    model: &ClipTextModel,
    prompts: &[&str],
    device: &Device,
) -> Result<Tensor> {
    let mut ids = Vec::new();
    for prompt in prompts {
        let row = tokenizer
            .encode(prompt)
            .map_err(|e| candle_core::Error::Msg(format!("tokenizing {prompt:?}: {e}")))?;
        ids.extend(row);
    }
    let ids = Tensor::from_vec(ids, (prompts.len(), ()), device)?;
    if !device.is_cpu() {
        return model.forward(&ids);
    }
    // One prompt per thread: 77-row products split poorly across threads.
    kernels::in_shares(prompts.len(), |r| {
        model.forward(&ids.narrow(0, r.start, r.len())?)
    })
}

/// An embedding table (candle-nn's initialisation), in the compute dtype: a lookup reads
/// rows, it multiplies nothing.
fn embedding(rows: usize, dim: usize, vb: VarBuilder) -> Result<candle_nn::Embedding> {
    let init = candle_nn::Init::Randn {
        mean: 0.,
        stdev: 1.,
    };
    let table = vb.get_with_hints_dtype((rows, dim), "weight", init, nn::compute_dtype(&vb))?;
    Ok(candle_nn::Embedding::new(table, dim))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_tokenizer() -> ClipTokenizer {
        let p =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/builtin/tokenizer/tokenizer.json");
        ClipTokenizer::from_file(&p, 77).expect("the shipped tokenizer loads")
    }

    /// A folder with only `vocab.json` and `merges.txt` (as SD 1.5's) tokenizes as the full
    /// `tokenizer.json` does.
    #[test]
    fn vocab_and_merges_tokenize_as_the_tokenizer_json() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/builtin/tokenizer");
        let slow =
            ClipTokenizer::from_vocab_merges(&dir.join("vocab.json"), &dir.join("merges.txt"), 77)
                .expect("the built-in model's vocabulary loads");
        let fast = shared_tokenizer();
        for text in [
            "a photo of a cat",
            "Apply a blue semi-transparent mask to the rightmost dog!",
            "put a red circle on the man's left shoulder, please",
            "Make the image sharper.   Déjà vu, naïve café 42x",
            "",
        ] {
            assert_eq!(
                slow.encode(text).unwrap(),
                fast.encode(text).unwrap(),
                "{text}"
            );
        }
        let err =
            ClipTokenizer::from_vocab_merges(&dir.join("merges.txt"), &dir.join("vocab.json"), 77);
        assert!(err.is_err(), "swapped files must be refused");
    }

    #[test]
    fn tokenizer_gives_the_reference_ids() {
        let t = shared_tokenizer();
        let ids = t.encode("a photo of a cat").unwrap();
        assert_eq!(&ids[..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
        assert!(ids[7..].iter().all(|&i| i == 49407));
        assert_eq!(ids.len(), 77);
        let empty = t.encode("").unwrap();
        assert_eq!(empty[0], 49406);
        assert!(empty[1..].iter().all(|&i| i == 49407));
    }

    /// Prompts encoded in one batch get the embeddings each gets alone.
    #[test]
    fn a_batch_of_prompts_embeds_each_as_alone() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let model = ClipTextModel::new(&ClipConfig::tiny(), vb)?;
        crate::train::init_weights(&varmap, 3)?;
        let t = shared_tokenizer();
        let prompts = ["make the sky red", "", "add a star"];
        let both = embed_prompts(&t, &model, &prompts, &dev)?;
        assert_eq!(both.dims(), &[3, 77, ClipConfig::tiny().hidden_size]);
        for (i, p) in prompts.iter().enumerate() {
            let alone = embed_prompts(&t, &model, &[p], &dev)?;
            let diff: f32 = (both.narrow(0, i, 1)? - alone)?
                .abs()?
                .max_all()?
                .to_scalar()?;
            assert!(diff < 1e-5, "{p:?}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn long_prompts_are_truncated_keeping_the_end_token() {
        let t = shared_tokenizer();
        let long = "cat ".repeat(100);
        let ids = t.encode(&long).unwrap();
        assert_eq!(ids.len(), 77);
        assert_eq!(ids[76], 49407);
        assert_eq!(ids[75], 2368);
        assert_eq!(t.overflow(&long), 25);
    }

    #[test]
    fn quick_gelu_parses_and_bad_heads_are_rejected() {
        let j: ClipConfigJson = serde_json::from_str(
            r#"{"hidden_size": 30, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}"#,
        )
        .unwrap();
        assert!(ClipConfig::try_from(j).unwrap_err().contains("4 heads"));
    }
}
