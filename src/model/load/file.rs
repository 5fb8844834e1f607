//! Opening one weights file: safetensors (read tensor by tensor) or a PyTorch zip checkpoint, told
//! apart by their first bytes, with errors that say what the file is and how to convert it.
//!
//! PyTorch checkpoints are read by candle's pickle interpreter, which builds plain values and
//! never imports or calls anything named in the file (unlike Python's `torch.load`).

use std::io::Read;
use std::path::Path;

use candle_core::pickle::PthTensors;

use super::store::WeightsFile;
use super::LoadError;

/// The container format of a weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    TorchZip,
    /// A pickle without the zip container (`torch.save(..., _use_new_zipfile_serialization=False)`
    /// or PyTorch < 1.6).
    TorchLegacy,
    /// The even older tar container.
    TorchTar,
    Unknown,
}

/// Sniffs the format from the first bytes of `path`.
pub fn sniff(path: &Path) -> Result<Format, LoadError> {
    let mut head = [0u8; 512];
    let mut f = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(LoadError::io(path, e)),
        }
    }
    let head = &head[..n];
    Ok(if head.starts_with(b"PK\x03\x04") {
        Format::TorchZip
    } else if head.len() >= 9 && head[8] == b'{' {
        Format::Safetensors
    } else if head.first() == Some(&0x80) {
        Format::TorchLegacy
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Format::TorchTar
    } else {
        Format::Unknown
    })
}

const CONVERT_HINT: &str = "convert it with Python: `import torch, safetensors.torch; \
sd = torch.load(path, weights_only=True); sd = sd.get('state_dict', sd); \
safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items() if hasattr(v, 'contiguous')}, 'model.safetensors')` \
(or re-save it with `torch.save(obj, path, pickle_protocol=2)`, PyTorch's default zip format)";

/// Opens `path`, preferring the `state_dict` entry of a PyTorch checkpoint when present.
pub fn open(path: &Path) -> Result<WeightsFile, LoadError> {
    let bad = |msg: String| LoadError::Weights {
        path: path.to_path_buf(),
        msg,
    };
    match sniff(path)? {
        Format::Safetensors => {
            let st = super::safetensors::SafetensorsFile::open(path).map_err(bad)?;
            Ok(WeightsFile::Safetensors(st))
        }
        Format::TorchZip => {
            let pth = match PthTensors::new(path, Some("state_dict")) {
                Err(e) if e.to_string().contains("key state_dict not found") => {
                    PthTensors::new(path, None)
                }
                other => other,
            };
            let pth = pth.map_err(|e| {
                let msg = super::error_message(&e);
                if msg.contains("unknown op-code") || msg.contains("unsupported") {
                    bad(format!(
                        "unsupported pickle in the checkpoint ({msg}); {CONVERT_HINT}"
                    ))
                } else {
                    bad(format!("{msg} (is the checkpoint truncated?)"))
                }
            })?;
            if pth.tensor_infos().is_empty() {
                return Err(bad(format!(
                    "the checkpoint holds no tensors; {CONVERT_HINT}"
                )));
            }
            Ok(WeightsFile::Pth(pth))
        }
        Format::TorchLegacy => Err(bad(format!(
            "legacy (non-zip) PyTorch serialization is not supported; {CONVERT_HINT}"
        ))),
        Format::TorchTar => Err(bad(format!(
            "the pre-1.0 PyTorch tar format is not supported; {CONVERT_HINT}"
        ))),
        Format::Unknown => Err(bad(
            "not a safetensors file nor a PyTorch zip checkpoint".to_string()
        )),
    }
}
