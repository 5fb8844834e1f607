//! The desktop editor (eframe/egui). The UI thread only draws and sends commands to the
//! [`crate::worker`]; state and its logic live in [`state`]. This file holds the editor's state
//! and its wiring (starting jobs, opening images); each part a person sees has its own file:
//! `canvas` (image, zoom, compare, brush), `overlays` (decoded answers, variants),
//! `settings_panel` (model, sampling, task picker), `bottom` (instruction, progress,
//! history, status), `menu` (menus and shortcuts), `files` (dialogs, save, export),
//! `events` (what the worker reports), [`training`] (the Training window) and [`workbench`]
//! (annotation projects).

pub mod bench;
mod bottom;
mod canvas;
mod events;
mod files;
mod menu;
mod overlays;
pub mod picker;
mod settings_panel;
pub mod state;
pub mod training;
pub mod workbench;

pub use canvas::paint_disc;
pub(crate) use settings_panel::{labelled_row, resolution_field};

use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Sender};
use eframe::egui;
use eframe::egui::TextureHandle;
use image::RgbImage;

use self::state::{Activity, Entry, ExportKind, Session, SessionFile, Settings};
use self::training::{PanelAction, TrainState, TrainingPanel};
use crate::imageio;
use crate::sample::pipeline::EditRequest;
use crate::settings::SamplingDefaults;
use crate::worker::{Command, Worker};

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
            precision: self.settings.precision.clone(),
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
