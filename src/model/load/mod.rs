//! One entry point, [`load`], for every place a model can come from: a diffusers folder, a
//! single LDM checkpoint (`.ckpt` / `.safetensors`), a Hugging Face hub id, or the built-in
//! model shipped in `models/`.
//!
//! Each source becomes three [`store::TensorStore`]s under diffusers names, so the networks only
//! ever see one layout. Errors name the file and the tensor, and say what to try.

pub mod diffusers;
pub mod file;
pub mod hub;
pub mod ldm;
pub mod mapped;
pub mod safetensors;
pub mod store;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::clip::{ClipConfig, ClipTextModel, ClipTokenizer};
use super::unet::{UNet2DConditionModel, UNetConfig};
use super::vae::{AutoencoderKL, VaeConfig};
use crate::settings::{SamplingDefaults, SchedulerConfig};
use store::TensorStore;

/// Why a model could not be loaded. Messages follow `what failed: value (hint)`.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model '{0}' not found: not a file, a folder, nor a hub id like 'org/name'")]
    NotFound(String),
    #[error("reading '{path}': {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("'{dir}' is missing {what} (a diffusers model folder has unet/, vae/, text_encoder/ and tokenizer/)")]
    MissingPart { dir: PathBuf, what: String },
    #[error("config '{path}': {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("weights '{path}': {msg}")]
    Weights { path: PathBuf, msg: String },
    #[error("loading the {what}: {msg}")]
    Build { what: String, msg: String },
    #[error("tokenizer '{path}': {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("the built-in model is not in '{0}' (it lives in models/builtin of the source tree; set INSTRUCTDIFFUSION_MODELS to the models folder, or pass --model)")]
    NoBuiltin(PathBuf),
    #[error("hub model '{repo}': {msg}")]
    Hub { repo: String, msg: String },
}

impl LoadError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        LoadError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// The miniature model shipped in `models/builtin`.
    Builtin,
    /// A diffusers-layout folder.
    Diffusers(PathBuf),
    /// One LDM checkpoint file.
    SingleFile(PathBuf),
    /// A hub repository (`org/name`), or one file in it (`org/name/file.ckpt`).
    Hub {
        repo: String,
        file: Option<String>,
        revision: String,
    },
}

impl ModelSource {
    /// Reads what a user typed: an existing path, `builtin`, or a hub id (`org/name[@rev]`,
    /// `org/name/file.safetensors`).
    pub fn parse(s: &str) -> Result<Self, LoadError> {
        let p = Path::new(s);
        if s.is_empty() || s == "builtin" {
            return Ok(ModelSource::Builtin);
        }
        if p.is_dir() {
            return Ok(ModelSource::Diffusers(p.to_path_buf()));
        }
        if p.is_file() {
            return Ok(ModelSource::SingleFile(p.to_path_buf()));
        }
        let (id, revision) = match s.split_once('@') {
            Some((id, rev)) => (id, rev.to_string()),
            None => (s, "main".to_string()),
        };
        let parts: Vec<&str> = id.split('/').collect();
        let valid = |x: &str| {
            !x.is_empty()
                && x.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if parts.len() >= 2 && parts.iter().all(|x| valid(x)) && !s.starts_with('.') {
            let repo = format!("{}/{}", parts[0], parts[1]);
            let file = (parts.len() > 2).then(|| parts[2..].join("/"));
            return Ok(ModelSource::Hub {
                repo,
                file,
                revision,
            });
        }
        Err(LoadError::NotFound(s.to_string()))
    }

    /// A short description for status lines and reports.
    pub fn describe(&self) -> String {
        match self {
            ModelSource::Builtin => "built-in".into(),
            ModelSource::Diffusers(p) | ModelSource::SingleFile(p) => p.display().to_string(),
            ModelSource::Hub { repo, file, .. } => match file {
                Some(f) => format!("{repo}/{f}"),
                None => repo.clone(),
            },
        }
    }
}

/// A progress observer for downloads: `(file, bytes done, bytes total)`.
pub type DownloadProgress<'a> = dyn FnMut(&str, u64, u64) + Send + 'a;

/// How to load.
pub struct LoadOptions<'a> {
    pub device: Device,
    pub dtype: DType,
    /// A diffusers-style folder of `config.json` files for single-file checkpoints.
    pub config_dir: Option<PathBuf>,
    /// Attention slice (rows of `batch * heads` at once); `None` computes all at once.
    pub attention_slice: Option<usize>,
    pub progress: Option<&'a mut DownloadProgress<'a>>,
    /// Hub endpoint and cache; `None` reads the `HF_*` environment variables.
    pub hub: Option<hub::HubSettings>,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            config_dir: None,
            attention_slice: None,
            progress: None,
            hub: None,
        }
    }
}

