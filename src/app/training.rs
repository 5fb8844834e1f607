//! The training panel: fine-tune the current model on generated scenes or a dataset folder,
//! with a live loss plot, speed, ETA and the latest sample edits. This module holds the
//! panel's state and draws it; the worker runs the job ([`crate::worker::Command::Train`]).

use std::path::{Path, PathBuf};

use eframe::egui;

use super::labelled_row as field;
use crate::train::edit::ProbeResult;
use crate::train::TrainEvent;
use crate::worker::TrainJob;

/// Where a run is.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainState {
    Idle,
    Running {
        step: usize,
        total: usize,
        steps_per_s: f64,
        eta_s: f64,
        /// Chunks of the sample pool ready, while it is built.
        pool: Option<(usize, usize)>,
        stopping: bool,
    },
    Finished {
        model: PathBuf,
        stopped: bool,
    },
    Failed(String),
}

/// What the panel asks the app to do.
#[derive(Debug, Clone, PartialEq)]
pub enum PanelAction {
    Start(TrainJob),
    Stop,
    /// Load this trained model folder in the editor.
    Load(PathBuf),
    /// Choose a dataset folder (a dialog off the UI thread).
    PickData,
}

/// The panel's state.
pub struct TrainingPanel {
    pub open: bool,
    /// A dataset folder; `None`: the procedural generator.
    pub data: Option<PathBuf>,
    /// The run folder, as typed.
    pub out: String,
    pub steps: usize,
    pub lr: f64,
    pub batch: usize,
    /// Generated samples (when training on the generator).
    pub pool: usize,
    /// Side of the training images in pixels; 0: the model's own resolution.
    pub size: u32,
    /// LoRA rank; 0: a full fine-tune.
    pub lora_rank: usize,
    pub state: TrainState,
    /// `[step, loss]` of every step of the current run.
    pub losses: Vec<[f64; 2]>,
    /// The first dataset problem of the run, if any.
    pub warning: Option<String>,
    /// The newest sample sheet (source | target | result rows).
    pub sheet: Option<PathBuf>,
    /// The newest instruction probe and its step.
    pub instructions: Option<(usize, ProbeResult)>,
    sheet_tex: Option<(PathBuf, egui::TextureHandle)>,
    /// `(run folder, running, when checked, holds a checkpoint)`: the disk is asked again when
    /// the folder or the run state changes, or after a second, not on every frame.
    resume_probe: Option<(String, bool, std::time::Instant, bool)>,
}

impl TrainingPanel {
    /// Whether Start would resume a run (the run folder holds a checkpoint).
    fn holds_checkpoint(&mut self, running: bool) -> bool {
        let out = self.out.trim();
        match &self.resume_probe {
            Some((dir, was_running, at, holds))
                if dir == out
                    && *was_running == running
                    && at.elapsed() < std::time::Duration::from_secs(1) =>
            {
                *holds
            }
            _ => {
                let holds = Path::new(out).join("checkpoint/state.json").is_file();
                self.resume_probe =
                    Some((out.to_string(), running, std::time::Instant::now(), holds));
                holds
            }
        }
    }

    /// A closed panel whose runs go under `runs_dir`.
    pub fn new(runs_dir: &Path) -> Self {
        Self {
            open: false,
            data: None,
            out: runs_dir.join("finetune").display().to_string(),
            steps: 200,
            lr: 5e-5,
            batch: 4,
            pool: 512,
            size: 0,
            lora_rank: 0,
            state: TrainState::Idle,
            losses: vec![],
            warning: None,
            sheet: None,
            instructions: None,
            sheet_tex: None,
            resume_probe: None,
        }
    }

    pub fn running(&self) -> bool {
        matches!(self.state, TrainState::Running { .. })
    }

    /// The job the fields describe, fine-tuning `base`.
    pub fn job(&self, base: &str) -> TrainJob {
        TrainJob {
            base: base.to_string(),
            data: self.data.clone(),
            out: PathBuf::from(self.out.trim()),
            steps: self.steps,
            lr: self.lr,
            batch: self.batch,
            pool: self.pool,
            size: (self.size > 0).then_some(self.size),
            lora_rank: self.lora_rank,
        }
    }

    /// The run has been sent to the worker.
    pub fn started(&mut self, total: usize) {
        self.state = TrainState::Running {
            step: 0,
            total,
            steps_per_s: 0.0,
            eta_s: 0.0,
            pool: None,
            stopping: false,
        };
        self.losses.clear();
        self.warning = None;
        self.instructions = None;
    }

    pub fn stopping(&mut self) {
        if let TrainState::Running { stopping, .. } = &mut self.state {
            *stopping = true;
        }
    }

