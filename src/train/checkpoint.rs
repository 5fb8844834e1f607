//! Checkpoint files: `state.safetensors` (weights, Adam moments, EMA) and `state.json` (step,
//! plan), each written through a temporary file and a rename, so a crash mid-write leaves the
//! previous checkpoint whole.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{de::DeserializeOwned, Serialize};

use crate::imageio::write_atomic;

/// The files of one checkpoint folder.
pub struct Checkpoint {
    pub dir: PathBuf,
}

impl Checkpoint {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn exists(&self) -> bool {
        self.dir.join("state.json").is_file() && self.dir.join("state.safetensors").is_file()
    }

    /// Writes tensors then metadata (the metadata names the step, so it goes last).
    pub fn save<M: Serialize>(
        &self,
        tensors: &HashMap<String, Tensor>,
        meta: &M,
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(".state.safetensors.tmp");
        candle_core::safetensors::save(tensors, &tmp).map_err(|e| {
            anyhow::anyhow!(
                "writing '{}': {} (is the disk full?)",
                tmp.display(),
                crate::model::load::error_message(&e)
            )
        })?;
        std::fs::rename(&tmp, self.dir.join("state.safetensors"))?;
        write_atomic(
            &self.dir.join("state.json"),
            serde_json::to_string_pretty(meta)?.as_bytes(),
        )?;
        Ok(())
    }

    /// The metadata alone (`state.json`).
    pub fn meta<M: DeserializeOwned>(&self) -> anyhow::Result<M> {
        let meta_path = self.dir.join("state.json");
        serde_json::from_str(&std::fs::read_to_string(&meta_path)?)
            .map_err(|e| anyhow::anyhow!("'{}': {e}", meta_path.display()))
    }

    pub fn load<M: DeserializeOwned>(&self) -> anyhow::Result<(HashMap<String, Tensor>, M)> {
        let meta: M = self.meta()?;
        let tensors =
            candle_core::safetensors::load(self.dir.join("state.safetensors"), &Device::Cpu)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "'{}': {}",
                        self.dir.display(),
                        crate::model::load::error_message(&e)
                    )
                })?;
        Ok((tensors, meta))
    }
}

/// Saves `tensors` (f32 converted to f16 when `half`) as one safetensors file, atomically.
pub fn save_weights(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
    half: bool,
) -> anyhow::Result<()> {
    let converted: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                if half {
                    v.to_dtype(candle_core::DType::F16)?
                } else {
                    v.clone()
                },
            ))
        })
        .collect::<candle_core::Result<_>>()?;
    let tmp = path.with_extension("safetensors.tmp");
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    candle_core::safetensors::save(&converted, &tmp).map_err(|e| {
        anyhow::anyhow!(
            "writing '{}': {} (is the disk full?)",
            tmp.display(),
            crate::model::load::error_message(&e)
        )
    })?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
