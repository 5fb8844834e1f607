//! UI responsiveness while the worker samples (`bench --ui IMAGE`): the editor's own `ui()`
//! driven headless frame after frame during an edit, timing each frame's CPU work on the UI
//! thread (layout and tessellation; the GPU's rasterisation is not included) and how long
//! each live preview waited between the worker sending it and the frame that took it in.

use std::path::Path;
use std::time::{Duration, Instant};

use eframe::egui;
use serde::Serialize;

use super::state::Activity;
use super::{EditorApp, Options};

/// What `bench --ui` measures.
#[derive(Debug, Clone, Serialize)]
pub struct UiReport {
    pub model: String,
    pub frames: usize,
    pub frame_ms_median: f64,
    pub frame_ms_p95: f64,
    pub frame_ms_max: f64,
    pub previews: usize,
    /// Median wait between the worker sending a preview and the frame that took it in
    /// (frames run every `frame_interval_ms`, as a 60 Hz display would ask).
    pub preview_latency_ms_median: f64,
    pub frame_interval_ms: f64,
    pub edit_s: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs one edit of `steps` steps of `image` at `resolution` (0: the model's) on `model` in a
/// headless editor, frame by frame.
pub fn ui_frames(
    model: &str,
    image: &Path,
    steps: usize,
    resolution: usize,
) -> anyhow::Result<UiReport> {
    // A session folder of its own (never the user's); the last run's is cleared first, as the
    // session writer may still be finishing when this returns.
    let session = std::env::temp_dir().join("instructdiffusion-ui-bench");
    let _ = std::fs::remove_dir_all(&session);
    let ctx = egui::Context::default();
    let cc = eframe::CreationContext::_new_kittest(ctx.clone());
    let mut app = EditorApp::new(
        &cc,
        Options {
            image: Some(image.to_path_buf()),
            model: Some(model.to_string()),
            session_dir: Some(session.clone()),
            prompt: None,
        },
    );
    let mut frame = eframe::Frame::_new_kittest();
    let interval = Duration::from_micros(16_667);
    let input = || egui::RawInput {
        screen_rect: Some(egui::Rect::from_min_size(
            egui::Pos2::ZERO,
            egui::vec2(1280.0, 800.0),
        )),
        ..Default::default()
    };
    let mut run_frame = |app: &mut EditorApp| -> f64 {
        let t = Instant::now();
        let mut out = ctx.run_ui(input(), |ui| eframe::App::ui(app, ui, &mut frame));
        let _ = ctx.tessellate(out.shapes, out.pixels_per_point);
        // No renderer takes the texture updates here.
        out.textures_delta.clear();
        t.elapsed().as_secs_f64() * 1e3
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while app.model.is_none() {
        if Instant::now() > deadline || app.notice.as_ref().is_some_and(|n| n.error) {
            anyhow::bail!(
                "the model did not load: {}",
                app.notice.map(|n| n.text).unwrap_or_default()
            );
        }
        run_frame(&mut app);
        std::thread::sleep(interval);
    }
    app.settings.steps = steps;
    app.settings.resolution = resolution;
    app.settings.variants = 1;
    app.prompt = "Apply a blue semi-transparent mask to the circle.".into();
    run_frame(&mut app);
    app.run_edit();
    let t0 = Instant::now();
    let mut times = vec![];
    app.preview_waits_ms.clear();
    loop {
        let before = Instant::now();
        times.push(run_frame(&mut app));
        if matches!(app.activity, Activity::Idle) {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("the edit did not finish in 10 minutes");
        }
        std::thread::sleep(interval.saturating_sub(before.elapsed()));
    }
    let edit_s = t0.elapsed().as_secs_f64();
    if app.session.history.is_empty() {
        anyhow::bail!(
            "the edit failed: {}",
            app.notice.map(|n| n.text).unwrap_or_default()
        );
    }
    times.sort_by(f64::total_cmp);
    let mut waits = app.preview_waits_ms.clone();
    waits.sort_by(f64::total_cmp);
    Ok(UiReport {
        model: app.model.clone().unwrap_or_default(),
        frames: times.len(),
        frame_ms_median: percentile(&times, 0.5),
        frame_ms_p95: percentile(&times, 0.95),
        frame_ms_max: times.last().copied().unwrap_or(f64::NAN),
        previews: app.previews_received,
        preview_latency_ms_median: percentile(&waits, 0.5),
        frame_interval_ms: interval.as_secs_f64() * 1e3,
        edit_s,
    })
}

/// The report as table rows.
pub fn table(r: &UiReport) -> String {
    format!(
        "UI while an edit runs ({}, {} frames at {:.1} ms intervals, edit {:.2} s)\n\
         frame CPU time   median {:.2} ms  p95 {:.2} ms  max {:.2} ms\n\
         previews shown   {}  (median wait from the worker to the frame: {:.1} ms)\n",
        r.model,
        r.frames,
        r.frame_interval_ms,
        r.edit_s,
        r.frame_ms_median,
        r.frame_ms_p95,
        r.frame_ms_max,
        r.previews,
        r.preview_latency_ms_median
    )
}
