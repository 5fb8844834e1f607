//! Shared helpers for the integration tests: fixture paths, goldens, a closeness assertion that
//! says where and by how much two tensors differ, and a runner for the real binary.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use instructdiffusion::model::load::{self, LoadOptions, Model, ModelSource};

/// Max error relative to the largest reference magnitude, per component (networks, sampler).
pub const COMPONENT_TOL: f64 = 1e-4;
/// Whole edits: mean absolute pixel error, in 8-bit levels (1/255 of the range).
pub const PIXEL_MAE_TOL: f64 = 1.0;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn tiny() -> PathBuf {
    fixtures().join("tiny")
}

pub fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// The golden tensors written by `tools/reference/make_fixtures.py`.
pub fn goldens(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("goldens.safetensors"), &Device::Cpu)
        .expect("goldens.safetensors loads (run tools/reference/make_fixtures.py)")
}

pub fn golden(g: &HashMap<String, Tensor>, name: &str) -> Tensor {
    g.get(name)
        .unwrap_or_else(|| panic!("golden '{name}' missing"))
        .clone()
}

/// Loads the tiny model from one of its layouts.
pub fn load_tiny(layout: &str) -> Model {
    load_tiny_as(layout, DType::F32)
}

/// [`load_tiny`] with weights in `dtype`.
pub fn load_tiny_as(layout: &str, dtype: DType) -> Model {
    let dir = tiny();
    let (source, config_dir) = match layout {
        "diffusers" => (ModelSource::Diffusers(dir.join("diffusers")), None),
        "ldm.safetensors" | "ldm-ema.ckpt" => (
            ModelSource::SingleFile(dir.join(layout)),
            Some(dir.join("diffusers")),
        ),
        other => panic!("unknown layout {other}"),
    };
    let opts = LoadOptions {
        config_dir,
        dtype,
        ..Default::default()
    };
    load::load(&source, opts).unwrap_or_else(|e| panic!("loading {layout}: {e}"))
}

/// How far `got` is from `want`: (max abs error, max abs error / max |want|, worst flat index).
pub fn closeness(got: &Tensor, want: &Tensor) -> (f64, f64, usize) {
    assert_eq!(got.dims(), want.dims(), "shapes differ");
    let g: Vec<f64> = got
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let w: Vec<f64> = want
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let scale = w.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    let (mut worst, mut idx) = (0f64, 0usize);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let e = (a - b).abs();
        if e > worst || e.is_nan() {
            worst = e;
            idx = i;
        }
    }
    (worst, worst / scale, idx)
}

/// Asserts `got` matches `want` within `tol` relative error, printing where it does not.
#[macro_export]
macro_rules! assert_close {
    ($got:expr, $want:expr, $tol:expr, $what:expr) => {{
        let (abs, rel, idx) = $crate::util::closeness(&$got, &$want);
        assert!(
            rel <= $tol,
            "{}: shape {:?}, max abs error {:.3e}, max rel error {:.3e} (tolerance {:.1e}) at flat index {}",
            $what,
            $want.dims(),
            abs,
            rel,
            $tol,
            idx
        );
    }};
}

/// Mean absolute difference of two u8 buffers.
pub fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .sum::<f64>()
        / a.len() as f64
}

/// Runs the real binary with `args`.
pub fn run_bin(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_instructdiffusion"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("the binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Copies a folder tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A minimal hub: `GET /{repo}/resolve/{rev}/{file}` with `Range`, `etag` and
/// `x-repo-commit`, as huggingface.co answers, serving `root`. Stops after `max` connections.
pub fn serve_hub(root: PathBuf, max: usize) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut range = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = Some(v.trim().to_string());
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            seen.lock().unwrap().push(path.clone());
            // /org/name/resolve/main/<file>
            let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
            let file = (parts.len() == 5).then(|| root.join(parts[4]));
            let body = file
                .filter(|f| f.is_file())
                .map(|f| std::fs::read(f).unwrap());
            let resp = match body {
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
                Some(body) => {
                    let (start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
                        Some((a, b)) => {
                            (a.parse().unwrap_or(0), b.parse().unwrap_or(body.len() - 1))
                        }
                        None => (0, body.len() - 1),
                    };
                    let end = end.min(body.len() - 1);
                    let etag = format!(
                        "{:x}",
                        body.iter()
                            .fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64)
                                .wrapping_mul(0x100000001b3))
                    );
                    let mut r = format!(
                        "HTTP/1.1 206 Partial Content\r\netag: \"{etag}\"\r\nx-repo-commit: 0123456789abcdef0123456789abcdef01234567\r\ncontent-range: bytes {start}-{end}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len(),
                        end + 1 - start
                    )
                    .into_bytes();
                    r.extend_from_slice(&body[start..=end]);
                    r
                }
            };
            let _ = stream.write_all(&resp);
        }
    });
    (addr, log)
}
