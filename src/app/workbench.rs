//! The annotator's workbench, first part: a folder opened as a project ([`crate::project`]):
//! its images listed with their status, a filter by status, previous / next from the keyboard,
//! each image shown with its draft as overlays, accept or reject (saved at once), and one COCO
//! export. Drafting from the editor, thumbnails and corrections are to come (issue #28);
//! `annotate` drafts a folder into the same project state today.

use std::path::{Path, PathBuf};

use crate::decode::Decoded;
use crate::project::{Project, Status};

/// Which images the list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filter {
    #[default]
    All,
    Only(Status),
}

impl Filter {
    pub fn passes(self, s: Status) -> bool {
        match self {
            Filter::All => true,
            Filter::Only(want) => s == want,
        }
    }
}

/// The open project and where the review is.
pub struct Workbench {
    pub project: Project,
    pub current: usize,
    pub filter: Filter,
    /// The current image's draft, expanded (masks at the image's size).
    pub draft: Option<Box<Decoded>>,
}

/// A status as a person reads it.
pub fn status_name(s: Status) -> &'static str {
    match s {
        Status::NotRun => "not run",
        Status::Drafted => "drafted",
        Status::Reviewed => "reviewed",
        Status::Rejected => "rejected",
    }
}

/// The keys the workbench answers to, as listed in its panel.
pub const KEYS: &str = "Up/Down: previous/next, Enter: accept, Delete: reject";

impl Workbench {
    /// Opens `dir` as a project; the notices say what was found wrong with its state.
    pub fn open(dir: &Path) -> anyhow::Result<(Self, Vec<String>)> {
        let (project, notices) = Project::open(dir)?;
        if project.state.items.is_empty() {
            anyhow::bail!("no images in the folder '{}'", dir.display());
        }
        let notices = notices
            .into_iter()
            .map(|n| match n {
                crate::project::Notice::UnreadableState { moved_to, reason } => format!(
                    "the project state could not be read ({reason}); it was kept as '{}' and the folder starts fresh",
                    moved_to.display()
                ),
                crate::project::Notice::Missing(files) => format!(
                    "{} image(s) of the project are gone from the folder (their work is kept): {}",
                    files.len(),
                    files.join(", ")
                ),
            })
            .collect();
        let mut wb = Self {
            project,
            current: 0,
            filter: Filter::All,
            draft: None,
        };
        wb.load_draft();
        Ok((wb, notices))
    }

    /// The current image's path.
    pub fn current_path(&self) -> PathBuf {
        self.project
            .dir
            .join(&self.project.state.items[self.current].file)
    }

    fn load_draft(&mut self) {
        self.draft = self.project.state.items[self.current]
            .answer
            .as_ref()
            .and_then(|a| a.to_decoded().ok())
            .map(Box::new);
    }

    /// Makes image `i` current.
    pub fn select(&mut self, i: usize) {
        if i < self.project.state.items.len() {
            self.current = i;
            self.load_draft();
        }
    }

    /// Moves to the next (or previous) image the filter shows; false when there is none.
    pub fn step(&mut self, forward: bool) -> bool {
        let n = self.project.state.items.len();
        let filter = self.filter;
        let found = (1..n)
            .map(|k| {
                if forward {
                    (self.current + k) % n
                } else {
                    (self.current + n - k) % n
                }
            })
            .find(|&i| filter.passes(self.project.state.items[i].status));
        if let Some(i) = found {
            self.select(i);
        }
        found.is_some()
    }

    /// Accepts (reviewed) or rejects the current image, saved at once, then moves to the next
    /// image still to review (drafted), if any.
    pub fn review(&mut self, status: Status) -> anyhow::Result<()> {
        let file = self.project.state.items[self.current].file.clone();
        self.project.set_status(&file, status)?;
        if let Some(i) = self.project.next(self.current, |s| s == Status::Drafted) {
            self.select(i);
        }
        Ok(())
    }

    /// Writes one COCO file of the reviewed images (or of every drafted and reviewed one),
    /// atomically.
    pub fn export(&self, path: &Path, reviewed_only: bool) -> anyhow::Result<usize> {
        let coco = self.project.coco(reviewed_only)?;
        crate::imageio::write_atomic(path, serde_json::to_string_pretty(&coco)?.as_bytes())?;
        Ok(coco.images.len())
    }

    /// One line of counts: "5 images: 2 not run, 1 drafted, 1 reviewed, 1 rejected".
    pub fn summary(&self) -> String {
        let c = self.project.counts();
        format!(
            "{} images: {} not run, {} drafted, {} reviewed, {} rejected",
            self.project.state.items.len(),
            c[0],
            c[1],
            c[2],
            c[3]
        )
    }
}

use eframe::egui;

