//! Safetensors files read tensor by tensor straight into each tensor's own buffer.
//!
//! The header (a JSON table of names, dtypes, shapes and byte ranges) is read and checked once;
//! each tensor is then read with one positioned read into a freshly allocated buffer of its
//! dtype, which becomes the tensor's storage. Nothing is memory-mapped: a mapped file's pages
//! count as the process's memory while the copies are made, which held the whole file and the
//! whole model at once (6.4 GiB for SD 1.5 in f32, against 3.9 GiB of weights).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};

/// Where one tensor's bytes are.
#[derive(Debug, Clone)]
struct Entry {
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte offset in the file.
    start: u64,
    len: usize,
}

/// An open safetensors file.
pub struct SafetensorsFile {
    file: File,
    entries: HashMap<String, Entry>,
}

/// The largest header accepted (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

impl SafetensorsFile {
    /// Opens `path` and checks its header: every tensor's bytes inside the file, its size
    /// matching its shape and dtype.
    pub fn open(path: &Path) -> std::result::Result<Self, String> {
        let file = File::open(path).map_err(|e| e.to_string())?;
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        let mut n = [0u8; 8];
        file.read_exact_at(&mut n, 0).map_err(|_| {
            "the file is shorter than a safetensors header (truncated?)".to_string()
        })?;
        let header_len = u64::from_le_bytes(n);
        if header_len > MAX_HEADER || 8 + header_len > size {
            return Err(format!(
                "the header claims {header_len} bytes but the file has {size} (truncated or not safetensors?)"
            ));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, 8)
            .map_err(|e| format!("reading the header: {e}"))?;
        let table: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| format!("the header is not JSON: {e}"))?;
        let data_start = 8 + header_len;
        let mut entries = HashMap::new();
        for (name, v) in table {
            if name == "__metadata__" {
                continue;
            }
            let bad = |what: &str| format!("tensor '{name}': {what}");
            let dtype_name = v["dtype"].as_str().ok_or_else(|| bad("no dtype"))?;
            let stored: safetensors::Dtype = serde_json::from_value(v["dtype"].clone())
                .map_err(|_| bad(&format!("unknown dtype {dtype_name}")))?;
            let dtype = DType::try_from(stored)
                .map_err(|_| bad(&format!("unsupported dtype {dtype_name}")))?;
            let shape: Vec<usize> =
                serde_json::from_value(v["shape"].clone()).map_err(|_| bad("no shape"))?;
            let offsets: [u64; 2] = serde_json::from_value(v["data_offsets"].clone())
                .map_err(|_| bad("no data_offsets"))?;
            let len = offsets[1]
                .checked_sub(offsets[0])
                .ok_or_else(|| bad("data_offsets end before they start"))?;
            let want = (shape.iter().product::<usize>() * stored.bitsize()).div_ceil(8) as u64;
            if len != want {
                return Err(bad(&format!(
                    "{len} bytes stored for {shape:?} {dtype_name} ({want} expected)"
                )));
            }
            if data_start + offsets[1] > size {
                return Err(bad(&format!(
                    "its bytes end at {} but the file has {size} (the file is truncated)",
                    data_start + offsets[1]
                )));
            }
            entries.insert(
                name,
                Entry {
                    dtype,
                    shape,
                    start: data_start + offsets[0],
                    len: len as usize,
                },
            );
        }
        Ok(Self { file, entries })
    }

    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.entries.get(name).map(|e| e.shape.clone())
    }

    /// Bytes `name` takes in the file.
    pub fn bytes(&self, name: &str) -> Option<usize> {
        self.entries.get(name).map(|e| e.len)
    }

    /// Reads `name` into a new CPU tensor of its stored dtype.
    pub fn load(&self, name: &str) -> Result<Option<Tensor>> {
        let Some(e) = self.entries.get(name) else {
            return Ok(None);
        };
        let read = |buf: *mut u8| read_at(&self.file, buf, e.len, e.start);
        let n = e.len / e.dtype.size_in_bytes().max(1);
        let shape = e.shape.as_slice();
        let t = match e.dtype {
            DType::F32 => Tensor::from_vec(read_into::<f32>(n, read)?, shape, &Device::Cpu)?,
            DType::F16 => Tensor::from_vec(read_into::<half::f16>(n, read)?, shape, &Device::Cpu)?,
            DType::BF16 => {
                Tensor::from_vec(read_into::<half::bf16>(n, read)?, shape, &Device::Cpu)?
            }
            DType::F64 => Tensor::from_vec(read_into::<f64>(n, read)?, shape, &Device::Cpu)?,
            DType::I64 => Tensor::from_vec(read_into::<i64>(n, read)?, shape, &Device::Cpu)?,
            DType::U32 => Tensor::from_vec(read_into::<u32>(n, read)?, shape, &Device::Cpu)?,
            DType::U8 => Tensor::from_vec(read_into::<u8>(n, read)?, shape, &Device::Cpu)?,
            // Rarer dtypes (float8 and narrower, other integers): through a byte buffer.
            other => {
                Tensor::from_raw_buffer(&read_into::<u8>(e.len, read)?, other, shape, &Device::Cpu)?
            }
        };
        Ok(Some(t))
    }
}

