//! The desktop editor (eframe/egui). The UI thread only draws and sends commands to the
//! [`crate::worker`]; state and its logic live in [`state`].

pub mod bench;
pub mod picker;
pub mod state;
pub mod training;
pub mod workbench;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Sender};
use eframe::egui;
use eframe::egui::{
    Color32, ColorImage, Key, KeyboardShortcut, Modifiers, TextureHandle, TextureOptions,
};
use image::RgbImage;

use self::state::{Activity, Entry, ExportKind, SeedMode, Session, SessionFile, Settings};
use self::training::{PanelAction, TrainState, TrainingPanel};
use crate::imageio;
use crate::sample::pipeline::EditRequest;
use crate::sample::samplers::Sampler;
use crate::settings::{GuidanceFormula, SamplingDefaults};
use crate::tasks::Task;
use crate::worker::{Command, Event, Worker};

const SETTINGS_KEY: &str = "instructdiffusion.settings";

/// How the editor starts.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// An image to open at once.
    pub image: Option<PathBuf>,
    /// Overrides the remembered model.
    pub model: Option<String>,
    /// An instruction to fill in.
    pub prompt: Option<String>,
    /// Where the crash-safe session lives (default: the app's data folder).
    pub session_dir: Option<PathBuf>,
}

/// Opens the editor window; returns when it is closed.
pub fn run(options: Options) -> anyhow::Result<()> {
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_inner_size([1280.0, 800.0])
            .with_min_inner_size([640.0, 400.0])
            .with_title("InstructDiffusion"),
        ..Default::default()
    };
    eframe::run_native(
        "instructdiffusion",
        native,
        Box::new(move |cc| Ok(Box::new(EditorApp::new(cc, options)))),
    )
    .map_err(|e| anyhow::anyhow!("the editor window could not start: {e} (is a display available? the command-line subcommands work without one)"))
}

/// A message for the status bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub text: String,
    pub error: bool,
}

/// What the canvas texture shows: cursor, history length, the source held, magnified, the
/// model's own pixels.
type CanvasKey = (usize, usize, bool, bool, bool);

/// The editor.
pub struct EditorApp {
    pub settings: Settings,
    pub session: Session,
    pub prompt: String,
    pub activity: Activity,
    /// The model the worker holds (its resolved source), if any.
    pub model: Option<String>,
    /// What that model recommends (guidance per task family for the task picker).
    pub model_defaults: Option<SamplingDefaults>,
    pub notice: Option<Notice>,
    pub show_before: bool,
    pub side_by_side: bool,
    /// The compare slider: the source left of the divider, the result right of it.
    pub compare: bool,
    /// Where the divider is, as a fraction of the image's width.
    pub compare_split: f32,
    /// Where the open image was drawn last frame (screen points).
    pub canvas_rect: Option<egui::Rect>,
    /// Live previews shown since the app started.
    pub previews_received: usize,
    /// How long the latest previews (up to 256) waited between the worker and the UI, in ms.
    pub preview_waits_ms: Vec<f64>,
    pub show_overlays: bool,
    pub overlay_opacity: f32,
    overlay: Option<(TextureHandle, usize)>,
    /// The source for side-by-side view (made once per opened image).
    source_tex: Option<TextureHandle>,
    session_file: Option<SessionFile>,
    persist_tx: Option<Sender<Session>>,
    /// The close button was pressed with unsaved results: asking.
    pub confirm_close: bool,
    /// Canvas scale (1.0 = one image pixel per screen point); `None` fits the window.
    pub zoom: Option<f32>,
    /// Finished variants waiting to be picked.
    pub variants: Vec<Entry>,
    /// Painting the edit region with the brush (drag on the canvas).
    pub brush: bool,
    pub brush_radius: f32,
    /// The painted region (row-major, the open image's size); edits change only its pixels.
    pub region: Option<Vec<bool>>,
    region_tex: Option<TextureHandle>,
    variant_tex: Vec<TextureHandle>,
    queue: Vec<(RgbImage, EditRequest)>,
    collecting: bool,
    allow_close: bool,
    worker: Worker,
    next_job: u64,
    canvas: Option<(TextureHandle, CanvasKey)>,
    preview: Option<TextureHandle>,
    dialogs: (Sender<DialogResult>, Receiver<DialogResult>),
    /// The training panel (a window).
    pub training: TrainingPanel,
    /// A folder opened as an annotation project.
    pub workbench: Option<workbench::Workbench>,
}

enum DialogResult {
    Open(PathBuf),
    Save(PathBuf),
    Export(ExportKind, PathBuf),
    TrainData(PathBuf),
    /// The project's COCO file; reviewed images only or with the drafts.
    ProjectExport(PathBuf, bool),
    /// A folder for the project's reviewed images as a training set.
    ProjectTrainingSet(PathBuf),
}

impl EditorApp {
    pub fn new(cc: &eframe::CreationContext<'_>, options: Options) -> Self {
        let mut settings: Settings = cc
            .storage
            .and_then(|s| eframe::get_value(s, SETTINGS_KEY))
            .unwrap_or_default();
        if let Some(m) = options.model {
            settings.model = m;
        }
        let ctx = cc.egui_ctx.clone();
        let worker = Worker::spawn(move || ctx.request_repaint());
        let mut app = Self {
            settings,
            session: Session::default(),
            prompt: String::new(),
            activity: Activity::Idle,
            model: None,
            model_defaults: None,
            notice: None,
            show_before: false,
            side_by_side: false,
            compare: false,
            compare_split: 0.5,
            canvas_rect: None,
            previews_received: 0,
            preview_waits_ms: vec![],
            show_overlays: true,
            overlay_opacity: 0.5,
            overlay: None,
            source_tex: None,
            session_file: options
                .session_dir
                .clone()
                .or_else(|| eframe::storage_dir("instructdiffusion").map(|d| d.join("session")))
                .map(|dir| SessionFile { dir }),
            persist_tx: None,
            confirm_close: false,
            zoom: None,
            variants: vec![],
            brush: false,
            brush_radius: 16.0,
            region: None,
            region_tex: None,
            variant_tex: vec![],
            queue: vec![],
            collecting: false,
            allow_close: false,
            worker,
            next_job: 1,
            canvas: None,
            preview: None,
            dialogs: unbounded(),
            workbench: None,
            training: TrainingPanel::new(
                &eframe::storage_dir("instructdiffusion")
                    .map_or_else(|| PathBuf::from("runs"), |d| d.join("runs")),
            ),
        };
        app.load_model();
        if let Some(p) = options.prompt {
            app.prompt = p;
        }
        if let Some(path) = options.image {
            app.open_path(&path);
        } else if let Some(file) = &app.session_file {
            match file.load() {
                Ok(Some(session)) if session.source.is_some() => {
                    app.notice = Some(Notice {
                        text: format!(
                            "restored the last session ({} results)",
                            session.history.len()
                        ),
                        error: false,
                    });
                    app.session = session;
                }
                Ok(_) => {}
                Err(e) => app.error(format!("the last session could not be restored: {e}")),
            }
        }
        app
    }