/// A loaded model: the three networks, the tokenizer and the sampling facts of its files.
pub struct Model {
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    pub text_encoder: ClipTextModel,
    pub tokenizer: ClipTokenizer,
    pub scheduler: SchedulerConfig,
    pub defaults: SamplingDefaults,
    pub device: Device,
    /// The dtype the networks compute in (inputs are made in it).
    pub dtype: DType,
    /// The dtype the weights are held in: `dtype`, except bf16 weights on the CPU, which
    /// compute in f32 ([`crate::model::kernels::bf16`]).
    pub weights_dtype: DType,
    pub source: String,
    /// Things the user may want to know about how the files were read.
    pub notes: Vec<String>,
}

/// The folder of the built-in model: `$INSTRUCTDIFFUSION_MODELS/builtin`, else `models/builtin`
/// beside the executable or in the source tree.
pub fn builtin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("INSTRUCTDIFFUSION_MODELS") {
        return PathBuf::from(dir).join("builtin");
    }
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(4) {
            let cand = up.join("models/builtin");
            if cand.join("model_index.json").is_file() {
                return cand;
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/builtin")
}

/// Loads a model from any [`ModelSource`].
pub fn load(source: &ModelSource, mut opts: LoadOptions) -> Result<Model, LoadError> {
    let mut model = match source {
        ModelSource::Builtin => {
            let dir = builtin_dir();
            if !dir.join("unet/config.json").is_file() {
                return Err(LoadError::NoBuiltin(dir));
            }
            diffusers::load_folder(&dir, &mut opts)
        }
        ModelSource::Diffusers(dir) => diffusers::load_folder(dir, &mut opts),
        ModelSource::SingleFile(path) => load_single_file(path, &mut opts),
        ModelSource::Hub {
            repo,
            file,
            revision,
        } => {
            let settings = opts.hub.clone().unwrap_or_else(hub::HubSettings::from_env);
            let local = hub::fetch(
                &settings,
                repo,
                revision,
                file.as_deref(),
                opts.progress.as_deref_mut(),
            )?;
            match local {
                hub::Fetched::Folder(dir) => diffusers::load_folder(&dir, &mut opts),
                hub::Fetched::File(path) => load_single_file(&path, &mut opts),
            }
        }
    }?;
    model.source = source.describe();
    if model.device.is_cpu() && model.weights_dtype == DType::BF16 {
        let kernel = crate::model::kernels::bf16::Bf16Kernel::detect();
        model.notes.push(kernel.describe().to_string());
    }
    Ok(model)
}

/// A candle error as one line for users: without the backtrace candle attaches when
/// `RUST_BACKTRACE` is set, contexts joined with ": ".
pub fn error_message(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => error_message(inner),
        E::Context { inner, context } => format!("{context}: {}", error_message(inner)),
        E::WithPath { inner, path } => format!("'{}': {}", path.display(), error_message(inner)),
        other => other.to_string(),
    }
}

fn build_err(what: &str) -> impl Fn(candle_core::Error) -> LoadError + '_ {
    move |e| LoadError::Build {
        what: what.to_string(),
        msg: error_message(&e),
    }
}

