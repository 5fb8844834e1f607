//! Loading from every source, and every way a weights file can be wrong: each error must name
//! the file and the tensor and say what to do.

mod util;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use instructdiffusion::model::load::hub::HubSettings;
use instructdiffusion::model::load::{self, LoadOptions, ModelSource};
use util::*;

fn load_err(source: ModelSource, config_dir: Option<PathBuf>) -> String {
    let opts = LoadOptions {
        config_dir,
        ..Default::default()
    };
    match load::load(&source, opts) {
        Ok(_) => panic!("loading {source:?} should fail"),
        Err(e) => e.to_string(),
    }
}

/// Rewrites the tiny UNet weights after `edit` changes the tensor map.
fn tiny_folder_with(
    edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>),
) -> tempfile::TempDir {
    let tmp = tempdir();
    copy_dir(&tiny().join("diffusers"), tmp.path());
    let path = tmp.path().join("unet/diffusion_pytorch_model.safetensors");
    let mut ts = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut ts);
    candle_core::safetensors::save(&ts, &path).unwrap();
    tmp
}

#[test]
fn missing_tensor_is_named_with_its_file() {
    let tmp = tiny_folder_with(|ts| {
        ts.remove("down_blocks.1.attentions.0.proj_out.weight");
    });
    let err = load_err(ModelSource::Diffusers(tmp.path().into()), None);
    assert!(
        err.contains("missing tensor 'down_blocks.1.attentions.0.proj_out.weight'"),
        "{err}"
    );
    assert!(err.contains("diffusion_pytorch_model.safetensors"), "{err}");
}

#[test]
fn mis_shaped_tensor_reports_expected_and_found() {
    let tmp = tiny_folder_with(|ts| {
        ts.insert(
            "conv_in.weight".into(),
            Tensor::zeros((16, 4, 3, 3), DType::F16, &Device::Cpu).unwrap(),
        );
    });
    let err = load_err(ModelSource::Diffusers(tmp.path().into()), None);
    assert!(
        err.contains("'conv_in.weight'")
            && err.contains("expected shape [16, 8, 3, 3], found [16, 4, 3, 3]"),
        "{err}"
    );
}

/// bf16 on the CPU loads (weights in bf16, compute in f32) and says how this CPU runs its
/// products; the answer for a CPU with and without AVX512-BF16 is in the kernel's own tests.
#[test]
fn bf16_on_the_cpu_loads_and_says_how_it_runs() {
    let opts = LoadOptions {
        dtype: DType::BF16,
        ..Default::default()
    };
    let model = load::load(&ModelSource::Diffusers(tiny().join("diffusers")), opts).unwrap();
    assert_eq!(
        (model.weights_dtype, model.dtype),
        (DType::BF16, DType::F32)
    );
    let kernel = instructdiffusion::model::kernels::bf16::Bf16Kernel::detect();
    assert!(
        model.notes.iter().any(|n| n == kernel.describe()),
        "{:?}",
        model.notes
    );
}

#[test]
fn truncated_files_are_reported_not_panicked_on() {
    let tmp = tempdir();
    for name in ["ldm.safetensors", "ldm-ema.ckpt"] {
        let bytes = std::fs::read(tiny().join(name)).unwrap();
        let cut = tmp.path().join(name);
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = load_err(ModelSource::SingleFile(cut), Some(tiny().join("diffusers")));
        assert!(
            err.contains(name) && err.contains("truncated"),
            "{name}: {err}"
        );
    }
}

#[test]
fn sd15_is_assumed_without_config_and_shapes_are_checked() {
    let err = load_err(
        ModelSource::SingleFile(tiny().join("ldm.safetensors")),
        None,
    );
    assert!(
        err.contains("ldm.safetensors") && err.contains("expected shape"),
        "{err}"
    );
}