    /// Writes the crash-safe copy of the session, off the UI thread.
    /// One writer thread per app: it writes only the newest snapshot it has been sent, so
    /// a burst of results cannot land on disk out of order.
    fn persist_session(&mut self) {
        let Some(file) = self.session_file.clone() else {
            return;
        };
        let tx = self.persist_tx.get_or_insert_with(|| {
            let (tx, rx) = unbounded::<Session>();
            std::thread::spawn(move || {
                while let Ok(mut session) = rx.recv() {
                    while let Ok(newer) = rx.try_recv() {
                        session = newer;
                    }
                    if let Err(e) = file.save(&session) {
                        eprintln!(
                            "warning: could not write the session file in '{}': {e}",
                            file.dir.display()
                        );
                    }
                }
            });
            tx
        });
        let _ = tx.send(self.session.clone());
    }

    /// Asks the worker to load the model named in the settings.
    pub fn load_model(&mut self) {
        self.worker.send(Command::Load {
            spec: self.settings.model.clone(),
            device: self.settings.device.clone(),
        });
        self.activity = Activity::Loading {
            spec: self.settings.model.clone(),
            file: None,
        };
    }

    /// Opens an image (never written to), or a folder as an annotation project.
    pub fn open_path(&mut self, path: &Path) {
        if path.is_dir() {
            return self.open_folder(path);
        }
        match imageio::load_rgb(path, imageio::DEFAULT_MAX_PIXELS) {
            Ok(img) => self.open_image(Some(path.to_path_buf()), img),
            Err(e) => self.error(e.to_string()),
        }
    }

    pub fn open_image(&mut self, path: Option<PathBuf>, img: RgbImage) {
        if let Some(p) = &path {
            self.settings.remember_file(p.clone());
        }
        self.notice = Some(Notice {
            text: format!(
                "opened {} ({}x{})",
                path.as_ref()
                    .map_or("pasted image".into(), |p| p.display().to_string()),
                img.width(),
                img.height()
            ),
            error: false,
        });
        self.session.open(path, img);
        self.region = None;
        self.region_tex = None;
        self.persist_session();
        self.canvas = None;
        self.source_tex = None;
        self.overlay = None;
    }

    fn error(&mut self, text: String) {
        self.notice = Some(Notice { text, error: true });
    }

    /// The worker has a job (a load, an edit or a training run).
    pub fn is_busy(&self) -> bool {
        !matches!(self.activity, Activity::Idle) || self.training.running()
    }

    /// Carries out what the training panel asks.
    pub fn training_action(&mut self, action: PanelAction) {
        match action {
            PanelAction::Start(job) => {
                if let Err(e) = job.plan() {
                    self.training.state = TrainState::Failed(e);
                    return;
                }
                self.training.started(job.steps);
                self.worker.send(Command::Train(job));
            }
            PanelAction::Stop => {
                self.worker.stop_training();
                self.training.stopping();
            }
            PanelAction::Load(dir) => {
                self.settings.model = dir.display().to_string();
                self.load_model();
            }
            PanelAction::PickData => {
                let tx = self.dialogs.0.clone();
                std::thread::spawn(move || {
                    if let Some(p) = rfd::FileDialog::new()
                        .set_title("A dataset folder (with metadata.jsonl)")
                        .pick_folder()
                    {
                        let _ = tx.send(DialogResult::TrainData(p));
                    }
                });
            }
        }
    }

    /// Starts an edit of the current image with the prompt.
    pub fn run_edit(&mut self) {
        let Some(image) = self.session.current().cloned() else {
            self.error("open an image first (Open, drag and drop, or a sample)".into());
            return;
        };
        if self.prompt.trim().is_empty() {
            self.error("type an instruction first, e.g. \"make it snow\"".into());
            return;
        }
        if self.is_busy() {
            return;
        }
        let random = rand::random::<u32>() as u64;
        let request = self.settings.next_request(&self.prompt, random);
        self.settings.remember_prompt(&self.prompt);
        let n = self.settings.variants.max(1);
        // Variants: the same request with consecutive seeds, run one after another; the
        // results wait in a picker instead of the history.
        self.variants.clear();
        self.variant_tex.clear();
        self.queue = (1..n as u64)
            .rev()
            .map(|i| {
                let mut r = request.clone();
                r.seed = r.seed.map(|s| s.wrapping_add(i));
                (image.clone(), r)
            })
            .collect();
        self.collecting = n > 1;
        self.start_job(image, request);
    }

    fn start_job(&mut self, image: RgbImage, request: EditRequest) {
        let job = self.next_job;
        self.next_job += 1;
        let region = self
            .region
            .as_ref()
            .filter(|r| {
                r.len() == (image.width() * image.height()) as usize && r.iter().any(|v| *v)
            })
            .cloned();
        self.worker.send(Command::Edit {
            job,
            image,
            request,
            region,
        });
        self.activity = Activity::editing(job, self.settings.steps, None);
    }

    /// Paints into the edit region while the brush is on, and shows the region.
    fn brush_layer(&mut self, ui: &mut egui::Ui, shown: &egui::Response, scale: f32) {
        let Some(img) = self.session.current() else {
            return;
        };
        let (w, h) = (img.width() as usize, img.height() as usize);
        if self.brush {
            let r = ui.interact(shown.rect, ui.scope_id().with("brush"), egui::Sense::drag());
            if let Some(pos) = r
                .interact_pointer_pos()
                .filter(|_| r.dragged() || r.drag_started())
            {
                let p = (pos - shown.rect.min) / scale;
                let region = self.region.get_or_insert_with(|| vec![false; w * h]);
                if region.len() == w * h {
                    paint_disc(region, w, h, p.x, p.y, self.brush_radius);
                    self.region_tex = None;
                }
            }
        }
        let Some(region) = &self.region else { return };
        if region.len() != w * h {
            return;
        }
        if self.region_tex.is_none() {
            let pixels: Vec<egui::Color32> = region
                .iter()
                .map(|v| {
                    if *v {
                        egui::Color32::from_rgba_unmultiplied(255, 220, 0, 90)
                    } else {
                        egui::Color32::TRANSPARENT
                    }
                })
                .collect();
            let color = ColorImage::new([w, h], pixels);
            self.region_tex = Some(
                ui.ctx()
                    .load_texture("region", color, TextureOptions::NEAREST),
            );
        }
        if let Some(t) = &self.region_tex {
            ui.painter_at(shown.rect).image(
                t.id(),
                shown.rect,
                egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
                egui::Color32::WHITE,
            );
        }
    }

