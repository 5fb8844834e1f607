//! A weights backend for `VarBuilder` that reads tensors by (possibly remapped) name from
//! memory-mapped safetensors or PyTorch zip checkpoints, and reports problems with the file,
//! the tensor name and the expected and found shapes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

/// One open weights file.
pub enum WeightsFile {
    Safetensors(super::safetensors::SafetensorsFile),
    Pth(candle_core::pickle::PthTensors),
}

impl WeightsFile {
    /// Every tensor name in the file.
    pub fn names(&self) -> Vec<String> {
        match self {
            WeightsFile::Safetensors(st) => st.names(),
            WeightsFile::Pth(p) => p.tensor_infos().keys().cloned().collect(),
        }
    }

    /// The stored shape of `name`, without reading its data.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self {
            WeightsFile::Safetensors(st) => st.shape(name),
            WeightsFile::Pth(p) => p.tensor_infos().get(name).map(|i| i.layout.dims().to_vec()),
        }
    }

    fn load(&self, name: &str) -> Result<Option<Tensor>> {
        match self {
            WeightsFile::Safetensors(st) => st.load(name),
            WeightsFile::Pth(p) => p.get(name),
        }
    }

    /// [`Self::load`], floating-point tensors converted to `dtype` as they are read.
    fn load_as(&self, name: &str, dtype: DType) -> Result<Option<Tensor>> {
        match self {
            WeightsFile::Safetensors(st) => st.load_as(name, dtype),
            WeightsFile::Pth(_) => super::safetensors::as_float(self.load(name)?, dtype),
        }
    }
}

/// Tensors read ahead by [`TensorStore::prefetch`]: per (file slot, stored name), the tensor
/// and how many visible names still have to take it.
type Ready = std::sync::Mutex<HashMap<(usize, String), (Tensor, usize)>>;

/// Tensors visible under their diffusers names, each pointing at a file and a stored name.
pub struct TensorStore {
    files: Vec<(PathBuf, Arc<WeightsFile>)>,
    index: HashMap<String, (usize, String)>,
    ready: Ready,
    /// Which network this store feeds, for messages ("unet", "vae", "text encoder").
    pub what: String,
}

impl TensorStore {
    pub fn new(what: &str) -> Self {
        Self {
            files: Vec::new(),
            index: HashMap::new(),
            ready: Default::default(),
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

    /// Reads every visible tensor of the safetensors files now, in parallel (the networks then
    /// take them one by one, each handed over once: no copy stays behind). A tensor that fails
    /// to read is left for [`SimpleBackend::get`] to read again and report.
    /// Floating-point tensors are held in `keep` (the weights' dtype) from the moment they are
    /// read. `on_read(bytes)` is called after each chunk (about 64 MB) is read.
    pub fn prefetch(&mut self, keep: DType, on_read: &mut dyn FnMut(u64)) {
        use rayon::prelude::*;
        let mut jobs = self.prefetch_jobs();
        // Largest first, so the parallel reads of a chunk end together.
        jobs.sort_by_key(|(k, _)| std::cmp::Reverse(self.stored_bytes(k)));
        let mut got: HashMap<(usize, String), (Tensor, usize)> = HashMap::new();
        let mut rest = jobs.as_slice();
        while !rest.is_empty() {
            let (mut n, mut bytes) = (0, 0u64);
            while n < rest.len() && (n == 0 || bytes < 64 << 20) {
                bytes += self.stored_bytes(&rest[n].0);
                n += 1;
            }
            let files = &self.files;
            got.par_extend(rest[..n].par_iter().filter_map(|(key, uses)| {
                let t = files[key.0].1.load_as(&key.1, keep).ok().flatten()?;
                Some((key.clone(), (t, *uses)))
            }));
            on_read(bytes);
            rest = &rest[n..];
        }
        self.ready = std::sync::Mutex::new(got);
    }

    /// Bytes [`Self::prefetch`] will read.
    pub fn prefetch_bytes(&self) -> u64 {
        self.prefetch_jobs()
            .iter()
            .map(|(k, _)| self.stored_bytes(k))
            .sum()
    }

    /// Each stored safetensors tensor some visible name maps to, with how many names do.
    fn prefetch_jobs(&self) -> Vec<((usize, String), usize)> {
        let mut wanted: HashMap<(usize, String), usize> = HashMap::new();
        for (slot, stored) in self.index.values() {
            if matches!(*self.files[*slot].1, WeightsFile::Safetensors(_)) {
                *wanted.entry((*slot, stored.clone())).or_default() += 1;
            }
        }
        wanted.into_iter().collect()
    }

    fn stored_bytes(&self, (slot, stored): &(usize, String)) -> u64 {
        match &*self.files[*slot].1 {
            WeightsFile::Safetensors(st) => st.bytes(stored).unwrap_or(0) as u64,
            WeightsFile::Pth(_) => 0,
        }
    }

    /// A prefetched tensor, removed once every name that maps to it has taken it.
    fn take_ready(&self, slot: usize, stored: &str) -> Option<Tensor> {
        let mut ready = self.ready.lock().ok()?;
        let key = (slot, stored.to_string());
        let (t, uses) = ready.get_mut(&key)?;
        *uses -= 1;
        let t = t.clone();
        if *uses == 0 {
            ready.remove(&key);
        }
        Some(t)
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
        if let Some(t) = self.take_ready(*slot, stored) {
            return Ok(t);
        }
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

    /// Read ahead, a tensor seen under two names goes to both, and nothing is kept once they
    /// have taken it (the store holds no copy of the model).
    #[test]
    fn prefetched_tensors_are_handed_over_once_per_name() {
        use candle_nn::var_builder::SimpleBackend;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = Tensor::arange(0f32, 6., &Device::Cpu).unwrap();
        let b = Tensor::ones(4, DType::F16, &Device::Cpu).unwrap();
        candle_core::safetensors::save(
            &HashMap::from([("a".to_string(), a.clone()), ("b".to_string(), b)]),
            &path,
        )
        .unwrap();
        let mut store = TensorStore::new("test");
        store.add_identity(&path, super::super::file::open(&path).unwrap());
        store.alias("a", "also_a".into());
        let mut read = 0;
        store.prefetch(DType::F32, &mut |b| read += b);
        assert_eq!(read, 6 * 4 + 4 * 2);
        assert_eq!(store.ready.lock().unwrap().len(), 2);
        let get = |name: &str, n: usize| {
            store
                .get(
                    n.into(),
                    name,
                    candle_nn::Init::Const(0.),
                    DType::F32,
                    &Device::Cpu,
                )
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(get("a", 6), a.to_vec1::<f32>().unwrap());
        assert_eq!(
            store.ready.lock().unwrap().len(),
            2,
            "'also_a' still to come"
        );
        assert_eq!(get("also_a", 6), a.to_vec1::<f32>().unwrap());
        assert_eq!(get("b", 4), vec![1.0; 4]);
        assert!(store.ready.lock().unwrap().is_empty());
        // Taken tensors read again from the file when asked again.
        assert_eq!(get("a", 6), a.to_vec1::<f32>().unwrap());
    }

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
