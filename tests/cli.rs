//! The `instructdiffusion` binary as a user runs it: results, metadata, reports, and every
//! refusal with its message and exit code 2.

mod util;

use std::path::{Path, PathBuf};

use util::*;

const PROMPT: &str = "turn the cat into a tiger";

fn tiny_model() -> String {
    tiny().join("diffusers").display().to_string()
}

fn input() -> String {
    tiny().join("input.png").display().to_string()
}

fn png_text(path: &Path) -> Vec<(String, String)> {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let reader = dec.read_info().unwrap();
    let info = reader.info();
    let mut out: Vec<(String, String)> = info
        .utf8_text
        .iter()
        .map(|t| (t.keyword.clone(), t.get_text().unwrap()))
        .collect();
    out.extend(
        info.uncompressed_latin1_text
            .iter()
            .map(|t| (t.keyword.clone(), t.text.clone())),
    );
    out
}

/// The arguments of the reference's euler + InstructDiffusion edit of the tiny fixture.
fn reference_edit(model: &str, noise: &Path, out: &Path) -> Vec<String> {
    let args = [
        "edit",
        "--model",
        model,
        "--image",
        &input(),
        "--prompt",
        PROMPT,
        "--steps",
        "10",
        "--sampler",
        "euler",
        "--guidance",
        "instructdiffusion",
        "--text-cfg",
        "5",
        "--image-cfg",
        "1.25",
        "--resolution",
        "64",
        // The model's own picture is what the reference returns (no full-resolution step).
        "--full-res",
        "off",
    ];
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.extend([
        "--init-noise".into(),
        noise.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ]);
    v
}

/// The binary maps large weights stored in the dtype they load in (the built-in model is f16)
/// instead of copying them; the edit is the same either way; `INSTRUCTDIFFUSION_MMAP=0` reads them.
#[test]
fn mapped_weights_edit_like_read_ones() {
    let tmp = tempdir();
    let run = |mmap: &str| -> (image::RgbImage, serde_json::Value) {
        let (out, report) = (
            tmp.path().join(format!("out-{mmap}.png")),
            tmp.path().join(format!("report-{mmap}.json")),
        );
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_instructdiffusion"))
            .args(["edit", "--model", "builtin", "--dtype", "f16"])
            .args(["--image", &input(), "--prompt", PROMPT, "--steps", "2"])
            .args(["--resolution", "64", "--seed", "3", "--full-res", "off"])
            .arg("--out")
            .arg(&out)
            .arg("--report")
            .arg(&report)
            .env("HF_HUB_OFFLINE", "1")
            .env("INSTRUCTDIFFUSION_MMAP", mmap)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let report = serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
        (image::open(out).unwrap().to_rgb8(), report)
    };
    let (mapped, with) = run("1");
    let (read, without) = run("0");
    // The built-in model's one tensor of 2 MiB or more: its token embedding table.
    assert!(with["mapped_tensors"].as_u64().unwrap() >= 1, "{with}");
    assert_eq!(without["mapped_tensors"].as_u64(), Some(0), "{without}");
    assert_eq!(mapped, read, "the same weights give the same edit");
}

/// `edit --init-noise` with the reference's noise reproduces the reference's pixels.
#[test]
fn edit_reproduces_the_reference_from_its_noise() {
    let tmp = tempdir();
    let g = goldens(&tiny());
    let noise = tmp.path().join("noise.npy");
    golden(&g, "edit.noise").write_npy(&noise).unwrap();
    let (out, report) = (tmp.path().join("out.png"), tmp.path().join("report.json"));
    let mut args = reference_edit(&tiny_model(), &noise, &out);
    args.extend(["--report".into(), report.display().to_string()]);
    let o = run_bin(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let got = image::open(&out).unwrap().to_rgb8();
    let want: Vec<u8> = golden(&g, "edit.euler.instructdiffusion.image")
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mae = mean_abs_diff(got.as_raw(), &want);
    assert!(mae <= PIXEL_MAE_TOL, "mean absolute pixel error {mae}");

    let text = png_text(&out);
    let params = &text
        .iter()
        .find(|(k, _)| k == "parameters")
        .expect("A1111 parameters")
        .1;
    assert!(
        params.starts_with(PROMPT)
            && params.contains("Steps: 10, Sampler: Euler, CFG scale: 5, Image CFG scale: 1.25"),
        "{params}"
    );
    let ours: serde_json::Value = serde_json::from_str(
        &text
            .iter()
            .find(|(k, _)| k == "instructdiffusion")
            .expect("json metadata")
            .1,
    )
    .unwrap();
    assert_eq!(ours["plan"]["guidance"], "instructdiffusion");

    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["timings"]["steps_s"].as_array().unwrap().len(), 10);
    assert!(r["timings"]["load_s"].as_f64().unwrap() > 0.0);
    assert!(r["peak_memory_bytes"].as_u64().unwrap() > 1 << 20);
    assert_eq!(r["settings"]["sampler"], "euler");
}