    fn variant_picker(&mut self, ui: &mut egui::Ui) {
        if self.variant_tex.len() != self.variants.len() {
            self.variant_tex = self
                .variants
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let img = image::imageops::thumbnail(&*e.image, 96, 96);
                    let color = ColorImage::from_rgb(
                        [img.width() as usize, img.height() as usize],
                        img.as_raw(),
                    );
                    ui.ctx()
                        .load_texture(format!("variant{i}"), color, TextureOptions::LINEAR)
                })
                .collect();
        }
        let mut picked = None;
        ui.horizontal(|ui| {
            ui.label("Variants: pick one");
            for (i, (tex, e)) in self.variant_tex.iter().zip(&self.variants).enumerate() {
                let name = format!("Variant {} (seed {})", i + 1, e.plan.seed);
                let r = ui
                    .add(egui::Button::image(egui::load::SizedTexture::new(
                        tex.id(),
                        tex.size_vec2() * (64.0 / tex.size_vec2().max_elem()),
                    )))
                    .on_hover_text(&name);
                r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, true, &name));
                if r.clicked() {
                    picked = Some(i);
                }
            }
        });
        if let Some(i) = picked {
            self.pick_variant(i);
        }
    }

    /// Keeps variant `i` as the next result (the others are dropped).
    pub fn pick_variant(&mut self, i: usize) {
        if i < self.variants.len() {
            let entry = self.variants.swap_remove(i);
            self.variants.clear();
            self.variant_tex.clear();
            self.session.push(entry);
            self.persist_session();
            self.canvas = None;
            self.overlay = None;
        }
    }

    pub fn cancel(&mut self) {
        if let Activity::Editing { cancelling, .. } = &mut self.activity {
            *cancelling = true;
            self.worker.cancel();
        }
    }

    /// Applies what the worker reported.
    pub fn handle_events(&mut self, ctx: &egui::Context) {
        for event in self.worker.poll() {
            match event {
                Event::Loading { spec } => {
                    self.activity = Activity::Loading { spec, file: None };
                }
                Event::Download { file, done, total } => {
                    if let Activity::Loading { file: f, .. } = &mut self.activity {
                        *f = Some((file, done, total));
                    }
                }
                Event::Loaded {
                    spec,
                    source,
                    notes,
                    defaults,
                } => {
                    self.model_defaults = Some(defaults);
                    self.activity = Activity::Idle;
                    self.settings.remember_model(spec);
                    self.notice = Some(Notice {
                        text: format!(
                            "model ready: {source}{}",
                            if notes.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", notes.join("; "))
                            }
                        ),
                        error: false,
                    });
                    self.model = Some(source);
                }
                Event::LoadFailed { message, .. } => {
                    self.activity = Activity::Idle;
                    self.model = None;
                    self.model_defaults = None;
                    self.error(format!("{message}. Choose a model in the settings panel (a diffusers folder, a .ckpt/.safetensors file or a hub id)."));
                }
                Event::Started { .. } => {}
                Event::Step {
                    job,
                    step,
                    total,
                    elapsed_s,
                    preview,
                    sent,
                    tile,
                } => {
                    if preview.is_some() {
                        if self.preview_waits_ms.len() == 256 {
                            self.preview_waits_ms.remove(0);
                        }
                        self.preview_waits_ms
                            .push(sent.elapsed().as_secs_f64() * 1e3);
                    }
                    if let Activity::Editing {
                        job: j,
                        step: s,
                        total: t,
                        elapsed_s: e,
                        previews,
                        tile: tl,
                        ..
                    } = &mut self.activity
                    {
                        if *j == job {
                            (*s, *t, *e, *tl) = (step, total, elapsed_s, tile);
                            if let Some(p) = preview {
                                *previews += 1;
                                self.previews_received += 1;
                                let img = ColorImage::from_rgba_unmultiplied(
                                    [p.width, p.height],
                                    &p.rgba,
                                );
                                match &mut self.preview {
                                    Some(tex) => tex.set(img, TextureOptions::LINEAR),
                                    None => {
                                        self.preview = Some(ctx.load_texture(
                                            "preview",
                                            img,
                                            TextureOptions::LINEAR,
                                        ))
                                    }
                                }
                            }
                        }
                    }
                }
                Event::Done {
                    image,
                    plan,
                    seconds,
                    decoded,
                    model_image,
                    applied,
                    ..
                } => {
                    self.activity = Activity::Idle;
                    self.notice = Some(Notice {
                        text: format!(
                            "done in {seconds:.1} s (seed {}, {} steps)",
                            plan.seed, plan.steps
                        ),
                        error: false,
                    });
                    let finished_at = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    if let Some(d) = &decoded {
                        let n = d.instances.len() + d.keypoints.len();
                        let label = d
                            .label
                            .as_ref()
                            .map(|(l, _)| format!(", label: {l}"))
                            .unwrap_or_default();
                        if let Some(notice) = &mut self.notice {
                            notice
                                .text
                                .push_str(&format!("; decoded {n} overlay(s){label}"));
                        }
                    }
                    let entry = Entry {
                        image: std::sync::Arc::new(image),
                        decoded,
                        plan,
                        seconds,
                        finished_at,
                        model_image: model_image.map(std::sync::Arc::new),
                        applied: Some(applied),
                        show_model: false,
                    };
                    if self.collecting {
                        self.variants.push(entry);
                        match self.queue.pop() {
                            Some((img, req)) => self.start_job(img, req),
                            None => self.collecting = false,
                        }
                    } else {
                        self.session.push(entry);
                        self.persist_session();
                        self.canvas = None;
                        self.overlay = None;
                    }
                }
                Event::Drafted {
                    file,
                    result,
                    done,
                    total,
                    elapsed_s,
                    ..
                } => self.on_drafted(&file, result, done, total, elapsed_s),
                Event::DraftsDone { .. } => self.on_drafts_done(),
                Event::Cancelled { .. } => {
                    self.activity = Activity::Idle;
                    self.queue.clear();
                    self.collecting = false;
                    self.notice = Some(Notice {
                        text: "cancelled".into(),
                        error: false,
                    });
                }
                Event::Failed { message, .. } => {
                    if matches!(self.activity, Activity::Editing { .. }) {
                        self.activity = Activity::Idle;
                    }
                    self.queue.clear();
                    self.collecting = false;
                    self.error(message);
                }
                Event::Train(e) => self.training.apply(&e),
                Event::TrainFinished { model, stopped } => {
                    self.settings.remember_model(model.display().to_string());
                    self.notice = Some(Notice {
                        text: format!(
                            "training {}: the model is in '{}'",
                            if stopped { "stopped" } else { "finished" },
                            model.display()
                        ),
                        error: false,
                    });
                    self.training.state = TrainState::Finished { model, stopped };
                }
                Event::TrainFailed { message } => {
                    self.training.state = TrainState::Failed(message.clone());
                    self.error(format!("training failed: {message}"));
                }
            }
        }
        while let Ok(r) = self.dialogs.1.try_recv() {
            match r {
                DialogResult::Open(p) => self.open_path(&p),
                DialogResult::Save(p) => self.save_to(&p),
                DialogResult::Export(kind, p) => self.export_to(kind, &p),
                DialogResult::TrainData(p) => self.training.data = Some(p),
                DialogResult::ProjectExport(p, reviewed_only) => {
                    self.export_project(&p, reviewed_only)
                }
                DialogResult::ProjectTrainingSet(p) => self.project_training_set(&p),
            }
        }
    }

    /// Saves the current image (PNG keeps the settings as metadata), atomically; never over
    /// the source.
    pub fn save_to(&mut self, path: &Path) {
        let Some(img) = self.session.current().cloned() else {
            return;
        };
        if let Some(src) = &self.session.source_path {
            if let Err(e) = imageio::check_not_source(path, src) {
                return self.error(e.to_string());
            }
        }
        let text: Vec<(&str, String)> = match self.session.cursor {
            0 => vec![],
            n => {
                // The plan's settings, and how the result came to the photo's resolution.
                let entry = &self.session.history[n - 1];
                let mut json = serde_json::to_value(&entry.plan).unwrap_or_default();
                if let (Some(map), Some(applied)) = (json.as_object_mut(), &entry.applied) {
                    let shown = if entry.show_model {
                        &crate::fullres::Applied::ModelSize
                    } else {
                        applied
                    };
                    map.insert(
                        "applied".into(),
                        serde_json::to_value(shown).unwrap_or_default(),
                    );
                }
                vec![("instructdiffusion", json.to_string())]
            }
        };
        match imageio::save(&img, path, &text) {
            Ok(()) => {
                self.session.unsaved = false;
                self.notice = Some(Notice {
                    text: format!("saved {}", path.display()),
                    error: false,
                });
            }
            Err(e) => self.error(e.to_string()),
        }
    }

    /// Exports the current result's decoded masks and keypoints.
    pub fn export_to(&mut self, kind: ExportKind, path: &Path) {
        let Some(entry) = self
            .session
            .cursor
            .checked_sub(1)
            .and_then(|i| self.session.history.get(i))
        else {
            return self.error(
                "no result to export: run an instruction that asks for masks or keypoints".into(),
            );
        };
        let name = self
            .session
            .source_path
            .as_ref()
            .and_then(|p| p.file_name())
            .map_or("image.png".into(), |n| n.to_string_lossy().to_string());
        match state::export(kind, path, entry, &name) {
            Ok(()) => {
                self.notice = Some(Notice {
                    text: format!("exported {}", path.display()),
                    error: false,
                })
            }
            Err(e) => self.error(crate::support::error_chain(&e)),
        }
    }

    fn pick_export(&self, kind: ExportKind) {
        let tx = self.dialogs.0.clone();
        std::thread::spawn(move || {
            let picked = match kind {
                ExportKind::Coco => rfd::FileDialog::new()
                    .set_file_name("annotations.json")
                    .save_file(),
                ExportKind::Labelme => rfd::FileDialog::new()
                    .set_file_name("labelme.json")
                    .save_file(),
                ExportKind::Masks => rfd::FileDialog::new().pick_folder(),
            };
            if let Some(p) = picked {
                let _ = tx.send(DialogResult::Export(kind, p));
            }
        });
    }

    /// The current result's decoded answer (at the photo's size; none while the model's own
    /// pixels are shown).
    fn current_decoded(&self) -> Option<&crate::decode::Decoded> {
        let Some(i) = self.session.cursor.checked_sub(1) else {
            return self.project_draft();
        };
        let entry = self.session.history.get(i)?;
        if entry.show_model {
            return None;
        }
        entry.decoded.as_deref()
    }

    /// Masks, boxes and keypoints over the canvas image at `rect`; hovering one names it.
    fn draw_overlays(&mut self, ui: &mut egui::Ui, rect: egui::Rect) {
        let Some(d) = self.current_decoded().cloned() else {
            return;
        };
        if !self.show_overlays {
            return;
        }
        let sx = rect.width() / d.width as f32;
        let sy = rect.height() / d.height as f32;
        let key = self.session.cursor;
        if self.overlay.as_ref().map(|o| o.1) != Some(key) {
            self.overlay = state::mask_overlay(&d).map(|img| {
                let color = ColorImage::from_rgba_unmultiplied(
                    [img.width() as usize, img.height() as usize],
                    img.as_raw(),
                );
                (
                    ui.ctx()
                        .load_texture("overlay", color, TextureOptions::NEAREST),
                    key,
                )
            });
        }
        let painter = ui.painter_at(rect);
        if let Some((tex, _)) = &self.overlay {
            let tint = Color32::from_white_alpha((self.overlay_opacity * 255.0) as u8);
            painter.image(
                tex.id(),
                rect,
                egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
                tint,
            );
        }
        for (i, inst) in d.instances.iter().enumerate() {
            let [x, y, w, h] = inst.bbox;
            let r = egui::Rect::from_min_size(
                rect.min + egui::vec2(x as f32 * sx, y as f32 * sy),
                egui::vec2(w as f32 * sx, h as f32 * sy),
            );
            let [cr, cg, cb] = inst.color;
            painter.rect_stroke(
                r,
                0.0,
                egui::Stroke::new(2.0, Color32::from_rgb(cr, cg, cb)),
                egui::StrokeKind::Outside,
            );
            ui.interact(r, ui.scope_id().with(("instance", i)), egui::Sense::hover())
                .on_hover_text(format!(
                    "{} ({})
score {:.2}, area {} px",
                    inst.category, inst.phrase, inst.score, inst.area
                ));
        }
        for (i, p) in d.keypoints.iter().enumerate() {
            let c = rect.min + egui::vec2(p.x as f32 * sx, p.y as f32 * sy);
            let [cr, cg, cb] = p.color;
            painter.circle_stroke(
                c,
                (p.radius as f32 * sx).max(4.0),
                egui::Stroke::new(2.0, Color32::from_rgb(cr, cg, cb)),
            );
            painter.text(
                c + egui::vec2(8.0, -8.0),
                egui::Align2::LEFT_BOTTOM,
                &p.name,
                egui::FontId::proportional(13.0),
                Color32::WHITE,
            );
            let hit = egui::Rect::from_center_size(c, egui::vec2(16.0, 16.0));
            ui.interact(
                hit,
                ui.scope_id().with(("keypoint", i)),
                egui::Sense::hover(),
            )
            .on_hover_text(format!(
                "{} of {}
({:.1}, {:.1}), score {:.2}",
                p.name, p.category, p.x, p.y, p.score
            ));
        }
        if let Some((label, share)) = &d.label {
            painter.text(
                rect.min + egui::vec2(8.0, 8.0),
                egui::Align2::LEFT_TOP,
                format!("{label} ({:.0}%)", share * 100.0),
                egui::FontId::proportional(18.0),
                Color32::WHITE,
            );
        }
    }

    /// Closing with unsaved results asks first (they also stay in the recovered session).
    fn close_guard(&mut self, ctx: &egui::Context) {
        if ctx.input(|i| i.viewport().close_requested())
            && self.session.unsaved
            && !self.allow_close
        {
            ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
            self.confirm_close = true;
        }
        if !self.confirm_close {
            return;
        }
        egui::Window::new("Unsaved results")
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, egui::vec2(0.0, 0.0))
            .show(ctx, |ui| {
                ui.label("Some results are not saved. They stay in the recovered session, but not in a file of yours.");
                ui.horizontal(|ui| {
                    if ui.button("Save as...").clicked() {
                        self.confirm_close = false;
                        self.pick_save();
                    }
                    if ui.button("Close without saving").clicked() {
                        self.allow_close = true;
                        self.confirm_close = false;
                        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                    }
                    if ui.button("Keep editing").clicked() {
                        self.confirm_close = false;
                    }
                });
            });
    }

    fn pick_open(&self) {
        let tx = self.dialogs.0.clone();
        std::thread::spawn(move || {
            if let Some(p) = rfd::FileDialog::new()
                .add_filter(
                    "images",
                    &["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif"],
                )
                .pick_file()
            {
                let _ = tx.send(DialogResult::Open(p));
            }
        });
    }

    fn pick_save(&self) {
        let tx = self.dialogs.0.clone();
        std::thread::spawn(move || {
            if let Some(p) = rfd::FileDialog::new()
                .set_file_name("edited.png")
                .save_file()
            {
                let _ = tx.send(DialogResult::Save(p));
            }
        });
    }

    fn shortcuts(&mut self, ctx: &egui::Context) {
        let cmd = |k| KeyboardShortcut::new(Modifiers::COMMAND, k);
        let cmd_shift = |k| KeyboardShortcut::new(Modifiers::COMMAND | Modifiers::SHIFT, k);
        let (run, redo, undo, open, save, cancel) = ctx.input_mut(|i| {
            // Redo first: Ctrl+Z alone would also match Ctrl+Shift+Z (shift is optional).
            (
                i.consume_shortcut(&cmd(Key::Enter)),
                i.consume_shortcut(&cmd_shift(Key::Z)) || i.consume_shortcut(&cmd(Key::Y)),
                i.consume_shortcut(&cmd(Key::Z)),
                i.consume_shortcut(&cmd(Key::O)),
                i.consume_shortcut(&cmd(Key::S)),
                i.consume_key(Modifiers::NONE, Key::Escape),
            )
        });
        if run {
            self.run_edit();
        }
        if undo && !redo && !self.project_undo(false) {
            self.session.undo();
        }
        if redo && !self.project_undo(true) {
            self.session.redo();
        }
        if open {
            self.pick_open();
        }
        if save {
            self.pick_save();
        }
        if cancel {
            self.cancel();
        }
        let typing = ctx.egui_wants_keyboard_input();
        self.show_before = ctx.input(|i| i.key_down(Key::B)) && !typing;
        if !typing && ctx.input(|i| i.key_pressed(Key::C) && i.modifiers.is_none()) {
            self.compare = !self.compare;
        }
        let pasted = ctx.input(|i| {
            i.events.iter().find_map(|e| match e {
                egui::Event::PasteImage(img) => Some(img.clone()),
                _ => None,
            })
        });
        if let Some(img) = pasted {
            let [w, h] = img.size;
            let rgb: Vec<u8> = img
                .pixels
                .iter()
                .flat_map(|c| [c.r(), c.g(), c.b()])
                .collect();
            if let Some(rgb) = RgbImage::from_raw(w as u32, h as u32, rgb) {
                self.open_image(None, rgb);
            }
        }
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect()
        });
        if let Some(p) = dropped.first() {
            self.open_path(p);
        }
    }

    fn settings_panel(&mut self, ui: &mut egui::Ui) {
        ui.heading("Model");
        ui.horizontal(|ui| {
            let l = ui.label("Model");
            ui.add(egui::TextEdit::singleline(&mut self.settings.model).desired_width(150.0))
                .labelled_by(l.id);
            if ui
                .add_enabled(!self.is_busy(), egui::Button::new("Load"))
                .clicked()
            {
                self.load_model();
            }
            let recent = self.settings.recent_models.clone();
            ui.add_enabled_ui(!recent.is_empty() && !self.is_busy(), |ui| {
                ui.menu_button("Recent models", |ui| {
                    for m in recent {
                        if ui.button(&m).clicked() {
                            self.settings.model = m;
                            self.load_model();
                            ui.close();
                        }
                    }
                });
            });
        });
        ui.horizontal(|ui| {
            let l = ui.label("Device");
            egui::ComboBox::from_id_salt("device")
                .selected_text(&self.settings.device)
                .show_ui(ui, |ui| {
                    for d in DEVICES {
                        ui.selectable_value(&mut self.settings.device, d.to_string(), *d);
                    }
                })
                .response
                .labelled_by(l.id);
        });
        ui.label(
            egui::RichText::new(
                "builtin, a diffusers folder, a .ckpt/.safetensors file, or a hub id",
            )
            .small()
            .weak(),
        );
        ui.separator();
        ui.heading("Sampling");
        let s = &mut self.settings;
        let model_rescale = self
            .model_defaults
            .as_ref()
            .map_or(0.0, |d| d.guidance_rescale);
        egui::Grid::new("sampling").num_columns(2).show(ui, |ui| {
            labelled_row(
                ui,
                "Steps",
                egui::DragValue::new(&mut s.steps).range(1..=200),
            );
            labelled_row(
                ui,
                "Text guidance",
                egui::DragValue::new(&mut s.text_cfg)
                    .range(0.0..=30.0)
                    .speed(0.05),
            );
            labelled_row(
                ui,
                "Image guidance",
                egui::DragValue::new(&mut s.image_cfg)
                    .range(0.0..=10.0)
                    .speed(0.05),
            );
            let l = ui.label("Guidance rescale");
            ui.horizontal(|ui| {
                let mut own = s.guidance_rescale.is_some();
                let help = "0 is off. Scales the guided prediction back towards the spread of \
                    the fully conditioned one (Lin et al., 2024; diffusers' guidance_rescale), \
                    against over-saturated results at strong text guidance; 0.7 is the \
                    paper's value. Unticked: the model's own value.";
                if ui.checkbox(&mut own, "set").on_hover_text(help).changed() {
                    s.guidance_rescale = own.then_some(model_rescale);
                }
                match &mut s.guidance_rescale {
                    Some(phi) => ui
                        .add(egui::DragValue::new(phi).range(0.0..=1.0).speed(0.01))
                        .labelled_by(l.id)
                        .on_hover_text(help),
                    None => ui
                        .label(format!("model's: {model_rescale}"))
                        .labelled_by(l.id),
                };
            });
            ui.end_row();
            let l = ui.label("Sampler");
            egui::ComboBox::from_id_salt("sampler")
                .selected_text(s.sampler.a1111_name())
                .show_ui(ui, |ui| {
                    for v in Sampler::ALL {
                        ui.selectable_value(&mut s.sampler, v, v.a1111_name());
                    }
                })
                .response
                .labelled_by(l.id);
            ui.end_row();
            let l = ui.label("Guidance");
            egui::ComboBox::from_id_salt("guidance")
                .selected_text(s.guidance.name())
                .show_ui(ui, |ui| {
                    for v in [GuidanceFormula::InstructDiffusion, GuidanceFormula::Pix2Pix] {
                        ui.selectable_value(&mut s.guidance, v, v.name());
                    }
                })
                .response
                .labelled_by(l.id);
            ui.end_row();
            labelled_row(ui, "Seed", egui::DragValue::new(&mut s.seed));
            labelled_row(
                ui,
                "Variants",
                egui::DragValue::new(&mut s.variants).range(1..=8),
            );
            ui.label("Seed mode");
            ui.horizontal(|ui| {
                ui.selectable_value(&mut s.seed_mode, SeedMode::Random, "random");
                ui.selectable_value(&mut s.seed_mode, SeedMode::Fixed, "fixed");
                ui.selectable_value(&mut s.seed_mode, SeedMode::Increment, "+1");
            });
            ui.end_row();
            labelled_row(ui, "Resolution", resolution_field(&mut s.resolution, 64.0));
            let l = ui.label("Full resolution").on_hover_text(
                "how results come back at the photo's own size: auto picks by the instruction (answers redrawn on the photo, edits applied where the model changed something, enhancements in tiles at the photo's size)",
            );
            egui::ComboBox::from_id_salt("full_res")
                .selected_text(s.full_res.name())
                .show_ui(ui, |ui| {
                    for m in crate::fullres::FullRes::ALL {
                        ui.selectable_value(&mut s.full_res, m, m.name());
                    }
                })
                .response
                .labelled_by(l.id);
            ui.end_row();
        });
        // 0 is the model's own; anything else a multiple of 64.
        s.resolution = s.resolution / 64 * 64;
        ui.separator();
        ui.heading("Write an instruction");
        let defaults = &self.model_defaults;
        let s = &mut self.settings;
        let guidance = |task: Task| match defaults {
            Some(d) => d.guidance_for(task),
            None => task.guidance(),
        };
        let model_phrasing = defaults
            .as_ref()
            .map_or(crate::tasks::Phrasing::Templates, |d| d.phrasing());
        match picker::show(
            ui,
            &mut s.recipe,
            &mut s.fields,
            guidance,
            model_phrasing,
            &mut s.phrasing,
        ) {
            Some(picker::Picked::Write(text, (t, i))) => {
                self.prompt = text;
                (s.text_cfg, s.image_cfg) = (t, i);
                // The model's table holds at the model's rescale.
                s.guidance_rescale = None;
            }
            Some(picker::Picked::Missing(what)) => {
                self.error(format!("{what}: fill it in to write the instruction"))
            }
            None => {}
        }
    }

    fn canvas(&mut self, ui: &mut egui::Ui) {
        let Some(current) = self.session.current() else {
            ui.centered_and_justified(|ui| {
                ui.label("Open an image (Ctrl+O), drop one here, or pick a sample in the menu.");
            });
            return;
        };
        let show_source = self.show_before && self.session.cursor > 0;
        // From 1:1 up, pixels are drawn as crisp squares (nearest), smaller ones smoothly.
        let magnified = self
            .zoom
            .is_some_and(|z| z * ui.ctx().pixels_per_point() >= 0.999);
        let model_pixels = self
            .session
            .cursor
            .checked_sub(1)
            .and_then(|i| self.session.history.get(i))
            .is_some_and(|e| e.show_model);
        let key = (
            self.session.cursor,
            self.session.history.len(),
            show_source,
            magnified,
            model_pixels,
        );
        if self.canvas.as_ref().map(|c| c.1) != Some(key) {
            let img = if show_source {
                self.session.source.as_deref().unwrap()
            } else {
                current
            };
            let color =
                ColorImage::from_rgb([img.width() as usize, img.height() as usize], img.as_raw());
            let options = if magnified {
                TextureOptions::NEAREST
            } else {
                TextureOptions::LINEAR
            };
            self.canvas = Some((ui.ctx().load_texture("canvas", color, options), key));
        }
        let tex = self.canvas.as_ref().unwrap().0.clone();
        let avail = ui.available_size();
        let editing = matches!(self.activity, Activity::Editing { .. });
        let panes = if editing || self.side_by_side {
            2.0
        } else {
            1.0
        };
        let size = tex.size_vec2();
        let fit = ((avail.x / panes - 8.0) / size.x)
            .min(avail.y / size.y)
            .clamp(0.05, 4.0);
        // Ctrl + wheel (or a pinch) over the canvas zooms; the scroll bars and dragging pan.
        let zoom_delta = ui.input(|i| i.zoom_delta());
        if zoom_delta != 1.0 && ui.rect_contains_pointer(ui.max_rect()) {
            self.zoom = Some((self.zoom.unwrap_or(fit) * zoom_delta).clamp(0.05, 32.0));
        }
        let scale = self.zoom.unwrap_or(fit);
        egui::ScrollArea::both()
            .scroll_source(if self.zoom.is_some() {
                egui::containers::scroll_area::ScrollSource::ALL
            } else {
                egui::containers::scroll_area::ScrollSource::SCROLL_BAR
            })
            .auto_shrink(false)
            .show(ui, |ui| {
                self.canvas_images(ui, &tex, size, scale, show_source, editing)
            });
    }

    fn canvas_images(
        &mut self,
        ui: &mut egui::Ui,
        tex: &TextureHandle,
        size: egui::Vec2,
        scale: f32,
        show_source: bool,
        editing: bool,
    ) {
        let texture = egui::load::SizedTexture::new(tex.id(), size * scale);
        ui.horizontal_centered(|ui| {
            let shown = ui
                .add(egui::Image::from_texture(texture))
                .on_hover_text(if show_source {
                    "before (release B)"
                } else {
                    "current (hold B for before)"
                });
            self.canvas_rect = Some(shown.rect);
            if !show_source {
                self.draw_overlays(ui, shown.rect);
                if self.compare && !editing && self.session.cursor > 0 {
                    self.compare_layer(ui, &shown);
                } else if self.project_draft().is_some() {
                    self.correction_layer(ui, &shown, scale);
                } else {
                    self.brush_layer(ui, &shown, scale);
                }
            }
            if editing {
                if let Some(p) = &self.preview {
                    ui.add(egui::Image::from_texture((p.id(), size * scale)))
                        .on_hover_text("live preview of the edit");
                }
            } else if self.side_by_side {
                if let Some(t) = self.source_texture(ui.ctx()) {
                    ui.add(egui::Image::from_texture((t, size * scale)))
                        .on_hover_text("source");
                }
            }
        });
    }

    /// The source image's texture (made once per opened image).
    fn source_texture(&mut self, ctx: &egui::Context) -> Option<egui::TextureId> {
        if let (None, Some(src)) = (&self.source_tex, &self.session.source) {
            let color =
                ColorImage::from_rgb([src.width() as usize, src.height() as usize], src.as_raw());
            self.source_tex = Some(ctx.load_texture("source", color, TextureOptions::LINEAR));
        }
        self.source_tex.as_ref().map(|t| t.id())
    }

    /// The compare slider over the shown result: the source drawn left of the divider; a click
    /// or a drag on the image moves the divider.
    fn compare_layer(&mut self, ui: &mut egui::Ui, shown: &egui::Response) {
        let rect = shown.rect;
        let r = ui.interact(
            rect,
            ui.scope_id().with("compare_slider"),
            egui::Sense::click_and_drag(),
        );
        if let (true, Some(p)) = (r.clicked() || r.dragged(), r.interact_pointer_pos()) {
            self.compare_split = ((p.x - rect.left()) / rect.width()).clamp(0.0, 1.0);
        }
        let Some(src) = self.source_texture(ui.ctx()) else {
            return;
        };
        let (left, uv) = state::compare_split_rects(rect, self.compare_split);
        let painter = ui.painter_at(rect);
        painter.image(src, left, uv, egui::Color32::WHITE);
        let x = left.right();
        painter.line_segment(
            [egui::pos2(x, rect.top()), egui::pos2(x, rect.bottom())],
            egui::Stroke::new(2.0, egui::Color32::WHITE),
        );
        let label = |pos, align, text: &str| {
            painter.text(
                pos,
                align,
                text,
                egui::FontId::proportional(12.0),
                egui::Color32::WHITE,
            )
        };
        label(
            rect.left_top() + egui::vec2(4.0, 4.0),
            egui::Align2::LEFT_TOP,
            "before",
        );
        label(
            rect.right_top() + egui::vec2(-4.0, 4.0),
            egui::Align2::RIGHT_TOP,
            "after",
        );
        r.on_hover_cursor(egui::CursorIcon::ResizeHorizontal)
            .on_hover_text("drag: source on the left, result on the right");
    }

    fn bottom(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            let l = ui.label("Instruction");
            let r = ui
                .add(
                    egui::TextEdit::multiline(&mut self.prompt)
                        .hint_text(
                            "e.g. Apply a blue semi-transparent mask to the cat (Ctrl+Enter runs)",
                        )
                        .desired_rows(2)
                        .desired_width(ui.available_width() - 180.0),
                )
                .labelled_by(l.id);
            let _ = r;
            ui.vertical(|ui| {
                let can_run =
                    !self.is_busy() && self.model.is_some() && self.session.current().is_some();
                if ui
                    .add_enabled(can_run, egui::Button::new("Run"))
                    .on_hover_text("Ctrl+Enter")
                    .clicked()
                {
                    self.run_edit();
                }
                let editing = matches!(self.activity, Activity::Editing { .. });
                if ui
                    .add_enabled(editing, egui::Button::new("Cancel"))
                    .on_hover_text("Esc")
                    .clicked()
                {
                    self.cancel();
                }
            });
        });
        if !self.settings.prompt_history.is_empty() {
            ui.horizontal(|ui| {
                ui.label("Recent:");
                let recent: Vec<String> = self
                    .settings
                    .prompt_history
                    .iter()
                    .take(4)
                    .cloned()
                    .collect();
                for p in recent {
                    let short: String = p.chars().take(40).collect();
                    if ui.small_button(short).on_hover_text(&p).clicked() {
                        self.prompt = p;
                    }
                }
            });
        }
        if !self.variants.is_empty() {
            self.variant_picker(ui);
        }
        if let Activity::Editing {
            step,
            total,
            elapsed_s,
            cancelling,
            tile,
            images,
            ..
        } = &self.activity
        {
            if let Some((done, n, since)) = images {
                let eta = if *done > 0 {
                    format!(", eta {:.0} s", since / *done as f64 * (n - done) as f64)
                } else {
                    String::new()
                };
                ui.add(
                    egui::ProgressBar::new(*done as f32 / (*n).max(1) as f32)
                        .text(format!("drafted {done} of {n} images{eta} (Esc cancels)")),
                );
            }
            // Tiled runs advance within a step, tile by tile.
            let within = tile.map_or(0.0, |(done, n)| done as f64 / n.max(1) as f64);
            let (total, done) = ((*total).max(1), (*step).min(*total) as f64 + within);
            let frac = (done / total as f64) as f32;
            let eta = if done > 0.0 {
                elapsed_s / done * (total as f64 - done)
            } else {
                0.0
            };
            let text = match (*cancelling, tile) {
                (true, _) => "cancelling...".to_string(),
                (false, Some((i, n))) => format!(
                    "step {}/{total}, tile {i}/{n}, eta {eta:.1} s",
                    (*step + 1).min(total)
                ),
                (false, None) => format!("step {step}/{total}, eta {eta:.1} s"),
            };
            ui.add(egui::ProgressBar::new(frac).text(text));
        }
        ui.horizontal_wrapped(|ui| {
            ui.label(format!("History ({}):", self.session.history.len()));
            if ui
                .add_enabled(self.session.can_undo(), egui::Button::new("Undo"))
                .on_hover_text("Ctrl+Z")
                .clicked()
            {
                self.session.undo();
            }
            if ui
                .add_enabled(self.session.can_redo(), egui::Button::new("Redo"))
                .on_hover_text("Ctrl+Shift+Z")
                .clicked()
            {
                self.session.redo();
            }
            if let Some(entry) = self.session.current_entry_mut() {
                if let Some(own) = &entry.model_image {
                    let how = entry
                        .applied
                        .as_ref()
                        .map_or(String::new(), |a| format!(" (shown: {})", a.describe()));
                    let hover = format!(
                        "show the model's own picture, {}x{} px, instead of the result at the photo's size{how}",
                        own.width(),
                        own.height()
                    );
                    ui.checkbox(&mut entry.show_model, "Model's pixels")
                        .on_hover_text(hover);
                }
            }
            ui.checkbox(&mut self.side_by_side, "Side by side");
            ui.checkbox(&mut self.compare, "Compare").on_hover_text(
                "a slider over the image: the source left of the divider, the result right (C)",
            );
            ui.checkbox(&mut self.brush, "Brush").on_hover_text("paint where the edit may change the image; outside it the image stays exactly as it is");
            if self.region.is_some() && ui.button("Clear region").clicked() {
                self.region = None;
                self.region_tex = None;
            }
            if ui
                .selectable_label(self.zoom.is_none(), "Fit")
                .on_hover_text("fit the window")
                .clicked()
            {
                self.zoom = None;
            }
            let one = 1.0 / ui.ctx().pixels_per_point();
            if ui
                .selectable_label(self.zoom == Some(one), "1:1")
                .on_hover_text("one image pixel per screen pixel; Ctrl+wheel zooms, drag pans")
                .clicked()
            {
                self.zoom = Some(one);
            }
            if self.current_decoded().is_some() {
                ui.checkbox(&mut self.show_overlays, "Overlays");
                let l = ui.label("Opacity");
                ui.add(egui::Slider::new(&mut self.overlay_opacity, 0.0..=1.0).show_value(false))
                    .labelled_by(l.id);
                for (name, kind) in [
                    ("COCO...", ExportKind::Coco),
                    ("Labelme...", ExportKind::Labelme),
                    ("Masks...", ExportKind::Masks),
                ] {
                    if ui
                        .button(name)
                        .on_hover_text("export the decoded masks and keypoints")
                        .clicked()
                    {
                        self.pick_export(kind);
                    }
                }
            }
            let mut reuse = None;
            for (i, e) in self.session.history.iter().enumerate() {
                let label = format!(
                    "{}: {}",
                    i + 1,
                    e.plan.prompt.chars().take(24).collect::<String>()
                );
                let selected = self.session.cursor == i + 1;
                let r = ui
                    .selectable_label(selected, label)
                    .on_hover_text(format!(
                        "{} | seed {} | {} steps | guidance {} / {}{} | {:.1} s (right-click to reuse)",
                        e.plan.prompt,
                        e.plan.seed,
                        e.plan.steps,
                        e.plan.text_cfg,
                        e.plan.image_cfg,
                        if e.plan.guidance_rescale > 0.0 {
                            format!(", rescaled {}", e.plan.guidance_rescale)
                        } else {
                            String::new()
                        },
                        e.seconds
                    ));
                if r.clicked() {
                    self.session.cursor = i + 1;
                }
                r.context_menu(|ui| {
                    if ui.button("Reuse seed").clicked() {
                        reuse = Some((e.plan.clone(), false));
                    }
                    if ui
                        .button("Reuse instruction and settings")
                        .on_hover_text("prompt, seed, steps, guidance, sampler")
                        .clicked()
                    {
                        reuse = Some((e.plan.clone(), true));
                    }
                });
            }
            if let Some((plan, everything)) = reuse {
                let prompt = self.settings.reuse(&plan, everything);
                if everything {
                    self.prompt = prompt;
                }
                self.notice = Some(Notice {
                    text: format!("seed {} fixed for the next run", plan.seed),
                    error: false,
                });
            }
        });
        ui.separator();
        ui.horizontal(|ui| {
            let model = match (&self.activity, &self.model) {
                (
                    Activity::Loading {
                        spec,
                        file: Some((f, d, t)),
                    },
                    _,
                ) => format!("loading {spec}: {f} {}/{} MB", d >> 20, t >> 20),
                (Activity::Loading { spec, .. }, _) => format!("loading {spec}..."),
                (_, Some(m)) => format!("model: {m}"),
                (_, None) => "no model".into(),
            };
            let memory = crate::support::memory_bytes()
                .map(|b| format!(" | memory: {:.2} GiB", b as f64 / (1u64 << 30) as f64))
                .unwrap_or_default();
            let training = self
                .training
                .status()
                .map(|t| format!(" | {t}"))
                .unwrap_or_default();
            ui.label(format!(
                "{model} | device: {}{memory}{training}",
                self.settings.device
            ));
            if let Some(n) = &self.notice {
                ui.separator();
                let color = if n.error {
                    Color32::from_rgb(220, 80, 80)
                } else {
                    ui.visuals().text_color()
                };
                ui.colored_label(color, &n.text);
            }
        });
    }

    fn menu(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            if ui.button("Open...").on_hover_text("Ctrl+O").clicked() {
                self.pick_open();
            }
            if ui
                .button("Open folder...")
                .on_hover_text(
                    "a folder of images as an annotation project: drafts, review, one COCO export",
                )
                .clicked()
            {
                let tx = self.dialogs.0.clone();
                std::thread::spawn(move || {
                    if let Some(p) = rfd::FileDialog::new().pick_folder() {
                        let _ = tx.send(DialogResult::Open(p));
                    }
                });
            }
            let has = self.session.current().is_some();
            if ui
                .add_enabled(has, egui::Button::new("Save as..."))
                .on_hover_text("Ctrl+S")
                .clicked()
            {
                self.pick_save();
            }
            ui.menu_button("Samples", |ui| {
                for p in sample_images() {
                    let name = p
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .to_string();
                    if ui.button(name).clicked() {
                        self.open_path(&p);
                        ui.close();
                    }
                }
            });
            if ui
                .selectable_label(self.training.open, "Training")
                .on_hover_text("Fine-tune the model on generated scenes or a dataset folder")
                .clicked()
            {
                self.training.open = !self.training.open;
            }
            let recent = self.settings.recent_files.clone();
            ui.add_enabled_ui(!recent.is_empty(), |ui| {
                ui.menu_button("Recent", |ui| {
                    for p in recent {
                        if ui.button(p.display().to_string()).clicked() {
                            self.open_path(&p);
                            ui.close();
                        }
                    }
                });
            });
        });
    }
}

