//! Hugging Face hub models, downloaded into and read from the standard cache, so files fetched
//! by Python's `huggingface_hub` are reused and the other way round.
//!
//! Honours `HF_HOME` (cache at `$HF_HOME/hub`), `HF_HUB_CACHE`, `HF_ENDPOINT` (a mirror or a
//! local server) and `HF_HUB_OFFLINE` (cache only, no network).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use super::{DownloadProgress, LoadError};

/// What a hub source resolved to on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// A snapshot folder in the diffusers layout.
    Folder(PathBuf),
    /// One checkpoint file.
    File(PathBuf),
}

/// Files of a diffusers folder: `(path, alternatives, required)`.
const FOLDER_FILES: &[(&str, &[&str], bool)] = &[
    ("model_index.json", &[], false),
    ("unet/config.json", &[], true),
    (
        "unet/diffusion_pytorch_model.safetensors",
        &["unet/diffusion_pytorch_model.bin"],
        true,
    ),
    ("vae/config.json", &[], true),
    (
        "vae/diffusion_pytorch_model.safetensors",
        &["vae/diffusion_pytorch_model.bin"],
        true,
    ),
    ("text_encoder/config.json", &[], true),
    (
        "text_encoder/model.safetensors",
        &["text_encoder/pytorch_model.bin"],
        true,
    ),
    ("tokenizer/tokenizer.json", &[], false),
    ("tokenizer/vocab.json", &[], false),
    ("tokenizer/merges.txt", &[], false),
    ("scheduler/scheduler_config.json", &[], false),
    ("instructdiffusion.json", &[], false),
];

/// Where the hub is and where its files are cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// `None` is huggingface.co.
    pub endpoint: Option<String>,
    /// The hub cache folder (`$HF_HOME/hub` by default).
    pub cache_dir: PathBuf,
    /// Use the cache only.
    pub offline: bool,
}

impl HubSettings {
    /// Reads `HF_ENDPOINT`, `HF_HUB_CACHE`, `HF_HOME` and `HF_HUB_OFFLINE` as `huggingface_hub`
    /// does.
    pub fn from_env() -> Self {
        let cache_dir = match std::env::var_os("HF_HUB_CACHE") {
            Some(p) => PathBuf::from(p),
            None => Cache::from_env().path().clone(),
        };
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        Self {
            endpoint: std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()),
            cache_dir,
            offline,
        }
    }
}

struct Forward<'b, 'a> {
    file: String,
    done: u64,
    total: u64,
    cb: Option<&'b mut DownloadProgress<'a>>,
}

impl hf_hub::api::Progress for Forward<'_, '_> {
    fn init(&mut self, size: usize, _: &str) {
        self.total = size as u64;
        self.done = 0;
        if let Some(cb) = self.cb.as_mut() {
            cb(&self.file, 0, self.total);
        }
    }
    fn update(&mut self, size: usize) {
        self.done += size as u64;
        if let Some(cb) = self.cb.as_mut() {
            cb(&self.file, self.done, self.total);
        }
    }
    fn finish(&mut self) {}
}

fn is_not_found(e: &ApiError) -> bool {
    matches!(e, ApiError::RequestError(inner) if matches!(**inner, ureq::Error::Status(404, _)))
}

enum Outcome {
    Got(PathBuf),
    Absent,
}

/// Downloads `repo`'s files at `revision` (or reads them from the cache) and returns where they
/// are. `file` picks one checkpoint file instead of a diffusers folder.
pub fn fetch<'a>(
    hub: &HubSettings,
    repo: &str,
    revision: &str,
    file: Option<&str>,
    mut progress: Option<&mut DownloadProgress<'a>>,
) -> Result<Fetched, LoadError> {
    let err = |msg: String| LoadError::Hub {
        repo: repo.to_string(),
        msg,
    };
    let hub_repo = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
    let cached = Cache::new(hub.cache_dir.clone()).repo(hub_repo.clone());
    let api = if hub.offline {
        None
    } else {
        let mut builder =
            ApiBuilder::from_cache(Cache::new(hub.cache_dir.clone())).with_progress(false);
        if let Some(e) = &hub.endpoint {
            builder = builder.with_endpoint(e.clone());
        }
        let api = builder.build().map_err(|e| err(e.to_string()))?;
        Some(api.repo(hub_repo))
    };
    let mut get = |name: &str| -> Result<Outcome, LoadError> {
        if let Some(p) = cached.get(name) {
            return Ok(Outcome::Got(p));
        }
        let Some(api) = &api else {
            return Ok(Outcome::Absent);
        };
        let fwd = Forward {
            file: name.to_string(),
            done: 0,
            total: 0,
            cb: progress.as_deref_mut(),
        };
        match api.download_with_progress(name, fwd) {
            Ok(p) => Ok(Outcome::Got(p)),
            Err(e) if is_not_found(&e) => Ok(Outcome::Absent),
            Err(e) => Err(err(format!(
                "downloading '{name}': {e} (check the network, HF_ENDPOINT, or set \
                 HF_HUB_OFFLINE=1 to use the cache only)"
            ))),
        }
    };
    let missing = |name: &str| {
        err(if hub.offline {
            format!(
                "'{name}' is not in the cache at '{}' and HF_HUB_OFFLINE is set",
                hub.cache_dir.display()
            )
        } else {
            format!("the repository has no '{name}' (at revision '{revision}')")
        })
    };
    if let Some(name) = file {
        return match get(name)? {
            Outcome::Got(p) => Ok(Fetched::File(p)),
            Outcome::Absent => Err(missing(name)),
        };
    }
    let mut snapshot: Option<PathBuf> = None;
    for (name, alternatives, required) in FOLDER_FILES {
        let mut found = None;
        for candidate in std::iter::once(name).chain(alternatives.iter()) {
            if let Outcome::Got(p) = get(candidate)? {
                found = Some((p, *candidate));
                break;
            }
        }
        match found {
            Some((p, candidate)) => {
                snapshot.get_or_insert_with(|| snapshot_root(&p, candidate));
            }
            None if *required => return Err(missing(name)),
            None => {}
        }
    }
    snapshot
        .map(Fetched::Folder)
        .ok_or_else(|| missing("unet/config.json"))
}

/// `.../snapshots/<commit>/unet/config.json` -> `.../snapshots/<commit>`.
fn snapshot_root(path: &Path, name: &str) -> PathBuf {
    let depth = Path::new(name).components().count();
    path.ancestors()
        .nth(depth)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_root_strips_the_file_path() {
        let p = Path::new("/c/models--a--b/snapshots/abc/unet/config.json");
        assert_eq!(
            snapshot_root(p, "unet/config.json"),
            Path::new("/c/models--a--b/snapshots/abc")
        );
    }
}