/// Builds the three networks from their stores.
pub(crate) fn build(
    unet_cfg: &UNetConfig,
    vae_cfg: &VaeConfig,
    clip_cfg: &ClipConfig,
    stores: [TensorStore; 3],
    opts: &mut LoadOptions,
) -> Result<(UNet2DConditionModel, AutoencoderKL, ClipTextModel), LoadError> {
    let [mut unet_store, mut vae_store, mut clip_store] = stores;
    // The weights are read ahead; the progress observer (the editor's status line) hears of
    // every chunk read.
    let total: u64 = [&unet_store, &vae_store, &clip_store]
        .iter()
        .map(|s| s.prefetch_bytes())
        .sum();
    let mut done = 0u64;
    // Floating-point weights are held in the weights' dtype from the moment they are read (an
    // f32 file loaded as bf16 never holds its f32 copy).
    let keep = opts.dtype;
    for s in [&mut unet_store, &mut vae_store, &mut clip_store] {
        s.prefetch(keep, &mut |bytes| {
            done += bytes;
            if let Some(p) = opts.progress.as_deref_mut() {
                p("weights", done, total);
            }
        });
    }
    let vb =
        |s: TensorStore| VarBuilder::from_backend(Box::new(s), opts.dtype, opts.device.clone());
    let clip_root = clip_store.contains("text_model.embeddings.token_embedding.weight");
    let unet = UNet2DConditionModel::new(unet_cfg, opts.attention_slice, vb(unet_store))
        .map_err(build_err("unet"))?;
    let vae = AutoencoderKL::new(vae_cfg, vb(vae_store)).map_err(build_err("vae"))?;
    let clip_vb = vb(clip_store);
    let clip_vb = if clip_root {
        clip_vb.pp("text_model")
    } else {
        clip_vb
    };
    let clip = ClipTextModel::new(clip_cfg, clip_vb).map_err(build_err("text encoder"))?;
    Ok((unet, vae, clip))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| LoadError::Config {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Loads a single LDM checkpoint, with SD 1.5's architecture unless `opts.config_dir` is set.
fn load_single_file(path: &Path, opts: &mut LoadOptions) -> Result<Model, LoadError> {
    let (mut unet_cfg, vae_cfg, clip_cfg, scheduler) = match &opts.config_dir {
        Some(dir) => {
            let c = diffusers::read_configs(dir)?;
            (c.unet, c.vae, c.clip, c.scheduler)
        }
        None => (
            UNetConfig::sd15_instruct(),
            VaeConfig::sd15(),
            ClipConfig::vit_l_14(),
            SchedulerConfig::default(),
        ),
    };
    let file = file::open(path)?;
    let split = ldm::split(
        path,
        file,
        unet_cfg.layers_per_block,
        vae_cfg.block_out_channels.len(),
    )?;
    let mut notes = Vec::new();
    if opts.config_dir.is_none() {
        match split.unet_in_channels {
            Some(8) | None => {}
            Some(4) => {
                return Err(LoadError::Weights {
                    path: path.to_path_buf(),
                    msg: "the UNet takes 4 input channels: this is a text-to-image Stable \
                          Diffusion model, not an instruction-editing one (which takes 8)"
                        .into(),
                })
            }
            Some(c) => {
                notes.push(format!("the UNet takes {c} input channels"));
                unet_cfg.in_channels = c;
            }
        }
    }
    if split.used_ema {
        notes.push("used the EMA weights (model_ema.*)".into());
    }
    let defaults = if split.used_ema {
        SamplingDefaults::pix2pix()
    } else {
        SamplingDefaults::instructdiffusion_release()
    };
    let (unet, vae, text_encoder) = build(
        &unet_cfg,
        &vae_cfg,
        &clip_cfg,
        [split.unet, split.vae, split.clip],
        opts,
    )
    .map_err(|e| match (e, &opts.config_dir) {
        (LoadError::Build { what, msg }, None) => LoadError::Build {
            what,
            msg: format!(
                "{msg} (a single file is read as Stable Diffusion 1.5; for another architecture \
                 pass --config DIR, a folder with unet/, vae/ and text_encoder/ config.json files)"
            ),
        },
        (e, _) => e,
    })?;
    let tokenizer = match &opts.config_dir {
        Some(dir) => diffusers::tokenizer(dir, clip_cfg.max_position_embeddings, &mut notes)?,
        None => ClipTokenizer::bundled(clip_cfg.max_position_embeddings),
    };
    Ok(Model {
        unet,
        vae,
        text_encoder,
        tokenizer,
        scheduler,
        defaults,
        device: opts.device.clone(),
        dtype: crate::model::nn::compute_dtype_for(opts.dtype, &opts.device),
        weights_dtype: opts.dtype,
        source: path.display().to_string(),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(ModelSource::parse("builtin").unwrap(), ModelSource::Builtin);
        assert_eq!(
            ModelSource::parse("timbrooks/instruct-pix2pix").unwrap(),
            ModelSource::Hub {
                repo: "timbrooks/instruct-pix2pix".into(),
                file: None,
                revision: "main".into()
            }
        );
        assert_eq!(
            ModelSource::parse("org/name/sub/model.ckpt@v2").unwrap(),
            ModelSource::Hub {
                repo: "org/name".into(),
                file: Some("sub/model.ckpt".into()),
                revision: "v2".into()
            }
        );
        let err = ModelSource::parse("./no/such/file.ckpt").unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
        assert!(ModelSource::parse("nonexistent.ckpt").is_err());
    }
}