/// The devices this build can use.
const DEVICES: &[&str] = &[
    "cpu",
    #[cfg(feature = "cuda")]
    "cuda",
    #[cfg(feature = "metal")]
    "metal",
];

/// Sets the pixels of a disc of radius `r` (image pixels) around `(cx, cy)`.
pub fn paint_disc(region: &mut [bool], w: usize, h: usize, cx: f32, cy: f32, r: f32) {
    let (x0, x1) = (
        (cx - r).floor().max(0.0) as usize,
        ((cx + r).ceil().max(0.0) as usize).min(w),
    );
    let (y0, y1) = (
        (cy - r).floor().max(0.0) as usize,
        ((cy + r).ceil().max(0.0) as usize).min(h),
    );
    for y in y0..y1 {
        for x in x0..x1 {
            if (x as f32 + 0.5 - cx).powi(2) + (y as f32 + 0.5 - cy).powi(2) <= r * r {
                region[y * w + x] = true;
            }
        }
    }
}

/// A resolution in pixels where 0 reads "model's" (the model's own resolution).
pub(crate) fn resolution_field<T: egui::emath::Numeric>(
    value: &mut T,
    speed: f64,
) -> egui::DragValue<'_> {
    egui::DragValue::new(value)
        .range(0.0..=1024.0)
        .speed(speed)
        .custom_formatter(|v, _| {
            if v == 0.0 {
                "model's".into()
            } else {
                format!("{v:.0}")
            }
        })
}