#[test]
fn unsupported_pickles_say_how_to_convert() {
    let bad = fixtures().join("bad");
    let err = load_err(ModelSource::SingleFile(bad.join("legacy.ckpt")), None);
    assert!(
        err.contains("legacy (non-zip) PyTorch serialization") && err.contains("safetensors"),
        "{err}"
    );
    let err = load_err(ModelSource::SingleFile(bad.join("protocol4.ckpt")), None);
    assert!(
        err.contains("protocol4.ckpt") && err.contains("safetensors"),
        "{err}"
    );
}

#[test]
fn legacy_tar_checkpoints_are_refused() {
    let tmp = tempdir();
    let mut tar = vec![0u8; 1024];
    tar[..8].copy_from_slice(b"pickle\0\0");
    tar[257..263].copy_from_slice(b"ustar\0");
    let p = tmp.path().join("old.ckpt");
    std::fs::write(&p, &tar).unwrap();
    let err = load_err(ModelSource::SingleFile(p), None);
    assert!(
        err.contains("pre-1.0 PyTorch tar format") && err.contains("safetensors"),
        "{err}"
    );
}

#[test]
fn random_bytes_and_wrong_files_are_refused() {
    let tmp = tempdir();
    let junk = tmp.path().join("model.ckpt");
    std::fs::write(&junk, b"definitely not a checkpoint").unwrap();
    let err = load_err(ModelSource::SingleFile(junk), None);
    assert!(
        err.contains("not a safetensors file nor a PyTorch zip checkpoint"),
        "{err}"
    );
    // A diffusers component file is not a whole LDM checkpoint.
    let unet = tiny().join("diffusers/unet/diffusion_pytorch_model.safetensors");
    let err = load_err(ModelSource::SingleFile(unet), None);
    assert!(err.contains("not an LDM checkpoint"), "{err}");
}

#[test]
fn broken_folders_name_what_is_missing() {
    let tmp = tempdir();
    copy_dir(&tiny().join("diffusers"), tmp.path());
    std::fs::write(tmp.path().join("vae/config.json"), "{ not json").unwrap();
    let err = load_err(ModelSource::Diffusers(tmp.path().into()), None);
    assert!(
        err.contains("vae/config.json") || err.contains("vae"),
        "{err}"
    );
    std::fs::remove_file(tmp.path().join("unet/config.json")).unwrap();
    let err = load_err(ModelSource::Diffusers(tmp.path().into()), None);
    assert!(err.contains("missing unet/config.json"), "{err}");
}