impl SafetensorsFile {
    /// Reads `name` into a new CPU tensor of `dtype` (floating-point tensors only; others keep
    /// their stored dtype). f32 read as bf16 is converted slice by slice as it is read, so the
    /// f32 copy never exists whole.
    pub fn load_as(&self, name: &str, dtype: DType) -> Result<Option<Tensor>> {
        let Some(e) = self.entries.get(name) else {
            return Ok(None);
        };
        if e.dtype == DType::F32 && dtype == DType::BF16 {
            let n = e.len / 4;
            let mut out: Vec<half::bf16> = Vec::with_capacity(n);
            let mut slice = vec![0f32; n.min(1 << 18)];
            let mut done = 0usize;
            while done < n {
                let len = slice.len().min(n - done);
                read_at(
                    &self.file,
                    slice.as_mut_ptr().cast(),
                    len * 4,
                    e.start + 4 * done as u64,
                )?;
                out.extend(slice[..len].iter().map(|&v| half::bf16::from_f32(v)));
                done += len;
            }
            return Ok(Some(Tensor::from_vec(
                out,
                e.shape.as_slice(),
                &Device::Cpu,
            )?));
        }
        Ok(match self.load(name)? {
            Some(t) if t.dtype().is_float() && t.dtype() != dtype => Some(t.to_dtype(dtype)?),
            other => other,
        })
    }
}

/// Plain numbers that any bit pattern is a value of.
trait Plain: Copy {}
impl Plain for f32 {}
impl Plain for f64 {}
impl Plain for half::f16 {}
impl Plain for half::bf16 {}
impl Plain for i64 {}
impl Plain for u32 {}
impl Plain for u8 {}

/// A buffer of `n` values filled by `read` (given the buffer's start, room for
/// `n * size_of::<T>()` bytes) with their little-endian bytes (this crate builds for
/// little-endian targets only). The buffer is not zeroed first: the read writes every byte.
fn read_into<T: Plain>(n: usize, read: impl FnOnce(*mut u8) -> Result<()>) -> Result<Vec<T>> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    let bytes = n * std::mem::size_of::<T>();
    if bytes >= 4 << 20 {
        // Large buffers in 2 MB pages where the kernel offers them (transparent huge pages
        // in `madvise` mode): a 512th of the page faults while the read fills them.
        let start = v.as_mut_ptr() as usize;
        let aligned = start.next_multiple_of(2 << 20);
        let end = (start + bytes) / (2 << 20) * (2 << 20);
        if end > aligned {
            // SAFETY: advice on whole pages inside the vector's own allocation; it changes
            // how they are backed, never their contents.
            unsafe {
                libc::madvise(
                    aligned as *mut libc::c_void,
                    end - aligned,
                    libc::MADV_HUGEPAGE,
                )
            };
        }
    }
    read(v.as_mut_ptr().cast::<u8>())?;
    // SAFETY: `read` returned Ok only after writing all `n * size_of::<T>()` bytes, and `T` is a
    // plain number type whose every bit pattern is a value.
    unsafe { v.set_len(n) };
    Ok(v)
}

/// Reads exactly `len` bytes of `file` at `offset` to `buf` (with room for them) with
/// positioned reads, never through a reference to the not yet written buffer.
fn read_at(file: &File, buf: *mut u8, len: usize, offset: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    let mut done = 0usize;
    while done < len {
        // SAFETY: `buf` has room for `len` bytes; each call writes at most `len - done` bytes
        // at `buf + done`.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.add(done).cast(),
                (len - done).min(1 << 30),
                (offset + done as u64) as libc::off_t,
            )
        };
        match n {
            n if n > 0 => done += n as usize,
            0 => candle_core::bail!("the file ended {} bytes early (truncated?)", len - done),
            _ => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    candle_core::bail!("reading {len} bytes: {err}")
                }
            }
        }
    }
    Ok(())
}

#[cfg(not(target_endian = "little"))]
compile_error!("the weights readers assume a little-endian target, as safetensors files are");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_candle_wrote_and_refuses_a_truncated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = Tensor::arange(0f32, 24., &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        let b = a.to_dtype(DType::F16).unwrap();
        let c = a.to_dtype(DType::BF16).unwrap();
        candle_core::safetensors::save(
            &HashMap::from([
                ("a".to_string(), a.clone()),
                ("b".into(), b),
                ("c".into(), c),
            ]),
            &path,
        )
        .unwrap();
        let f = SafetensorsFile::open(&path).unwrap();
        assert_eq!(f.shape("a"), Some(vec![2, 3, 4]));
        for name in ["a", "b", "c"] {
            let t = f.load(name).unwrap().unwrap();
            let back = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
            assert_eq!(
                back.to_vec1::<f32>().unwrap(),
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
        assert!(f.load("nope").unwrap().is_none());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let err = SafetensorsFile::open(&path).err().unwrap();
        assert!(err.contains("truncated"), "{err}");
    }
}
