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

/// The editor driven headless at 60 Hz, as a display would ask for frames: each frame's CPU
/// work (layout and tessellation; no renderer takes the textures) is timed.
struct Headless {
    ctx: egui::Context,
    frame: eframe::Frame,
    app: EditorApp,
}

/// Frames at 60 Hz.
const INTERVAL: Duration = Duration::from_micros(16_667);

impl Headless {
    /// Opens the editor on `open` (an image or a folder) with `model`, in a session folder of
    /// its own (never the user's; the last run's is cleared first, as the session writer may
    /// still be finishing when a run returns), and runs frames until the model is loaded.
    fn start(model: &str, open: &Path) -> anyhow::Result<Self> {
        let session = std::env::temp_dir().join("instructdiffusion-ui-bench");
        let _ = std::fs::remove_dir_all(&session);
        let ctx = egui::Context::default();
        let cc = eframe::CreationContext::_new_kittest(ctx.clone());
        let app = EditorApp::new(
            &cc,
            Options {
                image: Some(open.to_path_buf()),
                model: Some(model.to_string()),
                session_dir: Some(session),
                prompt: None,
            },
        );
        let mut h = Self {
            ctx,
            frame: eframe::Frame::_new_kittest(),
            app,
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        while h.app.model.is_none() {
            if Instant::now() > deadline || h.app.notice.as_ref().is_some_and(|n| n.error) {
                anyhow::bail!("the model did not load: {}", h.notice());
            }
            h.frame(vec![]);
            std::thread::sleep(INTERVAL);
        }
        Ok(h)
    }

    /// The editor's last notice, for an error message.
    fn notice(&self) -> String {
        self.app
            .notice
            .as_ref()
            .map(|n| n.text.clone())
            .unwrap_or_default()
    }

    /// Runs one frame with these input events; returns its CPU time in milliseconds.
    fn frame(&mut self, events: Vec<egui::Event>) -> f64 {
        let input = egui::RawInput {
            screen_rect: Some(egui::Rect::from_min_size(
                egui::Pos2::ZERO,
                egui::vec2(1280.0, 800.0),
            )),
            events,
            ..Default::default()
        };
        let t = Instant::now();
        let (app, frame) = (&mut self.app, &mut self.frame);
        let mut out = self.ctx.run_ui(input, |ui| eframe::App::ui(app, ui, frame));
        let _ = self.ctx.tessellate(out.shapes, out.pixels_per_point);
        out.textures_delta.clear();
        t.elapsed().as_secs_f64() * 1e3
    }
}

/// Runs one edit of `steps` steps of `image` at `resolution` (0: the model's) on `model` in a
/// headless editor, frame by frame.
pub fn ui_frames(
    model: &str,
    image: &Path,
    steps: usize,
    resolution: usize,
) -> anyhow::Result<UiReport> {
    let mut h = Headless::start(model, image)?;
    h.app.settings.steps = steps;
    h.app.settings.resolution = resolution;
    h.app.settings.variants = 1;
    h.app.prompt = "Apply a blue semi-transparent mask to the circle.".into();
    h.frame(vec![]);
    h.app.run_edit();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(600);
    let mut times = vec![];
    h.app.preview_waits_ms.clear();
    loop {
        let before = Instant::now();
        times.push(h.frame(vec![]));
        if matches!(h.app.activity, Activity::Idle) {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("the edit did not finish in 10 minutes");
        }
        std::thread::sleep(INTERVAL.saturating_sub(before.elapsed()));
    }
    let edit_s = t0.elapsed().as_secs_f64();
    if h.app.session.history.is_empty() {
        anyhow::bail!("the edit failed: {}", h.notice());
    }
    times.sort_by(f64::total_cmp);
    let mut waits = h.app.preview_waits_ms.clone();
    waits.sort_by(f64::total_cmp);
    Ok(UiReport {
        model: h.app.model.clone().unwrap_or_default(),
        frames: times.len(),
        frame_ms_median: percentile(&times, 0.5),
        frame_ms_p95: percentile(&times, 0.95),
        frame_ms_max: times.last().copied().unwrap_or(f64::NAN),
        previews: h.app.previews_received,
        preview_latency_ms_median: percentile(&waits, 0.5),
        frame_interval_ms: INTERVAL.as_secs_f64() * 1e3,
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

/// What `bench --ui-folder N` measures.
#[derive(Debug, Clone, Serialize)]
pub struct FolderReport {
    pub model: String,
    pub images: usize,
    pub image_px: u32,
    pub seconds: f64,
    pub frames: usize,
    pub frame_ms_median: f64,
    pub frame_ms_p95: f64,
    pub frame_ms_max: f64,
    /// Frames that moved to the next image (Down), which opens it on the UI thread.
    pub steps: usize,
    pub drafts_done: usize,
    pub thumbnails_held_max: usize,
    pub rss_mib_loaded: f64,
    pub rss_mib_end: f64,
    pub rss_mib_peak: f64,
}

/// The process's resident memory now and at its peak, in MiB (Linux; NaN elsewhere).
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A folder of `n` images of `px` px (made once, kept in the temp folder; its project state
/// cleared): [`UNIQUE`] procedural scenes, copied under new names up to `n` (a scene takes
/// about half a second to draw; a copy costs the editor as much as a new image).
fn bench_folder(n: usize, px: u32) -> anyhow::Result<std::path::PathBuf> {
    const UNIQUE: usize = 40;
    let dir = std::env::temp_dir().join(format!("instructdiffusion-ui-folder-{n}-{px}"));
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::remove_file(dir.join(crate::project::STATE_FILE));
    let weights = crate::data::sample::TaskWeights::default();
    let name = |i: usize| dir.join(format!("scene{i:05}.png"));
    for i in 0..n {
        let path = name(i);
        if path.exists() {
            continue;
        }
        if i < UNIQUE {
            let img = crate::data::sample::generate(i as u64, px, &weights).input;
            crate::imageio::save(&img, &path, &[])?;
        } else {
            let tmp = dir.join(format!(".scene{i:05}.tmp"));
            std::fs::copy(name(i % UNIQUE), &tmp)?;
            std::fs::rename(&tmp, &path)?;
        }
    }
    Ok(dir)
}

/// Opens a folder of `n` images as a project in a headless editor, drafts them all with
/// `model` (`steps` steps each, at `resolution`, 0: the model's) and, for `seconds`, runs
/// frames at 60 Hz while moving to the next image ten times a second (so the list scrolls
/// through the folder and its thumbnails are made and let go), timing each frame's CPU work on
/// the UI thread.
pub fn folder_frames(
    model: &str,
    n: usize,
    steps: usize,
    resolution: usize,
    seconds: f64,
) -> anyhow::Result<FolderReport> {
    const PX: u32 = 512;
    let dir = bench_folder(n, PX)?;
    let mut h = Headless::start(model, &dir)?;
    let Some(wb) = &h.app.workbench else {
        anyhow::bail!("the folder did not open: {}", h.notice());
    };
    anyhow::ensure!(
        wb.project.state.items.len() == n,
        "the folder holds other images"
    );
    let (rss_loaded, _) = rss_mib();
    h.app.settings.steps = steps;
    h.app.settings.resolution = resolution;
    h.app.settings.variants = 1;
    h.app.prompt = "Apply a blue semi-transparent mask to the circle.".into();
    h.frame(vec![]);
    let files = h.app.undrafted();
    h.app.draft_project(files);
    anyhow::ensure!(
        !matches!(h.app.activity, Activity::Idle),
        "drafting did not start: {}",
        h.notice()
    );
    let t0 = Instant::now();
    let (mut times, mut steps_taken, mut held_max) = (vec![], 0, 0);
    for k in 0.. {
        if t0.elapsed().as_secs_f64() >= seconds {
            break;
        }
        let before = Instant::now();
        let down = k % 6 == 5;
        steps_taken += down as usize;
        let events = match down {
            true => vec![egui::Event::Key {
                key: egui::Key::ArrowDown,
                physical_key: None,
                pressed: true,
                repeat: false,
                modifiers: egui::Modifiers::NONE,
            }],
            false => vec![],
        };
        times.push(h.frame(events));
        held_max = held_max.max(h.app.workbench.as_ref().map_or(0, |w| w.thumbs.held()));
        std::thread::sleep(INTERVAL.saturating_sub(before.elapsed()));
    }
    let seconds = t0.elapsed().as_secs_f64();
    let drafts_done = h
        .app
        .workbench
        .as_ref()
        .map_or(0, |w| w.project.counts()[1]);
    h.app.cancel();
    let (rss_end, rss_peak) = rss_mib();
    times.sort_by(f64::total_cmp);
    Ok(FolderReport {
        model: h.app.model.clone().unwrap_or_default(),
        images: n,
        image_px: PX,
        seconds,
        frames: times.len(),
        frame_ms_median: percentile(&times, 0.5),
        frame_ms_p95: percentile(&times, 0.95),
        frame_ms_max: times.last().copied().unwrap_or(f64::NAN),
        steps: steps_taken,
        drafts_done,
        thumbnails_held_max: held_max,
        rss_mib_loaded: rss_loaded,
        rss_mib_end: rss_end,
        rss_mib_peak: rss_peak,
    })
}

/// The folder report as table rows.
pub fn folder_table(r: &FolderReport) -> String {
    format!(
        "A folder of {} images ({} px) drafting with {} for {:.0} s ({} drafts done)\n\
         frame CPU time   median {:.2} ms  p95 {:.2} ms  max {:.2} ms  ({} frames, {} moves to the next image)\n\
         thumbnails held  at most {}\n\
         memory (RSS)     {:.0} MiB loaded, {:.0} MiB at the end, {:.0} MiB peak\n",
        r.images,
        r.image_px,
        r.model,
        r.seconds,
        r.drafts_done,
        r.frame_ms_median,
        r.frame_ms_p95,
        r.frame_ms_max,
        r.frames,
        r.steps,
        r.thumbnails_held_max,
        r.rss_mib_loaded,
        r.rss_mib_end,
        r.rss_mib_peak
    )
}