    /// Applies a trainer event.
    pub fn apply(&mut self, e: &TrainEvent) {
        match e {
            TrainEvent::Step {
                step,
                total,
                loss,
                steps_per_s,
                eta_s,
                ..
            } => {
                self.losses.push([*step as f64, *loss]);
                if let TrainState::Running {
                    step: s,
                    total: t,
                    steps_per_s: r,
                    eta_s: eta,
                    pool,
                    ..
                } = &mut self.state
                {
                    (*s, *t, *r, *eta, *pool) = (*step, *total, *steps_per_s, *eta_s, None);
                }
            }
            TrainEvent::Pool { done, total } => {
                if let TrainState::Running { pool, .. } = &mut self.state {
                    *pool = Some((*done, *total));
                }
            }
            TrainEvent::Samples { path, .. } => self.sheet = Some(path.clone()),
            TrainEvent::Instructions { step, probe } => self.instructions = Some((*step, *probe)),
            TrainEvent::Skipped { count, first } => {
                self.warning = Some(format!(
                    "{count} dataset line(s) left out; the first: {first}"
                ))
            }
            TrainEvent::Checkpoint { .. }
            | TrainEvent::Stopped { .. }
            | TrainEvent::Phases { .. } => {}
        }
    }

    /// One line for the status bar while a run is going.
    pub fn status(&self) -> Option<String> {
        match &self.state {
            TrainState::Running {
                pool: Some((d, t)), ..
            } => Some(format!("training: preparing samples {d}/{t}")),
            TrainState::Running {
                step,
                total,
                eta_s,
                stopping,
                ..
            } => Some(if *stopping {
                format!("training: stopping after step {step}")
            } else {
                format!("training: step {step}/{total}, {:.0} s left", eta_s)
            }),
            _ => None,
        }
    }

    /// Draws the panel's window; `base` is the model it would fine-tune, `can_start` whether
    /// the worker is free.
    pub fn window(
        &mut self,
        ctx: &egui::Context,
        base: &str,
        can_start: bool,
    ) -> Option<PanelAction> {
        let mut open = self.open;
        let mut action = None;
        egui::Window::new("Training")
            .open(&mut open)
            .default_width(420.0)
            .show(ctx, |ui| action = self.contents(ui, base, can_start));
        self.open = open;
        action
    }

