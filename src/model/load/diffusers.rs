//! diffusers-layout folders (`model_index.json`, `unet/`, `vae/`, `text_encoder/`,
//! `tokenizer/`, `scheduler/`), as written by `save_pretrained` and by this project's trainer.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::store::TensorStore;
use super::{build, file, read_json, LoadError, LoadOptions, Model};
use crate::model::clip::{ClipConfig, ClipConfigJson, ClipTokenizer};
use crate::model::unet::{UNetConfig, UNetConfigJson};
use crate::model::vae::{VaeConfig, VaeConfigJson};
use crate::settings::{SamplingDefaults, SchedulerConfig, DEFAULTS_FILE};

/// The architecture and schedule read from a folder's `config.json` files.
pub struct Configs {
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    pub clip: ClipConfig,
    pub scheduler: SchedulerConfig,
}

fn part(dir: &Path, sub: &str, name: &str) -> Result<PathBuf, LoadError> {
    let p = dir.join(sub).join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(LoadError::MissingPart {
            dir: dir.to_path_buf(),
            what: format!("{sub}/{name}"),
        })
    }
}

/// Reads `unet/`, `vae/`, `text_encoder/` configs and the optional scheduler config.
pub fn read_configs(dir: &Path) -> Result<Configs, LoadError> {
    let unet_path = part(dir, "unet", "config.json")?;
    let unet_json: UNetConfigJson = read_json(&unet_path)?;
    let unet = UNetConfig::try_from(unet_json).map_err(|msg| LoadError::Config {
        path: unet_path,
        msg,
    })?;
    let vae_json: VaeConfigJson = read_json(&part(dir, "vae", "config.json")?)?;
    let clip_path = part(dir, "text_encoder", "config.json")?;
    let clip_json: ClipConfigJson = read_json(&clip_path)?;
    let clip = ClipConfig::try_from(clip_json).map_err(|msg| LoadError::Config {
        path: clip_path,
        msg,
    })?;
    let sched_path = dir.join("scheduler/scheduler_config.json");
    let scheduler = if sched_path.is_file() {
        read_json(&sched_path)?
    } else {
        SchedulerConfig::default()
    };
    Ok(Configs {
        unet,
        vae: vae_json.into(),
        clip,
        scheduler,
    })
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: std::collections::BTreeMap<String, String>,
}

/// Opens the weights of one component folder: safetensors (sharded or not, fp16 variant
/// accepted) or PyTorch `.bin`.
fn component_store(
    dir: &Path,
    sub: &str,
    stem: &str,
    what: &str,
) -> Result<TensorStore, LoadError> {
    let folder = dir.join(sub);
    let mut store = TensorStore::new(what);
    for name in [
        format!("{stem}.safetensors"),
        format!("{stem}.fp16.safetensors"),
        format!("{stem}.bin"),
    ] {
        let p = folder.join(&name);
        if p.is_file() {
            store.add_identity(&p, file::open(&p)?);
            return Ok(store);
        }
    }
    let index = folder.join(format!("{stem}.safetensors.index.json"));
    if index.is_file() {
        let idx: ShardIndex = read_json(&index)?;
        let mut shards: Vec<&String> = idx.weight_map.values().collect();
        shards.sort();
        shards.dedup();
        for shard in shards {
            let p = folder.join(shard);
            store.add_identity(&p, file::open(&p)?);
        }
        return Ok(store);
    }
    Err(LoadError::MissingPart {
        dir: dir.to_path_buf(),
        what: format!("{sub}/{stem}.safetensors"),
    })
}

/// Old diffusers VAEs name the mid attention `query/key/value/proj_attn`.
fn alias_old_vae_attention(store: &mut TensorStore) {
    let renames = [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ];
    let names: Vec<String> = store.names().cloned().collect();
    for n in names {
        for (old, new) in renames {
            if n.contains(".attentions.0") && n.contains(old) {
                store.alias(&n, n.replace(old, new));
            }
        }
    }
}

/// The folder's tokenizer: its `tokenizer.json`, else its `vocab.json` and `merges.txt` (all SD
/// 1.5's folder ships), else the bundled CLIP tokenizer.
pub fn tokenizer(
    dir: &Path,
    length: usize,
    notes: &mut Vec<String>,
) -> Result<ClipTokenizer, LoadError> {
    let p = dir.join("tokenizer/tokenizer.json");
    if p.is_file() {
        return ClipTokenizer::from_file(&p, length)
            .map_err(|msg| LoadError::Tokenizer { path: p, msg });
    }
    let (vocab, merges) = (
        dir.join("tokenizer/vocab.json"),
        dir.join("tokenizer/merges.txt"),
    );
    if vocab.is_file() && merges.is_file() {
        return ClipTokenizer::from_vocab_merges(&vocab, &merges, length)
            .map_err(|msg| LoadError::Tokenizer { path: vocab, msg });
    }
    notes.push(
        "no tokenizer files (tokenizer.json, or vocab.json and merges.txt): used the bundled CLIP ViT-L/14 tokenizer".into(),
    );
    Ok(ClipTokenizer::bundled(length))
}

/// What sampling defaults the folder asks for: its `instructdiffusion.json`, else those of the
/// pipeline its `model_index.json` names.
pub fn defaults(dir: &Path) -> Result<SamplingDefaults, LoadError> {
    let own = dir.join(DEFAULTS_FILE);
    if own.is_file() {
        return read_json(&own);
    }
    #[derive(Deserialize)]
    struct Index {
        #[serde(rename = "_class_name", default)]
        class_name: String,
    }
    let index = dir.join("model_index.json");
    let class = if index.is_file() {
        read_json::<Index>(&index)?.class_name
    } else {
        String::new()
    };
    Ok(if class.contains("InstructPix2Pix") {
        SamplingDefaults::pix2pix()
    } else {
        SamplingDefaults::instructdiffusion_release()
    })
}

/// Loads a diffusers folder.
pub fn load_folder(dir: &Path, opts: &mut LoadOptions) -> Result<Model, LoadError> {
    if !dir.is_dir() {
        return Err(LoadError::NotFound(dir.display().to_string()));
    }
    let cfg = read_configs(dir)?;
    let unet = component_store(dir, "unet", "diffusion_pytorch_model", "unet")?;
    let mut vae = component_store(dir, "vae", "diffusion_pytorch_model", "vae")?;
    alias_old_vae_attention(&mut vae);
    let clip = component_store(dir, "text_encoder", "model", "text encoder")
        .or_else(|_| component_store(dir, "text_encoder", "pytorch_model", "text encoder"))?;
    let mut notes = Vec::new();
    let tokenizer = tokenizer(dir, cfg.clip.max_position_embeddings, &mut notes)?;
    let (unet, vae, text_encoder) = build(&cfg.unet, &cfg.vae, &cfg.clip, [unet, vae, clip], opts)?;
    Ok(Model {
        unet,
        vae,
        text_encoder,
        tokenizer,
        scheduler: cfg.scheduler,
        defaults: defaults(dir)?,
        device: opts.device.clone(),
        dtype: crate::model::nn::compute_dtype_for(opts.dtype, &opts.device),
        weights_dtype: opts.dtype,
        source: dir.display().to_string(),
        notes,
    })
}