/// A grid row: a label and the widget it names (for screen readers and tests).
pub(crate) fn labelled_row(ui: &mut egui::Ui, label: &str, widget: impl egui::Widget) {
    let l = ui.label(label);
    ui.add(widget).labelled_by(l.id);
    ui.end_row();
}

/// The sample images shipped in `assets/samples` (photos) and `assets/scenes` (generated scenes
/// of the built-in model's world), beside the executable or in the source tree.
pub fn sample_images() -> Vec<PathBuf> {
    ["assets/samples", "assets/scenes"]
        .iter()
        .flat_map(|sub| {
            let mut dirs = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(sub)];
            if let Ok(exe) = std::env::current_exe() {
                dirs.extend(exe.ancestors().skip(1).map(|d| d.join(sub)));
            }
            dirs.into_iter()
                .find(|d| d.is_dir())
                .and_then(|d| crate::imageio::list_images(&d).ok())
                .unwrap_or_default()
        })
        .collect()
}

impl eframe::App for EditorApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.handle_events(&ctx);
        self.shortcuts(&ctx);
        self.project_keys(&ctx);
        egui::Panel::top("menu").show(ui, |ui| self.menu(ui));
        if self.workbench.is_some() {
            egui::Panel::right("project")
                .resizable(true)
                .default_size(240.0)
                .show(ui, |ui| self.project_panel(ui));
        }
        egui::Panel::left("settings")
            .resizable(true)
            .default_size(260.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| self.settings_panel(ui));
            });
        egui::Panel::bottom("controls").show(ui, |ui| self.bottom(ui));
        egui::CentralPanel::default().show(ui, |ui| self.canvas(ui));
        let base = self.settings.model.clone();
        let free = !self.is_busy();
        if let Some(action) = self.training.window(&ctx, &base, free) {
            self.training_action(action);
        }
        self.close_guard(&ctx);
        if self.is_busy() {
            ctx.request_repaint_after(Duration::from_millis(100));
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, SETTINGS_KEY, &self.settings);
    }

    fn on_exit(&mut self) {
        // The project's last change is on its writer thread: finish it before the process ends.
        if let Some(Err(e)) = self.workbench.as_ref().map(|wb| wb.project.flush()) {
            eprintln!("{e:#}");
        }
    }
}