fn write_test_image(path: &Path, w: u32, h: u32) {
    let img =
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 2) as u8, (y * 3) as u8, 128]));
    img.save(path).unwrap();
}

#[test]
fn results_come_back_at_the_input_size_and_the_source_is_untouched() {
    let tmp = tempdir();
    let src = tmp.path().join("photo.png");
    write_test_image(&src, 100, 70);
    let before = std::fs::read(&src).unwrap();
    let out = tmp.path().join("out.png");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "edit",
            "--model",
            "",
            "--image",
            src.to_str().unwrap(),
            "--prompt",
            "make it blue",
            "--steps",
            "2",
            "--resolution",
            "64",
            "--seed",
            "3",
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let mut a = args(extra);
        a[2] = tiny_model();
        run_bin(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image::open(&out).unwrap().to_rgb8().dimensions(), (100, 70));
    let o = run(&["--keep-model-resolution"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image::open(&out).unwrap().to_rgb8().dimensions(), (64, 64));
    // The model's own pixels on request, how the result was made in the metadata and report.
    let own = tmp.path().join("own.png");
    let report = tmp.path().join("report.json");
    let (own_s, report_s) = (own.to_str().unwrap(), report.to_str().unwrap());
    let o = run(&["--model-image", own_s, "--report", report_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image::open(&out).unwrap().to_rgb8().dimensions(), (100, 70));
    assert_eq!(image::open(&own).unwrap().to_rgb8().dimensions(), (64, 64));
    let text = png_text(&out);
    let get = |k: &str| text.iter().find(|(key, _)| key == k).unwrap().1.clone();
    assert!(
        get("parameters").contains("change applied"),
        "{}",
        get("parameters")
    );
    let settings: serde_json::Value = serde_json::from_str(&get("instructdiffusion")).unwrap();
    assert_eq!(settings["full_res"]["mode"], "change");
    assert_eq!(settings["plan"]["full_res"], "auto");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["full_res"]["mode"], "change");
    let o = run(&["--full-res", "off"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(png_text(&out)
        .iter()
        .any(|(k, v)| k == "parameters" && v.contains("Full res: model's picture resized")));
    // A tiled run has no model-size picture: refused before it runs.
    let o = run(&["--full-res", "tiled", "--model-image", own_s]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("a tiled run has no picture"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read(&src).unwrap(),
        before,
        "the source image changed"
    );
}

/// A copy of the tiny model predicting v, its schedule rescaled to zero terminal SNR or not.
fn v_model(dir: &Path, zero_snr: bool) -> PathBuf {
    let model = dir.join(format!("model-{zero_snr}"));
    util::copy_dir(&tiny().join("diffusers"), &model);
    std::fs::write(
        model.join("scheduler/scheduler_config.json"),
        serde_json::json!({
            "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085,
            "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "prediction_type": "v_prediction", "rescale_betas_zero_snr": zero_snr
        })
        .to_string(),
    )
    .unwrap();
    model
}

/// A 3-step euler edit of `model` at 64 px, seed 5, with `extra` arguments, written to `out`.
fn short_edit(model: &Path, out: &Path, extra: &[&str]) -> Vec<u8> {
    let mut args = vec!["edit", "--model", model.to_str().unwrap(), "--image"];
    let (i, o) = (input(), out.display().to_string());
    args.extend([
        i.as_str(),
        "--prompt",
        PROMPT,
        "--steps",
        "3",
        "--sampler",
        "euler",
    ]);
    args.extend(["--resolution", "64", "--seed", "5", "--out", o.as_str()]);
    args.extend(extra);
    let o = run_bin(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    image::open(out).unwrap().to_rgb8().into_raw()
}

/// A model whose scheduler config asks for zero terminal SNR (diffusers'
/// `rescale_betas_zero_snr`) is sampled on that schedule: it edits, and not as the same
/// model without the flag does.
#[test]
fn a_zero_terminal_snr_schedule_is_read_and_sampled() {
    let tmp = tempdir();
    let edit = |zero_snr: bool| {
        let model = v_model(tmp.path(), zero_snr);
        short_edit(&model, &tmp.path().join(format!("out-{zero_snr}.png")), &[])
    };
    assert_ne!(edit(true), edit(false));
}

/// `--guidance-rescale` changes a strongly guided edit, is recorded with it, and 0 is off.
#[test]
fn the_guidance_rescale_changes_the_edit_and_is_recorded() {
    let tmp = tempdir();
    let model = v_model(tmp.path(), true);
    let edit = |phi: &str| {
        let out = tmp.path().join(format!("out-{phi}.png"));
        let pixels = short_edit(
            &model,
            &out,
            &["--text-cfg", "7.5", "--guidance-rescale", phi],
        );
        let params = png_text(&out)
            .into_iter()
            .find(|(k, _)| k == "parameters")
            .expect("A1111 parameters")
            .1;
        (pixels, params)
    };
    let (plain, plain_params) = edit("0");
    let (rescaled, params) = edit("0.7");
    let unset = short_edit(
        &model,
        &tmp.path().join("unset.png"),
        &["--text-cfg", "7.5"],
    );
    assert_eq!(plain, unset, "0 is off, the default");
    assert_ne!(plain, rescaled);
    assert!(params.contains("CFG Rescale: 0.7"), "{params}");
    assert!(!plain_params.contains("CFG Rescale"), "{plain_params}");
}

#[test]
fn same_seed_same_result_other_seed_other_result() {
    let tmp = tempdir();
    let run = |seed: &str, name: &str| {
        let out = tmp.path().join(name);
        let o = run_bin(&[
            "edit",
            "--model",
            &tiny_model(),
            "--image",
            &input(),
            "--prompt",
            PROMPT,
            "--steps",
            "3",
            "--resolution",
            "64",
            "--seed",
            seed,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        image::open(&out).unwrap().to_rgb8().into_raw()
    };
    let (a, b, c) = (run("7", "a.png"), run("7", "b.png"), run("8", "c.png"));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

fn fails_with(args: &[&str], needle: &str) {
    let o = run_bin(args);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{args:?} should fail: {}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains(needle),
        "{args:?}: expected {needle:?} in {}",
        stderr(&o)
    );
}

#[test]
fn bad_values_are_refused_with_a_reason() {
    let tmp = tempdir();
    let out = tmp.path().join("o.png");
    let out = out.to_str().unwrap();
    let m = tiny_model();
    let i = input();
    let base = [
        "edit",
        "--model",
        m.as_str(),
        "--image",
        i.as_str(),
        "--prompt",
        "x",
        "--out",
        out,
    ];
    let with = |extra: &[&'static str]| -> Vec<String> {
        base.iter()
            .map(|s| s.to_string())
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    let check = |extra: &[&'static str], needle: &str| {
        let a = with(extra);
        fails_with(&a.iter().map(String::as_str).collect::<Vec<_>>(), needle)
    };
    check(&["--steps", "0"], "steps must be between 1 and 1000, got 0");
    check(&["--text-cfg", "NaN"], "text_cfg must be a finite number");
    check(
        &["--guidance-rescale", "1.5"],
        "the guidance rescale must be between 0 (off) and 1, got 1.5",
    );
    check(
        &["--resolution", "100"],
        "resolution must be a multiple of 64",
    );
    check(&["--sampler", "ddim"], "unknown sampler 'ddim'");
    check(&["--guidance", "cfg"], "unknown guidance formula 'cfg'");
    check(&["--device", "tpu"], "unknown device 'tpu'");
    let bad_noise = tmp.path().join("bad.npy");
    candle_core::Tensor::zeros(
        (1, 4, 3, 3),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .write_npy(&bad_noise)
    .unwrap();
    let a = with(&["--steps", "1", "--resolution", "64", "--init-noise"]);
    let mut a: Vec<&str> = a.iter().map(String::as_str).collect();
    let bn = bad_noise.to_str().unwrap().to_string();
    a.push(&bn);
    fails_with(
        &a,
        "initial noise has shape [1, 4, 3, 3], the latent is [1, 4, 8, 8]",
    );
    assert!(!Path::new(out).exists(), "nothing is written on failure");
}

#[test]
fn unreadable_images_and_the_source_path_are_refused() {
    let tmp = tempdir();
    let junk = tmp.path().join("junk.png");
    std::fs::write(&junk, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let out = tmp.path().join("o.png");
    fails_with(
        &[
            "edit",
            "--model",
            &tiny_model(),
            "--image",
            junk.to_str().unwrap(),
            "--prompt",
            "x",
            "--out",
            out.to_str().unwrap(),
        ],
        "reading image",
    );
    fails_with(
        &[
            "edit",
            "--model",
            &tiny_model(),
            "--image",
            "/no/such.png",
            "--prompt",
            "x",
            "--out",
            out.to_str().unwrap(),
        ],
        "reading image '/no/such.png'",
    );
    let src = tmp.path().join("src.png");
    write_test_image(&src, 64, 64);
    let before = std::fs::read(&src).unwrap();
    fails_with(
        &[
            "edit",
            "--model",
            &tiny_model(),
            "--image",
            src.to_str().unwrap(),
            "--prompt",
            "x",
            "--out",
            src.to_str().unwrap(),
        ],
        "refusing to overwrite the source image",
    );
    assert_eq!(std::fs::read(&src).unwrap(), before);
    fails_with(
        &[
            "edit",
            "--model",
            &tiny_model(),
            "--image",
            src.to_str().unwrap(),
            "--prompt",
            "x",
            "--out",
            out.to_str().unwrap(),
            "--max-pixels",
            "1000",
        ],
        "over the limit",
    );
}

/// A full disk (simulated with a file-size limit, SIGXFSZ ignored): a clear error, the old
/// output intact, no temporary file left behind.
#[test]
fn full_disk_loses_nothing() {
    let tmp = tempdir();
    let out = tmp.path().join("out.png");
    std::fs::write(&out, b"previous result").unwrap();
    let cmd = format!(
        "trap '' XFSZ; ulimit -f 2; exec '{}' edit --model '{}' --image '{}' --prompt x --steps 1 --resolution 64 --out '{}'",
        env!("CARGO_BIN_EXE_instructdiffusion"),
        tiny_model(),
        input(),
        out.display()
    );
    let o = std::process::Command::new("bash")
        .arg("-c")
        .arg(&cmd)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("is the disk full?"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b"previous result");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "temporary files left: {leftovers:?}");
}

#[test]
fn help_lists_the_subcommands_and_the_editor_needs_a_display() {
    let o = run_bin(&["--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for sub in ["edit", "decode", "annotate", "train", "bench"] {
        assert!(help.contains(sub), "{help}");
    }
    // No subcommand opens the editor; without a display that is a clear error, not a hang.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_instructdiffusion"))
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("display"), "{}", stderr(&o));
}

/// `edit` on the single-file layouts (with `--config`) and on a hub id (through `HF_ENDPOINT`
/// and `HF_HOME`, then offline from the cache) gives the reference's pixels.
#[test]
fn edit_works_on_every_layout() {
    let tmp = tempdir();
    let g = goldens(&tiny());
    let noise = tmp.path().join("noise.npy");
    golden(&g, "edit.noise").write_npy(&noise).unwrap();
    let want: Vec<u8> = golden(&g, "edit.euler.instructdiffusion.image")
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (endpoint, _) = serve_hub(tiny().join("diffusers"), 100);
    let hf_home = tmp.path().join("hf");
    let config = tiny().join("diffusers").display().to_string();
    // (model, extra arguments, environment)
    type Case<'a> = (String, Vec<String>, Vec<(&'a str, String)>);
    let cases: Vec<Case> = vec![
        (
            tiny().join("ldm.safetensors").display().to_string(),
            vec!["--config".into(), config.clone()],
            vec![],
        ),
        (
            tiny().join("ldm-ema.ckpt").display().to_string(),
            vec!["--config".into(), config],
            vec![],
        ),
        (
            "someone/tiny".into(),
            vec![],
            vec![
                ("HF_ENDPOINT", endpoint),
                ("HF_HOME", hf_home.display().to_string()),
                ("HF_HUB_OFFLINE", "0".into()),
            ],
        ),
        (
            "someone/tiny".into(),
            vec![],
            vec![
                ("HF_ENDPOINT", "http://127.0.0.1:9".into()),
                ("HF_HOME", hf_home.display().to_string()),
                ("HF_HUB_OFFLINE", "1".into()),
            ],
        ),
    ];
    for (i, (model, extra, env)) in cases.into_iter().enumerate() {
        let out = tmp.path().join(format!("out{i}.png"));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_instructdiffusion"));
        cmd.args(reference_edit(&model, &noise, &out));
        cmd.args(&extra)
            .env("HF_HUB_OFFLINE", "1")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{model}: {}", stderr(&o));
        let got = image::open(&out).unwrap().to_rgb8();
        let mae = mean_abs_diff(got.as_raw(), &want);
        assert!(
            mae <= PIXEL_MAE_TOL,
            "{model}: mean absolute pixel error {mae}"
        );
    }
}

/// `bench` runs every stage and writes its report (figures are not asserted: speed lives in
/// benchmarks, not tests).
#[test]
fn bench_reports_every_stage() {
    let tmp = tempdir();
    let json = tmp.path().join("bench.json");
    let bench = |edited: &Path| {
        run_bin(&[
            "bench",
            "--random",
            "tiny",
            "--resolution",
            "64",
            "--repeats",
            "1",
            "--edit-steps",
            "1",
            "--json",
            json.to_str().unwrap(),
            "--save-edit",
            edited.to_str().unwrap(),
        ])
    };
    let (first, second) = (tmp.path().join("a.png"), tmp.path().join("b.png"));
    let o = bench(&first);
    assert!(o.status.success(), "{}", stderr(&o));
    // The edit it timed is saved, and the same seeded model and noise give the same pixels
    // again (what comparing a CUDA run with a CPU run relies on).
    let a = image::open(&first).unwrap().to_rgb8();
    assert_eq!(a.dimensions(), (64, 64));
    assert!(bench(&second).status.success());
    assert_eq!(a, image::open(&second).unwrap().to_rgb8());
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let names: Vec<&str> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 6, "{names:?}");
    assert!(names.iter().any(|n| n.contains("unet step")));
    // The tiny architecture adds a training step (the built-in model's edit phase).
    assert!(names.iter().any(|n| n.starts_with("train step, batch 8")));
    assert!(stderr(&o).contains("median s"));
    fails_with(&["bench", "--random", "sd3"], "unknown architecture 'sd3'");
}

/// `train edit --tasks` names task families and optional weights; mistakes are refused before
/// anything is loaded or written.
#[test]
fn train_task_weights_are_checked() {
    let tmp = tempdir();
    let out = tmp.path().join("run");
    let out = out.to_str().unwrap();
    fails_with(
        &[
            "train",
            "edit",
            "--out",
            out,
            "--tasks",
            "keypoints,segmentation",
        ],
        "unknown task 'segmentation'; the families are: referring_segmentation",
    );
    // A bad weight or gamma, and a flag of the other phase (it would do nothing, so it is
    // refused, naming its phase).
    let refused: [(&[&str], &str); 10] = [
        (
            &["train", "edit", "--out", out, "--tasks", "keypoints=0"],
            "'keypoints=0': the weight after '=' must be a positive number",
        ),
        (
            &["train", "vae", "--out", out, "--unet-config", "u.json"],
            "--unet-config is for `train edit`, not `train vae`",
        ),
        (
            &["train", "edit", "--out", out, "--crop", "64"],
            "--crop is for `train vae`, not `train edit`",
        ),
        (
            &["train", "vae", "--out", out, "--min-snr-gamma", "0"],
            "--min-snr-gamma is for `train edit`, not `train vae`",
        ),
        (
            &["train", "vae", "--out", out, "--timing"],
            "--timing is for `train edit`, not `train vae`",
        ),
        (
            &["train", "edit", "--out", out, "--min-snr-gamma=-1"],
            "--min-snr-gamma is 0 (off) or a positive number, not -1",
        ),
        (
            &["train", "edit", "--out", out, "--change-weight=-0.5"],
            "--change-weight is 0 (plain loss) or a positive number, not -0.5",
        ),
        (
            &["train", "edit", "--out", out, "--text-encoder-lr=-1e-4"],
            "--text-encoder-lr is 0 (frozen) or a positive rate, not -0.0001",
        ),
        (
            &["train", "vae", "--out", out, "--change-weight", "0"],
            "--change-weight is for `train edit`, not `train vae`",
        ),
        (
            &[
                "train",
                "edit",
                "--out",
                out,
                "--base",
                "b",
                "--text-encoder-from",
                "b",
            ],
            "the argument '--base <BASE>' cannot be used with '--text-encoder-from <DIR>'",
        ),
    ];
    for (args, needle) in refused {
        fails_with(args, needle);
    }
    // This build has no GPU backend: said before anything is written.
    #[cfg(not(feature = "cuda"))]
    fails_with(
        &["train", "edit", "--out", out, "--device", "cuda"],
        "opening CUDA device 0 (built with --features cuda?)",
    );
    assert!(!tmp.path().join("run").exists());
}

/// `bench --ui` drives the editor headless through one edit and reports its frame times and
/// the previews it showed (one per step).
#[test]
fn ui_bench_reports_frames_and_previews() {
    let tmp = tempdir();
    let json = tmp.path().join("ui.json");
    let o = run_bin(&[
        "bench",
        "--model",
        tiny().join("diffusers").to_str().unwrap(),
        "--ui",
        tiny().join("input.png").to_str().unwrap(),
        "--resolution",
        "64",
        "--edit-steps",
        "3",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["previews"], 3);
    assert!(r["frames"].as_u64().unwrap() >= 1);
    assert!(r["frame_ms_median"].as_f64().unwrap() > 0.0);
    assert!(stderr(&o).contains("frame CPU time"));
}

/// `bench --ui-folder` opens a project in the headless editor, drafts while moving down the
/// list, and reports frames, moves, drafts and thumbnails.
#[test]
fn ui_folder_bench_reports_frames_while_drafting() {
    let tmp = tempdir();
    let json = tmp.path().join("folder.json");
    let o = run_bin(&[
        "bench",
        "--model",
        tiny().join("diffusers").to_str().unwrap(),
        "--ui-folder",
        "12",
        "--seconds",
        "3",
        "--resolution",
        "64",
        "--edit-steps",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["images"], 12);
    assert!(r["frames"].as_u64().unwrap() > 10, "{r}");
    assert!(r["steps"].as_u64().unwrap() > 1, "{r}");
    assert!(r["drafts_done"].as_u64().unwrap() >= 1, "{r}");
    assert!(
        (1..=12).contains(&r["thumbnails_held_max"].as_u64().unwrap()),
        "{r}"
    );
    assert!(stderr(&o).contains("thumbnails held"));
}

/// A guidance grid scores every family at each setting and records the winners in the model
/// folder, keeping the rest of its defaults.
#[test]
fn eval_grid_saves_each_familys_best_guidance_in_the_model() {
    let tmp = tempdir();
    let model = tmp.path().join("model");
    util::copy_dir(&tiny().join("diffusers"), &model);
    std::fs::write(
        model.join("instructdiffusion.json"),
        r#"{"guidance": "instructdiffusion", "steps": 7, "resolution": 128,
            "task_guidance": {"keypoints": [3.0, 1.0]}}"#,
    )
    .unwrap();
    let m = model.display().to_string();
    let o = run_bin(&[
        "eval",
        "--model",
        &m,
        "--per-task",
        "1",
        "--tasks",
        "denoise,remove",
        "--steps",
        "1",
        "--seed",
        "3",
        "--grid",
        "1:1.25,5:1.25",
        "--guidance-rescale",
        "0.5",
        "--save-guidance",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("guidance text 1 / image 1.25")
            && out.contains("best marked *")
            && out.contains("guidance rescaled 0.5"),
        "{out}"
    );
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(model.join("instructdiffusion.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["steps"], 7, "the rest of the defaults kept");
    assert_eq!(
        saved["guidance_rescale"], 0.5,
        "the table holds at the grid's rescale"
    );
    // Denoising gain is continuous: the two settings differ and one of them is recorded.
    let denoise = saved["task_guidance"]["denoise"]
        .as_array()
        .expect("denoise recorded");
    let pair = (denoise[0].as_f64().unwrap(), denoise[1].as_f64().unwrap());
    assert!(pair == (1.0, 1.25) || pair == (5.0, 1.25), "{pair:?}");
    assert_eq!(
        saved["task_guidance"]["keypoints"],
        serde_json::json!([3.0, 1.0]),
        "not evaluated, kept as recorded"
    );
    fails_with(&["eval", "--model", &m, "--grid", "5"], "not TEXT:IMAGE");
    fails_with(&["eval", "--model", &m, "--save-guidance"], "--grid");
}

/// `eval --trained-on N` scores samples of the trainer's own pool: seeds below the held-out
/// range, named in the table; a pool too small to hold a family is refused, not scored 0.
#[test]
fn eval_trained_on_scores_the_trainers_own_samples() {
    let tmp = tempdir();
    let json = tmp.path().join("eval.json");
    let answers = tmp.path().join("answers");
    let o = run_bin(&[
        "eval",
        "--model",
        &tiny_model(),
        "--per-task",
        "2",
        "--tasks",
        "remove",
        "--steps",
        "1",
        "--seed",
        "3",
        "--trained-on",
        "64",
        "--json",
        &json.display().to_string(),
        "--samples-out",
        &answers.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("trained-on (pool of 64) scenes"), "{table}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["trained_on"], 64);
    assert_eq!(report["rows"][0]["samples"], 2);
    for line in std::fs::read_to_string(answers.join("samples.jsonl"))
        .unwrap()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            v["seed"].as_u64().unwrap() < 1 << 40,
            "a training seed: {v}"
        );
    }
    let m = tiny_model();
    fails_with(
        &["eval", "--model", &m, "--trained-on", "0"],
        "--trained-on N takes the pool's size, at least 1",
    );
    fails_with(
        &[
            "eval",
            "--model",
            &m,
            "--tasks",
            "keypoints,remove",
            "--trained-on",
            "1",
        ],
        "samples of the trainer's pool hold no",
    );
}

#[test]
fn eval_prints_and_writes_a_table_per_task() {
    let tmp = tempdir();
    let json = tmp.path().join("eval.json");
    let o = run_bin(&[
        "eval",
        "--model",
        &tiny_model(),
        "--per-task",
        "1",
        "--size",
        "128",
        "--tasks",
        "keypoints,remove,denoise,referring_segmentation",
        "--steps",
        "1",
        "--seed",
        "3",
        "--task-guidance",
        "--json",
        &json.display().to_string(),
        "--samples-out",
        &tmp.path().join("answers").display().to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("per-task guidance"), "{table}");
    for needle in [
        "keypoints",
        "PCK@0.1",
        "remove",
        "success",
        "denoise",
        "gain dB",
        "cIoU",
    ] {
        assert!(table.contains(needle), "{table}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["rows"].as_array().unwrap().len(), 4);
    // Each answer kept for the eye, with its own score: one sample per family, so each line's
    // value is its family's score in the report.
    let answers = tmp.path().join("answers");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(answers.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for (line, row) in lines.iter().zip(report["rows"].as_array().unwrap()) {
        assert_eq!(line["task"], row["task"]);
        let sheet = image::open(answers.join(line["sheet"].as_str().unwrap())).unwrap();
        assert_eq!((sheet.width(), sheet.height()), (3 * 128 + 8, 128));
        let metric = match line["measure"].as_str().unwrap() {
            "IoU" => "mIoU",
            m => m,
        };
        let in_report = row["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m[0] == metric)
            .unwrap()[1]
            .as_f64()
            .unwrap();
        assert!(
            (line["value"].as_f64().unwrap() - in_report).abs() < 1e-9,
            "{line}"
        );
    }
    assert!(lines[3]["phrase"].as_str().unwrap().starts_with("the "));
    fails_with(
        &[
            "eval",
            "--model",
            &tiny_model(),
            "--task-guidance",
            "--text-cfg",
            "3",
        ],
        "cannot be used with",
    );
    let o = run_bin(&["eval", "--model", &tiny_model(), "--tasks", "juggling"]);
    assert!(
        !o.status.success() && stderr(&o).contains("unknown task 'juggling'"),
        "{}",
        stderr(&o)
    );
}

/// `data synth --tasks` writes samples of the named families only; an unknown family is an
/// error that names it, before anything is written.
#[test]
fn data_synth_writes_only_the_families_asked_for() {
    let dir = util::tempdir();
    let out = dir.path().join("kp");
    let o = run_bin(&[
        "data",
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--count",
        "6",
        "--size",
        "64",
        "--tasks",
        "keypoints",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let records = instructdiffusion::data::dataset::read(&out).unwrap();
    assert_eq!(records.len(), 6);
    assert!(
        records
            .iter()
            .all(|r| r.task == Some(instructdiffusion::tasks::Task::Keypoints)),
        "{records:?}"
    );
    let bad = dir.path().join("bad");
    let o = run_bin(&[
        "data",
        "synth",
        "--out",
        bad.to_str().unwrap(),
        "--tasks",
        "keypints",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("keypints"), "{}", stderr(&o));
    assert!(!bad.exists(), "nothing written for a bad request");
}