    fn contents(&mut self, ui: &mut egui::Ui, base: &str, can_start: bool) -> Option<PanelAction> {
        let mut action = None;
        let running = self.running();
        let resumes = self.holds_checkpoint(running);
        ui.label(format!(
            "Fine-tunes the model '{base}' (UNet and text encoder, full weights) on the CPU."
        ));
        ui.add_enabled_ui(!running, |ui| {
            egui::Grid::new("training-fields")
                .num_columns(2)
                .show(ui, |ui| {
                    ui.label("Data");
                    ui.horizontal(|ui| {
                        let generator = self.data.is_none();
                        if ui.selectable_label(generator, "generated scenes").clicked() {
                            self.data = None;
                        }
                        let folder = match &self.data {
                            Some(p) => p.display().to_string(),
                            None => "dataset folder...".into(),
                        };
                        if ui.selectable_label(!generator, folder).clicked() {
                            action = Some(PanelAction::PickData);
                        }
                    });
                    ui.end_row();
                    ui.label("Method");
                ui.horizontal(|ui| {
                    if ui
                        .selectable_label(self.lora_rank == 0, "full")
                        .on_hover_text("UNet and text encoder, every weight (small models)")
                        .clicked()
                    {
                        self.lora_rank = 0;
                    }
                    if ui
                        .selectable_label(self.lora_rank > 0, "LoRA")
                        .on_hover_text("Low-rank adapters on the UNet's attention, the rest frozen (large models)")
                        .clicked()
                        && self.lora_rank == 0
                    {
                        self.lora_rank = 4;
                    }
                    if self.lora_rank > 0 {
                        let l = ui.label("rank");
                        ui.add(egui::DragValue::new(&mut self.lora_rank).range(1..=128))
                            .labelled_by(l.id);
                    }
                });
                ui.end_row();
                let l = ui.label("Run folder");
                    ui.add(egui::TextEdit::singleline(&mut self.out).desired_width(260.0))
                        .labelled_by(l.id);
                    ui.end_row();
                    field(
                        ui,
                        "Steps",
                        egui::DragValue::new(&mut self.steps).range(1..=1_000_000),
                    );
                    field(
                        ui,
                        "Learning rate",
                        egui::DragValue::new(&mut self.lr)
                            .range(1e-7..=1e-2)
                            .speed(1e-6)
                            .custom_formatter(|v, _| format!("{v:.1e}")),
                    );
                    field(
                        ui,
                        "Batch",
                        egui::DragValue::new(&mut self.batch).range(1..=64),
                    );
                    field(
                        ui,
                        "Resolution",
                        super::resolution_field(&mut self.size, 8.0),
                    );
                    if self.data.is_none() {
                        field(
                            ui,
                            "Samples",
                            egui::DragValue::new(&mut self.pool).range(16..=1_000_000),
                        );
                    }
                });
        });
        ui.horizontal(|ui| {
            if running {
                let stopping = matches!(self.state, TrainState::Running { stopping: true, .. });
                if ui
                    .add_enabled(!stopping, egui::Button::new("Stop"))
                    .on_hover_text("Stops after the current step with a checkpoint; Start on the same run folder resumes")
                    .clicked()
                {
                    action = Some(PanelAction::Stop);
                }
            } else {
                let label = if resumes { "Resume" } else { "Start" };
                let ok = can_start && !self.out.trim().is_empty();
                if ui.add_enabled(ok, egui::Button::new(label)).clicked() {
                    action = Some(PanelAction::Start(self.job(base)));
                }
            }
            if let TrainState::Finished { model, .. } = &self.state {
                if ui.button("Load trained model").clicked() {
                    action = Some(PanelAction::Load(model.clone()));
                }
            }
        });
        match &self.state {
            TrainState::Idle => {}
            TrainState::Running {
                pool: Some((d, t)), ..
            } => {
                ui.add(
                    egui::ProgressBar::new(*d as f32 / (*t).max(1) as f32)
                        .text(format!("encoding samples: {d}/{t} chunks")),
                );
            }
            TrainState::Running {
                step,
                total,
                steps_per_s,
                eta_s,
                ..
            } => {
                ui.add(
                    egui::ProgressBar::new(*step as f32 / (*total).max(1) as f32).text(format!(
                        "step {step}/{total}  {steps_per_s:.2} steps/s  {:.0} s left",
                        eta_s
                    )),
                );
            }
            TrainState::Finished { model, stopped } => {
                ui.label(format!(
                    "{} the model is in '{}'",
                    if *stopped {
                        "Stopped (Resume continues);"
                    } else {
                        "Done:"
                    },
                    model.display()
                ));
            }
            TrainState::Failed(msg) => {
                ui.colored_label(ui.visuals().error_fg_color, msg);
            }
        }
        if let Some(w) = &self.warning {
            ui.colored_label(ui.visuals().warn_fg_color, w);
        }
        if let Some([_, last]) = self.losses.last() {
            ui.label(format!("loss {last:.4}"));
        }
        if let Some((step, p)) = self.instructions {
            ui.label(format!(
                "instruction probe (step {step}): a wrong instruction makes the edit's error {:.2}x (1.00: instructions ignored)",
                p.mismatched / p.matched.max(1e-12)
            ))
            .on_hover_text("Over the pixels the held-out edits change, at noise levels spread over the schedule.");
            ui.label(format!(
                "from pure noise: error {:.2} of no edit's (0: the edit decided by the instruction alone; 1: not at all)",
                p.from_noise
            ))
            .on_hover_text("A model that grounds the words predicts the edit before the noisy image shows it; sampling decides where the edit goes in its first, noisiest steps.");
            ui.label(format!(
                "spill from pure noise: {:.2} of the edit's own change painted where the target keeps the source (0: none)",
                p.spill
            ))
            .on_hover_text("A model unsure which object the words name paints the edit on several: the error above can fall while this grows.");
        }
        egui_plot::Plot::new("loss-plot")
            .height(140.0)
            .allow_scroll(false)
            .x_axis_label("step")
            .y_axis_label("loss")
            .show(ui, |p| {
                p.line(egui_plot::Line::new(
                    "loss",
                    egui_plot::PlotPoints::from(self.losses.clone()),
                ))
            });
        self.sheet_ui(ui);
        action
    }

    /// The newest sample sheet, loaded once per file.
    fn sheet_ui(&mut self, ui: &mut egui::Ui) {
        let Some(path) = self.sheet.clone() else {
            return;
        };
        if self.sheet_tex.as_ref().is_none_or(|(p, _)| *p != path) {
            match image::open(&path) {
                Ok(img) => {
                    let img = img.to_rgba8();
                    let size = [img.width() as usize, img.height() as usize];
                    let color = egui::ColorImage::from_rgba_unmultiplied(size, img.as_raw());
                    let tex = ui.ctx().load_texture(
                        "training-samples",
                        color,
                        egui::TextureOptions::NEAREST,
                    );
                    self.sheet_tex = Some((path.clone(), tex));
                }
                Err(_) => return,
            }
        }
        if let Some((_, tex)) = &self.sheet_tex {
            ui.label("Sample edits (source | target | result):");
            let size = tex.size_vec2();
            let scale = (400.0 / size.x).min(1.5);
            ui.image((tex.id(), size * scale));
        }
    }
}