impl super::EditorApp {
    /// Opens `dir` as a project and shows its first image with its draft.
    pub fn open_folder(&mut self, dir: &Path) {
        match Workbench::open(dir) {
            Ok((wb, notices)) => {
                let summary = wb.summary();
                self.workbench = Some(wb);
                self.show_project_image();
                let text =
                    std::iter::once(format!("opened the folder {}: {summary}", dir.display()))
                        .chain(notices)
                        .collect::<Vec<_>>()
                        .join("; ");
                let error = text.contains("could not be read");
                self.notice = Some(super::Notice { text, error });
            }
            Err(e) => self.error(format!("{e:#}")),
        }
    }

    /// Opens the project's current image (the source; its draft shows as overlays).
    fn show_project_image(&mut self) {
        let Some(wb) = &self.workbench else { return };
        let path = wb.current_path();
        match crate::imageio::load_rgb(&path, crate::imageio::DEFAULT_MAX_PIXELS) {
            Ok(img) => self.open_image(Some(path), img),
            Err(e) => self.error(e.to_string()),
        }
    }

    /// The current project image's draft, while the source is shown.
    pub(super) fn project_draft(&self) -> Option<&Decoded> {
        if self.session.cursor != 0 {
            return None;
        }
        self.workbench.as_ref()?.draft.as_deref()
    }

    fn project_do(&mut self, f: impl FnOnce(&mut Workbench) -> anyhow::Result<bool>) {
        let Some(wb) = &mut self.workbench else {
            return;
        };
        let before = wb.current;
        match f(wb) {
            Ok(_) => {
                if self.workbench.as_ref().map(|w| w.current) != Some(before) {
                    self.show_project_image();
                }
                self.overlay = None;
            }
            Err(e) => self.error(format!("{e:#}")),
        }
    }

    /// The keys of [`KEYS`], when no text field has the keyboard.
    pub(super) fn project_keys(&mut self, ctx: &egui::Context) {
        if self.workbench.is_none() || ctx.egui_wants_keyboard_input() {
            return;
        }
        use egui::{Key, Modifiers};
        let (down, up, accept, reject) = ctx.input_mut(|i| {
            (
                i.consume_key(Modifiers::NONE, Key::ArrowDown),
                i.consume_key(Modifiers::NONE, Key::ArrowUp),
                i.consume_key(Modifiers::NONE, Key::Enter),
                i.consume_key(Modifiers::NONE, Key::Delete),
            )
        });
        if down || up {
            self.project_do(|wb| Ok(wb.step(down)));
        }
        if accept {
            self.project_do(|wb| wb.review(Status::Reviewed).map(|_| true));
        }
        if reject {
            self.project_do(|wb| wb.review(Status::Rejected).map(|_| true));
        }
    }

    /// Writes the project's COCO file (see [`Workbench::export`]).
    pub fn export_project(&mut self, path: &Path, reviewed_only: bool) {
        let Some(wb) = &self.workbench else { return };
        match wb.export(path, reviewed_only) {
            Ok(n) => {
                self.notice = Some(super::Notice {
                    text: format!("exported {n} image(s) to {}", path.display()),
                    error: false,
                })
            }
            Err(e) => self.error(format!("{e:#}")),
        }
    }

    /// The project panel: counts, filter, the list, review buttons and the export.
    pub(super) fn project_panel(&mut self, ui: &mut egui::Ui) {
        let Some(wb) = &mut self.workbench else {
            return;
        };
        ui.heading("Project");
        ui.label(wb.project.dir.display().to_string());
        ui.small(wb.summary());
        let mut filter = wb.filter;
        egui::ComboBox::from_label("Show")
            .selected_text(match filter {
                Filter::All => "all",
                Filter::Only(s) => status_name(s),
            })
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut filter, Filter::All, "all");
                for s in [
                    Status::NotRun,
                    Status::Drafted,
                    Status::Reviewed,
                    Status::Rejected,
                ] {
                    ui.selectable_value(&mut filter, Filter::Only(s), status_name(s));
                }
            });
        wb.filter = filter;
        let mut picked = None;
        egui::ScrollArea::vertical()
            .max_height(ui.available_height() - 120.0)
            .show(ui, |ui| {
                for (i, item) in wb.project.state.items.iter().enumerate() {
                    if !filter.passes(item.status) {
                        continue;
                    }
                    let text = format!("{:<9} {}", status_name(item.status), item.file);
                    if ui.selectable_label(i == wb.current, text).clicked() {
                        picked = Some(i);
                    }
                }
            });
        ui.separator();
        let (mut draft_all, mut draft_this) = (false, false);
        ui.horizontal(|ui| {
            draft_all = ui
                .button("Draft all")
                .on_hover_text("the instruction typed below, on every image not drafted yet")
                .clicked();
            draft_this = ui
                .button("Draft this")
                .on_hover_text("the instruction typed below, on this image (again)")
                .clicked();
        });
        let this = wb.project.state.items[wb.current].file.clone();
        let has_draft = wb.draft.is_some();
        let (mut accept, mut reject, mut export) = (false, false, None);
        ui.horizontal(|ui| {
            accept = ui
                .add_enabled(has_draft, egui::Button::new("Accept"))
                .on_hover_text("Enter")
                .clicked();
            reject = ui.button("Reject").on_hover_text("Delete").clicked();
        });
        ui.horizontal(|ui| {
            if ui
                .button("Export COCO...")
                .on_hover_text("reviewed images only")
                .clicked()
            {
                export = Some(true);
            }
            if ui
                .button("with drafts...")
                .on_hover_text("reviewed and drafted images")
                .clicked()
            {
                export = Some(false);
            }
        });
        ui.small(KEYS);
        if draft_all {
            let files = self.undrafted();
            self.draft_project(files);
        }
        if draft_this {
            self.draft_project(vec![this]);
        }
        if let Some(i) = picked {
            self.project_do(|wb| {
                wb.select(i);
                Ok(true)
            });
        }
        if accept {
            self.project_do(|wb| wb.review(Status::Reviewed).map(|_| true));
        }
        if reject {
            self.project_do(|wb| wb.review(Status::Rejected).map(|_| true));
        }
        if let Some(reviewed_only) = export {
            let tx = self.dialogs.0.clone();
            std::thread::spawn(move || {
                if let Some(p) = rfd::FileDialog::new()
                    .add_filter("COCO json", &["json"])
                    .set_file_name("coco.json")
                    .save_file()
                {
                    let _ = tx.send(super::DialogResult::ProjectExport(p, reviewed_only));
                }
            });
        }
    }
}

