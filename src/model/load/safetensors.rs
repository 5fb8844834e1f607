//! Safetensors files read tensor by tensor straight into each tensor's own buffer.
//!
//! The header (a JSON table of names, dtypes, shapes and byte ranges) is read and checked once.
//! A tensor loaded in its stored dtype is then a private map of its own bytes, which becomes the
//! tensor's storage ([`super::mapped`]); one converted as it loads (f32 to bf16), or one that
//! cannot be mapped, is read with positioned reads into a freshly allocated buffer. The whole
//! file is never mapped while copies are made: that held the file and the model at once
//! (6.4 GiB for SD 1.5 in f32, against 3.9 GiB of weights).

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
        if super::mapped::enabled() {
            let cpu = &Device::Cpu;
            let mapped = match e.dtype {
                DType::F32 => map::<f32>(&self.file, e, n).map(|v| Tensor::from_vec(v, shape, cpu)),
                DType::F16 => {
                    map::<half::f16>(&self.file, e, n).map(|v| Tensor::from_vec(v, shape, cpu))
                }
                DType::BF16 => {
                    map::<half::bf16>(&self.file, e, n).map(|v| Tensor::from_vec(v, shape, cpu))
                }
                _ => None,
            };
            if let Some(t) = mapped {
                return Ok(Some(t?));
            }
        }
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
            let mut out = buffer::<half::bf16>(n);
            // Slices of 256 KiB: they stay in the cache between the read and the conversion.
            let mut slice = vec![0u32; n.min(1 << 16)];
            let mut done = 0usize;
            while done < n {
                let len = slice.len().min(n - done);
                read_at(
                    &self.file,
                    slice.as_mut_ptr().cast(),
                    len * 4,
                    e.start + 4 * done as u64,
                )?;
                extend_bf16(&mut out, &slice[..len]);
                done += len;
            }
            return Ok(Some(Tensor::from_vec(
                out,
                e.shape.as_slice(),
                &Device::Cpu,
            )?));
        }
        as_float(self.load(name)?, dtype)
    }
}

/// A loaded tensor with its floating-point values in `dtype` (other tensors as they are).
pub(super) fn as_float(t: Option<Tensor>, dtype: DType) -> Result<Option<Tensor>> {
    Ok(match t {
        Some(t) if t.dtype().is_float() && t.dtype() != dtype => Some(t.to_dtype(dtype)?),
        other => other,
    })
}

/// Appends the bf16 nearest to each f32 (given by its bits) to `out`: in 8-lane AVX2 where the
/// CPU has it (the build targets baseline x86-64, whose 4-lane code took a third of a bf16
/// load's time).
fn extend_bf16(out: &mut Vec<half::bf16>, bits: &[u32]) {
    #[inline(always)]
    fn plain(out: &mut Vec<half::bf16>, bits: &[u32]) {
        out.extend(bits.iter().map(|&v| half::bf16::from_bits(bf16_bits(v))));
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn avx2(out: &mut Vec<half::bf16>, bits: &[u32]) {
            plain(out, bits)
        }
        // SAFETY: the CPU has AVX2 (checked above).
        return unsafe { avx2(out, bits) };
    }
    plain(out, bits)
}

/// The bf16 nearest to the f32 with bits `x` (ties to even; NaN stays NaN), as bits: `half`'s
/// rounding without branches, so that a slice of them vectorises.
#[inline(always)]
fn bf16_bits(x: u32) -> u16 {
    let rounded = x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16;
    let nan = (x >> 16) | 0x40;
    (if x & 0x7fff_ffff > 0x7f80_0000 {
        nan
    } else {
        rounded
    }) as u16
}

/// `n` values of `T` at `e` as a view of the file ([`super::mapped`]), for tensors of at least
/// a 2 MiB huge page. Smaller ones are read into buffers, packed together: mapped, each took
/// 4 KiB pages of its own and the VAE (mostly such tensors) encoded 9% slower.
fn map<T: Plain>(file: &File, e: &Entry, n: usize) -> Option<Vec<T>> {
    (e.len >= 2 << 20)
        .then(|| super::mapped::map_vec::<T>(file, e.start, n))
        .flatten()
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
    let mut v = buffer::<T>(n);
    read(v.as_mut_ptr().cast::<u8>())?;
    // SAFETY: `read` returned Ok only after writing all `n * size_of::<T>()` bytes, and `T` is a
    // plain number type whose every bit pattern is a value.
    unsafe { v.set_len(n) };
    Ok(v)
}

/// An empty vector with room for `n` values.
fn buffer<T>(n: usize) -> Vec<T> {
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
    v
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

    /// The branchless rounding equals `half`'s on every kind of value: ties both ways, the
    /// largest finite (rounds to infinity), infinities, NaNs, denormals, and a sweep.
    #[test]
    fn bf16_rounding_equals_half() {
        let mut cases = vec![
            0x3f80_8000u32, // a tie, even below: stays
            0x3f81_8000,    // a tie, odd below: up
            0x3f80_8001,
            0x3f80_7fff,
            0x7f7f_ffff,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0x7f80_0001,
            0xffff_ffff,
            0x0000_0001,
            0x8000_8000,
        ];
        cases.extend((0..1_000_000u32).map(|i| i.wrapping_mul(2_654_435_761)));
        let mut converted = Vec::new();
        extend_bf16(&mut converted, &cases);
        for (x, got) in cases.into_iter().zip(converted) {
            let want = half::bf16::from_f32(f32::from_bits(x)).to_bits();
            assert_eq!(got.to_bits(), want, "{x:#010x}");
        }
    }

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
