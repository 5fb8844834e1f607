//! A weights backend for `VarBuilder` that reads tensors by (possibly remapped) name from
//! memory-mapped safetensors or PyTorch zip checkpoints, and reports problems with the file,
//! the tensor name and the expected and found shapes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

/// One open weights file.
pub enum WeightsFile {
    Safetensors(MmapedSafetensors),
    Pth(candle_core::pickle::PthTensors),
}

impl WeightsFile {
    /// Every tensor name in the file.
    pub fn names(&self) -> Vec<String> {
        match self {
            WeightsFile::Safetensors(st) => st.tensors().into_iter().map(|(n, _)| n).collect(),
            WeightsFile::Pth(p) => p.tensor_infos().keys().cloned().collect(),
        }
    }

    /// The stored shape of `name`, without reading its data.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self {
            WeightsFile::Safetensors(st) => st.get(name).ok().map(|v| v.shape().to_vec()),
            WeightsFile::Pth(p) => p.tensor_infos().get(name).map(|i| i.layout.dims().to_vec()),
        }
    }

    fn load(&self, name: &str) -> Result<Option<Tensor>> {
        match self {
            WeightsFile::Safetensors(st) => st.load(name, &Device::Cpu).map(Some),
            WeightsFile::Pth(p) => p.get(name),
        }
    }
}

/// Tensors visible under their diffusers names, each pointing at a file and a stored name.
pub struct TensorStore {
    files: Vec<(PathBuf, Arc<WeightsFile>)>,
    index: HashMap<String, (usize, String)>,
    /// Which network this store feeds, for messages ("unet", "vae", "text encoder").
    pub what: String,
}

impl TensorStore {
    pub fn new(what: &str) -> Self {
        Self {
            files: Vec::new(),
            index: HashMap::new(),
            what: what.to_string(),
        }
    }

    /// Adds a file; returns its slot for [`insert`](Self::insert).
    pub fn add_file(&mut self, path: &Path, file: WeightsFile) -> usize {
        self.add_shared(path, Arc::new(file))
    }

    /// Adds a file that other stores also read (one checkpoint holding several networks).
    pub fn add_shared(&mut self, path: &Path, file: Arc<WeightsFile>) -> usize {
        self.files.push((path.to_path_buf(), file));
        self.files.len() - 1
    }

    /// Makes `stored` (in file `slot`) visible as `name`.
    pub fn insert(&mut self, name: String, slot: usize, stored: String) {
        self.index.insert(name, (slot, stored));
    }

    /// Adds a file exposing every tensor under its own name.
    pub fn add_identity(&mut self, path: &Path, file: WeightsFile) {
        let names = file.names();
        let slot = self.add_file(path, file);
        for n in names {
            self.insert(n.clone(), slot, n);
        }
    }

    /// Whether `name` is visible.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Number of visible tensors.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Visible names, for remapping passes.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }

    /// Exposes `from` also as `to` (used for renamed layouts).
    pub fn alias(&mut self, from: &str, to: String) {
        if let Some(entry) = self.index.get(from).cloned() {
            self.index.insert(to, entry);
        }
    }

    fn file_of(&self, slot: usize) -> &Path {
        &self.files[slot].0
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        let Some((slot, stored)) = self.index.get(name) else {
            let any_file = self
                .files
                .first()
                .map(|(p, _)| format!(" in '{}'", p.display()))
                .unwrap_or_default();
            candle_core::bail!(
                "missing tensor '{name}'{any_file} for the {} ({} tensors found{})",
                self.what,
                self.index.len(),
                if self.index.is_empty() {
                    "; is this the right file?"
                } else {
                    ""
                }
            )
        };
        let file = self.file_of(*slot);
        let loaded = self.files[*slot].1.load(stored).map_err(|e| {
            candle_core::Error::Msg(format!(
                "reading tensor '{stored}' from '{}': {} (the file may be truncated or corrupt)",
                file.display(),
                super::error_message(&e)
            ))
        })?;
        loaded.ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "tensor '{stored}' is listed in '{}' but holds no data",
                file.display()
            ))
        })
    }
}

/// Drops trailing size-1 dimensions: LDM stores the VAE's attention projections as 1x1
/// convolutions `(c, c, 1, 1)` where diffusers has linear weights `(c, c)`.
fn squeeze_trailing(dims: &[usize]) -> &[usize] {
    let mut n = dims.len();
    while n > 0 && dims[n - 1] == 1 {
        n -= 1;
    }
    &dims[..n]
}

impl SimpleBackend for TensorStore {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let t = self.load(name)?;
        let t = if t.shape() == &s {
            t
        } else if squeeze_trailing(t.dims()) == squeeze_trailing(s.dims()) {
            t.reshape(s)?
        } else {
            let (slot, stored) = &self.index[name];
            candle_core::bail!(
                "tensor '{stored}' in '{}' for the {}: expected shape {:?}, found {:?}",
                self.file_of(*slot).display(),
                self.what,
                s.dims(),
                t.dims()
            )
        };
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.load(name)?.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeezes_only_trailing_ones() {
        assert_eq!(squeeze_trailing(&[4, 4, 1, 1]), &[4, 4]);
        assert_eq!(squeeze_trailing(&[1, 4]), &[1, 4]);
        assert_eq!(squeeze_trailing(&[4, 1, 4]), &[4, 1, 4]);
    }

    /// float8 (E4M3) tensors, as some released checkpoints store them (and the way a larger
    /// built-in model would fit its 25 MB budget), widen to the requested dtype with their stored
    /// values.
    #[test]
    fn float8_tensors_load_widened() {
        use candle_nn::var_builder::SimpleBackend;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let values = [0.5f32, -1.25, 0.015625, 3.0, -448.0, 0.0];
        let t = Tensor::new(&values, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        candle_core::safetensors::save(
            &HashMap::from([("w".to_string(), t.to_dtype(DType::F8E4M3).unwrap())]),
            &path,
        )
        .unwrap();
        let mut store = TensorStore::new("test");
        store.add_identity(&path, super::super::file::open(&path).unwrap());
        for dtype in [DType::F32, DType::F16] {
            let w = store
                .get(
                    (2, 3).into(),
                    "w",
                    candle_nn::Init::Const(0.),
                    dtype,
                    &Device::Cpu,
                )
                .unwrap();
            assert_eq!(w.dtype(), dtype);
            let got: Vec<f32> = w
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(got, values);
        }
    }
}