impl super::EditorApp {
    /// Drafts `files` (names in the project) with the instruction typed, in the worker.
    pub fn draft_project(&mut self, files: Vec<String>) {
        let prompt = self.prompt.trim().to_string();
        if prompt.is_empty() {
            return self
                .error("type the instruction to draft with (e.g. from the task picker)".into());
        }
        if self.model.is_none() || self.is_busy() {
            return self
                .error("the model is not ready: wait for it to load or for the job to end".into());
        }
        let Some(wb) = &mut self.workbench else {
            return;
        };
        let state = &wb.project.state;
        let drafted = state.items.iter().any(|i| i.answer.is_some());
        if drafted
            && (state.instruction.as_deref() != Some(prompt.as_str()) || state.model != self.model)
        {
            let msg = format!(
                "this project's drafts come from \"{}\" ({}): draft with those, or open a copy of the folder to draft with another instruction",
                state.instruction.as_deref().unwrap_or("?"),
                state.model.as_deref().unwrap_or("?")
            );
            return self.error(msg);
        }
        if files.is_empty() {
            return self.error(
                "nothing to draft: every image has a draft (choose one to redraft it)".into(),
            );
        }
        wb.project.state.instruction = Some(prompt.clone());
        wb.project.state.model = self.model.clone();
        if let Err(e) = wb.project.save() {
            return self.error(format!("{e:#}"));
        }
        let paths: Vec<PathBuf> = files.iter().map(|f| wb.project.dir.join(f)).collect();
        let job = self.next_job;
        self.next_job += 1;
        let request = self.settings.next_request(&prompt, rand::random());
        let n = paths.len();
        self.worker.send(crate::worker::Command::Draft {
            job,
            files: paths,
            request,
        });
        self.activity = super::Activity::Editing {
            job,
            step: 0,
            total: self.settings.steps,
            elapsed_s: 0.0,
            previews: 0,
            cancelling: false,
            tile: None,
            images: Some((0, n, 0.0)),
        };
    }

    /// A drafted image: recorded in the project (saved at once), shown if it is the current one.
    pub(super) fn on_drafted(
        &mut self,
        file: &Path,
        result: Result<Box<Decoded>, String>,
        done: usize,
        total: usize,
        elapsed_s: f64,
    ) {
        if let super::Activity::Editing { images, .. } = &mut self.activity {
            *images = Some((done, total, elapsed_s));
        }
        let Some(wb) = &mut self.workbench else {
            return;
        };
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let saved = match &result {
            Ok(d) => wb.project.set_draft(&name, d),
            Err(reason) => wb.project.set_failed(&name, reason),
        };
        if let Err(e) = saved {
            return self.error(format!("{e:#}"));
        }
        if wb
            .project
            .state
            .items
            .get(wb.current)
            .is_some_and(|i| i.file == name)
        {
            let current = wb.current;
            wb.select(current);
            self.overlay = None;
        }
    }

    pub(super) fn on_drafts_done(&mut self) {
        self.activity = super::Activity::Idle;
        if let Some(wb) = &self.workbench {
            let text = format!("drafting done: {}", wb.summary());
            self.notice = Some(super::Notice { text, error: false });
        }
    }

    /// Images still to draft: not run and not failed.
    pub fn undrafted(&self) -> Vec<String> {
        self.workbench.as_ref().map_or(vec![], |wb| {
            wb.project
                .state
                .items
                .iter()
                .filter(|i| i.status == Status::NotRun && i.error.is_none())
                .map(|i| i.file.clone())
                .collect()
        })
    }
}