#[test]
fn hub_downloads_into_the_cache_with_progress_then_works_offline() {
    let (endpoint, log) = serve_hub(tiny().join("diffusers"), 200);
    let cache = tempdir();
    let hub = HubSettings {
        endpoint: Some(endpoint),
        cache_dir: cache.path().into(),
        offline: false,
    };
    let source = ModelSource::parse("someone/tiny-instruct").unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let mut progress = move |file: &str, done: u64, total: u64| {
        sink.lock().unwrap().push((file.to_string(), done, total))
    };
    let opts = LoadOptions {
        hub: Some(hub.clone()),
        progress: Some(&mut progress),
        ..Default::default()
    };
    let model = load::load(&source, opts).expect("downloads and loads");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(model.unet.config.in_channels, 8);
    let unet_bytes =
        std::fs::metadata(tiny().join("diffusers/unet/diffusion_pytorch_model.safetensors"))
            .unwrap()
            .len();
    assert!(
        seen.iter()
            .any(|(f, d, t)| f == "unet/diffusion_pytorch_model.safetensors"
                && *d == unet_bytes
                && *t == unet_bytes),
        "progress reached the full size: {seen:?}"
    );
    let snapshot = cache
        .path()
        .join("models--someone--tiny-instruct/snapshots/0123456789abcdef0123456789abcdef01234567");
    assert!(
        snapshot.join("unet/config.json").exists(),
        "files are in the standard cache layout"
    );
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .any(|p| p.contains("/resolve/main/unet/config.json")));

    // Offline: served from the cache alone.
    let offline = HubSettings {
        offline: true,
        endpoint: Some("http://127.0.0.1:9".into()),
        ..hub
    };
    let opts = LoadOptions {
        hub: Some(offline.clone()),
        ..Default::default()
    };
    load::load(&source, opts).expect("loads from the cache offline");

    // Offline with nothing cached: a clear error.
    let other = ModelSource::parse("someone/not-cached").unwrap();
    let opts = LoadOptions {
        hub: Some(offline),
        ..Default::default()
    };
    let err = load::load(&other, opts).err().expect("fails").to_string();
    assert!(
        err.contains("not in the cache") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

#[test]
fn hub_single_file_and_missing_repo_files() {
    let (endpoint, _) = serve_hub(tiny(), 50);
    let cache = tempdir();
    let hub = HubSettings {
        endpoint: Some(endpoint),
        cache_dir: cache.path().into(),
        offline: false,
    };
    let opts = LoadOptions {
        hub: Some(hub.clone()),
        config_dir: Some(tiny().join("diffusers")),
        ..Default::default()
    };
    load::load(
        &ModelSource::parse("someone/ckpts/ldm.safetensors").unwrap(),
        opts,
    )
    .expect("one checkpoint file from the hub");
    let opts = LoadOptions {
        hub: Some(hub),
        ..Default::default()
    };
    let err = load::load(
        &ModelSource::parse("someone/ckpts/nope.ckpt").unwrap(),
        opts,
    )
    .err()
    .expect("fails")
    .to_string();
    assert!(err.contains("has no 'nope.ckpt'"), "{err}");
}

/// A folder's tokenizer comes from its own files: `vocab.json` + `merges.txt` (all SD 1.5's
/// folder ships) without a note, a broken vocabulary as an error naming the file, and no files
/// at all as the bundled CLIP tokenizer with a note saying so.
#[test]
fn tokenizer_files_are_read_from_the_folder() {
    let notes = |dir: &std::path::Path| {
        load::load(&ModelSource::Diffusers(dir.into()), LoadOptions::default())
            .expect("loads")
            .notes
    };
    let tmp = tempdir();
    copy_dir(&tiny().join("diffusers"), tmp.path());
    assert!(
        notes(tmp.path()).iter().any(|n| n.contains("bundled CLIP")),
        "no tokenizer files: the bundled one, said so"
    );

    let tok = tmp.path().join("tokenizer");
    std::fs::create_dir_all(&tok).unwrap();
    let builtin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/builtin/tokenizer");
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(builtin.join(f), tok.join(f)).unwrap();
    }
    let model = load::load(
        &ModelSource::Diffusers(tmp.path().into()),
        LoadOptions::default(),
    )
    .expect("loads with vocab.json and merges.txt");
    assert!(
        model.notes.iter().all(|n| !n.contains("bundled")),
        "{:?}",
        model.notes
    );
    let ids = model.tokenizer.encode("a photo of a cat").unwrap();
    assert_eq!(&ids[..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);

    std::fs::write(tok.join("vocab.json"), b"{\"a\": 0,").unwrap();
    let err = load_err(ModelSource::Diffusers(tmp.path().into()), None);
    assert!(err.contains("vocab.json"), "{err}");
}

/// Reading the weights reports its progress (the editor's status line shows it): bytes read
/// of the total, rising, ending at the total.
#[test]
fn loading_reports_the_weights_read() {
    let mut seen: Vec<(String, u64, u64)> = vec![];
    let mut progress = |file: &str, done: u64, total: u64| seen.push((file.into(), done, total));
    let opts = LoadOptions {
        progress: Some(&mut progress),
        ..Default::default()
    };
    load::load(
        &ModelSource::Diffusers(util::tiny().join("diffusers")),
        opts,
    )
    .unwrap();
    let (file, done, total) = seen.last().cloned().expect("progress events");
    assert_eq!(file, "weights");
    assert_eq!(done, total);
    let on_disk: u64 = [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ]
    .iter()
    .map(|f| {
        std::fs::metadata(util::tiny().join("diffusers").join(f))
            .unwrap()
            .len()
    })
    .sum();
    assert!(
        total <= on_disk && total * 10 > on_disk * 9,
        "{total} of {on_disk} bytes"
    );
    assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1));
}
