//! The annotator's workbench, first part: a folder opened as a project ([`crate::project`]):
//! its images listed with their status, a filter by status, previous / next from the keyboard,
//! each image shown with its draft as overlays, accept or reject (saved at once), and one COCO
//! export. Drafting from the editor, thumbnails and corrections are to come (issue #28);
//! `annotate` drafts a folder into the same project state today.

use std::path::{Path, PathBuf};

use eframe::egui;

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
    /// What a drag on the image does.
    pub tool: Tool,
    /// The mask instance the brush paints into.
    pub selected: usize,
    /// Brush radius in image pixels.
    pub radius: f32,
    /// The keypoint being dragged.
    pub dragging: Option<usize>,
    /// The name a click on the image gives a new keypoint (empty: clicks add none).
    pub new_point: String,
    /// Where the current press on the image began (image pixels).
    pressed_at: Option<egui::Vec2>,
    undo: Vec<Option<crate::project::Answer>>,
    redo: Vec<Option<crate::project::Answer>>,
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
pub const KEYS: &str = "Up/Down: previous/next, Enter: accept, Delete: reject, Ctrl+Z / Ctrl+Shift+Z: undo / redo a correction";

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
            tool: Tool::Points,
            selected: 0,
            radius: 6.0,
            dragging: None,
            new_point: String::new(),
            pressed_at: None,
            undo: vec![],
            redo: vec![],
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
            if i != self.current {
                self.undo.clear();
                self.redo.clear();
                self.selected = 0;
            }
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

    /// Writes the reviewed images as a training set in `dir` and sets it as the Training
    /// window's data (see [`Project::training_set`]).
    pub fn project_training_set(&mut self, dir: &Path) {
        let Some(wb) = &self.workbench else { return };
        match wb.project.training_set(dir) {
            Ok(n) => {
                self.training.data = Some(dir.to_path_buf());
                self.training.open = true;
                // Corrections teach through adapters: the base model stays as it is.
                if self.training.lora_rank == 0 {
                    self.training.lora_rank = 4;
                }
                self.notice = Some(super::Notice {
                    text: format!(
                        "wrote {n} corrected sample(s) to {}: the Training window fine-tunes on them (LoRA by default)",
                        dir.display()
                    ),
                    error: false,
                });
            }
            Err(e) => self.error(format!("{e:#}")),
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
        // Only the rows in view are laid out: a folder of thousands stays as fast as ten.
        let shown: Vec<usize> = (0..wb.project.state.items.len())
            .filter(|&i| filter.passes(wb.project.state.items[i].status))
            .collect();
        let row = ui.text_style_height(&egui::TextStyle::Button) + ui.spacing().item_spacing.y;
        egui::ScrollArea::vertical()
            .max_height((ui.available_height() * 0.45).max(120.0))
            .show_rows(ui, row, shown.len(), |ui, range| {
                for &i in &shown[range] {
                    let item = &wb.project.state.items[i];
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
        let mut to_train = false;
        if ui
            .button("Training set...")
            .on_hover_text("the reviewed images with their corrected answers as a dataset folder, for the Training window")
            .clicked()
        {
            to_train = true;
        }
        ui.small(KEYS);
        ui.separator();
        self.correction_panel(ui);
        if to_train {
            let tx = self.dialogs.0.clone();
            std::thread::spawn(move || {
                if let Some(p) = rfd::FileDialog::new().pick_folder() {
                    let _ = tx.send(super::DialogResult::ProjectTrainingSet(p));
                }
            });
        }
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

/// What a drag on the image does while a project is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tool {
    /// Drags move keypoints only.
    #[default]
    Points,
    /// Paint into the selected mask.
    Add,
    /// Erase from the selected mask.
    Erase,
}

/// Corrections of the current draft: every change is undoable and saved to the project when
/// the stroke or drag ends.
impl Workbench {
    fn answer_now(&self) -> Option<crate::project::Answer> {
        self.project.state.items[self.current].answer.clone()
    }

    /// Starts a correction: the answer as it is goes on the undo stack.
    pub fn begin(&mut self) {
        self.undo.push(self.answer_now());
        self.redo.clear();
    }

    /// Ends a correction: boxes and areas recomputed from the masks, the answer saved.
    pub fn commit(&mut self) -> anyhow::Result<()> {
        let Some(d) = &mut self.draft else {
            return Ok(());
        };
        for inst in &mut d.instances {
            let rle = crate::export::rle::Rle::encode(&inst.mask, d.width, d.height);
            inst.area = rle.area();
            inst.bbox = rle.bbox();
        }
        d.instances.retain(|i| i.area > 0);
        let file = self.project.state.items[self.current].file.clone();
        let d = (**d).clone();
        self.project.set_corrected(&file, &d)?;
        self.selected = self.selected.min(d.instances.len().saturating_sub(1));
        Ok(())
    }

    /// Paints (or erases) a disc of radius `r` at image point `(x, y)` into the selected mask.
    pub fn paint(&mut self, x: f32, y: f32, r: f32, add: bool) {
        let Some(d) = &mut self.draft else { return };
        let (w, h) = (d.width, d.height);
        let Some(inst) = d.instances.get_mut(self.selected) else {
            return;
        };
        let (x0, x1) = (
            (x - r).floor().max(0.0) as usize,
            ((x + r).ceil() as usize).min(w),
        );
        let (y0, y1) = (
            (y - r).floor().max(0.0) as usize,
            ((y + r).ceil() as usize).min(h),
        );
        for py in y0..y1 {
            for px in x0..x1 {
                let (dx, dy) = (px as f32 + 0.5 - x, py as f32 + 0.5 - y);
                if dx * dx + dy * dy <= r * r {
                    inst.mask[py * w + px] = add;
                }
            }
        }
    }

    /// The keypoint under image point `(x, y)`, within `reach` pixels (or its disc).
    pub fn point_at(&self, x: f32, y: f32, reach: f32) -> Option<usize> {
        let d = self.draft.as_ref()?;
        d.keypoints
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    i,
                    ((p.x - x as f64).powi(2) + (p.y - y as f64).powi(2)).sqrt(),
                )
            })
            .filter(|(i, dist)| *dist <= d.keypoints[*i].radius.max(reach as f64))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    }

    /// Adds a keypoint named `name` at image point `(x, y)` (a missing one), in the colour and
    /// size of the draft's other points (red and the expected size if it has none).
    pub fn add_point(&mut self, name: &str, x: f32, y: f32) {
        let Some(d) = &mut self.draft else { return };
        let like = d.keypoints.first().cloned();
        let radius = like.as_ref().map_or_else(
            || crate::decode::keypoint::expected_radius(d.width, d.height),
            |p| p.radius,
        );
        d.keypoints.push(crate::decode::Point {
            category: like
                .as_ref()
                .map_or("person".into(), |p| p.category.clone()),
            name: name.to_string(),
            color: [255, 0, 0],
            x: x as f64,
            y: y as f64,
            radius,
            score: 1.0,
            instance: like.map_or(0, |p| p.instance),
        });
    }

    /// Moves keypoint `i` to image point `(x, y)`.
    pub fn move_point(&mut self, i: usize, x: f32, y: f32) {
        if let Some(p) = self.draft.as_mut().and_then(|d| d.keypoints.get_mut(i)) {
            (p.x, p.y) = (x as f64, y as f64);
        }
    }

    /// Deletes mask instance `i` (undoable, saved).
    pub fn delete_instance(&mut self, i: usize) -> anyhow::Result<()> {
        self.begin();
        if let Some(d) = &mut self.draft {
            if i < d.instances.len() {
                d.instances.remove(i);
            }
        }
        self.commit()
    }

    /// Renames mask instance `i` (undoable, saved).
    pub fn relabel(&mut self, i: usize, category: &str) -> anyhow::Result<()> {
        self.begin();
        if let Some(inst) = self.draft.as_mut().and_then(|d| d.instances.get_mut(i)) {
            inst.category = category.to_string();
        }
        self.commit()
    }

    fn restore(&mut self, answer: Option<crate::project::Answer>) -> anyhow::Result<()> {
        let file = self.project.state.items[self.current].file.clone();
        self.project.restore_answer(&file, answer)?;
        self.load_draft();
        Ok(())
    }

    /// Takes the last correction back; false when there is none.
    pub fn undo(&mut self) -> anyhow::Result<bool> {
        let Some(prev) = self.undo.pop() else {
            return Ok(false);
        };
        self.redo.push(self.answer_now());
        self.restore(prev)?;
        Ok(true)
    }

    /// Does again what [`Self::undo`] took back; false when there is nothing.
    pub fn redo(&mut self) -> anyhow::Result<bool> {
        let Some(next) = self.redo.pop() else {
            return Ok(false);
        };
        self.undo.push(self.answer_now());
        self.restore(next)?;
        Ok(true)
    }
}

impl super::EditorApp {
    /// Drags on the shown image correct the draft: keypoints move, the brush adds to or
    /// erases from the selected mask (see [`Tool`]).
    pub(super) fn correction_layer(
        &mut self,
        ui: &mut egui::Ui,
        shown: &egui::Response,
        scale: f32,
    ) {
        let r = ui.interact(
            shown.rect,
            ui.scope_id().with("correct"),
            egui::Sense::drag(),
        );
        let Some(wb) = &mut self.workbench else {
            return;
        };
        let at = r
            .interact_pointer_pos()
            .or(r.hover_pos())
            .map(|pos| (pos - shown.rect.min) / scale);
        let mut changed = false;
        if let (true, Some(p)) = (r.drag_started(), at) {
            wb.dragging = wb.point_at(p.x, p.y, 8.0 / scale);
            if wb.dragging.is_some() || wb.tool != Tool::Points {
                wb.begin();
            }
        }
        if let (true, Some(p)) = (r.dragged() || r.drag_started(), at) {
            if let Some(i) = wb.dragging {
                wb.move_point(i, p.x, p.y);
                changed = true;
            } else if wb.tool != Tool::Points {
                wb.paint(p.x, p.y, wb.radius, wb.tool == Tool::Add);
                changed = true;
            }
        }
        // A click (a press and release that did not move) off every point adds the missing
        // one named in the panel.
        if r.drag_started() {
            wb.pressed_at = at;
        }
        let still = r.drag_stopped()
            && wb.dragging.is_none()
            && matches!((wb.pressed_at, at), (Some(a), Some(b)) if (a - b).length() * scale < 3.0);
        let click = (r.clicked() || still) && wb.tool == Tool::Points;
        if let (true, Some(p), false) = (click, at, wb.new_point.trim().is_empty()) {
            if wb.point_at(p.x, p.y, 8.0 / scale).is_none() {
                wb.begin();
                let name = wb.new_point.trim().to_string();
                wb.add_point(&name, p.x, p.y);
                if let Err(e) = wb.commit() {
                    self.error(format!("{e:#}"));
                }
                self.overlay = None;
                return;
            }
        }
        if r.drag_stopped() && (wb.dragging.take().is_some() || wb.tool != Tool::Points) {
            if let Err(e) = wb.commit() {
                self.error(format!("{e:#}"));
            }
            changed = true;
        }
        if changed {
            self.overlay = None;
        }
    }

    /// Ctrl+Z / Ctrl+Shift+Z on a project image's corrections; false when there are none (the
    /// editor's own undo applies).
    pub(super) fn project_undo(&mut self, redo: bool) -> bool {
        if self.session.cursor != 0 {
            return false;
        }
        let Some(wb) = &mut self.workbench else {
            return false;
        };
        let done = if redo { wb.redo() } else { wb.undo() };
        match done {
            Ok(true) => {
                self.overlay = None;
                true
            }
            Ok(false) => false,
            Err(e) => {
                self.error(format!("{e:#}"));
                true
            }
        }
    }

    /// The correction controls of the project panel.
    pub(super) fn correction_panel(&mut self, ui: &mut egui::Ui) {
        let Some(wb) = &mut self.workbench else {
            return;
        };
        let Some(d) = &wb.draft else { return };
        ui.label("Correct");
        ui.horizontal(|ui| {
            ui.selectable_value(&mut wb.tool, Tool::Points, "Points")
                .on_hover_text("drag a keypoint to move it");
            ui.selectable_value(&mut wb.tool, Tool::Add, "Add")
                .on_hover_text("paint into the selected mask");
            ui.selectable_value(&mut wb.tool, Tool::Erase, "Erase")
                .on_hover_text("erase from the selected mask");
        });
        ui.add(egui::Slider::new(&mut wb.radius, 1.0..=64.0).text("brush"));
        ui.horizontal(|ui| {
            ui.label("Add point");
            ui.add(
                egui::TextEdit::singleline(&mut wb.new_point)
                    .hint_text("e.g. left_wrist; then click")
                    .desired_width(120.0),
            );
        });
        let names: Vec<String> = d
            .instances
            .iter()
            .map(|i| format!("{} ({} px)", i.category, i.area))
            .collect();
        let mut delete = None;
        let mut relabel = None;
        for (i, name) in names.iter().enumerate() {
            ui.horizontal(|ui| {
                if ui.selectable_label(wb.selected == i, name).clicked() {
                    wb.selected = i;
                }
                if wb.selected == i && ui.small_button("Delete").clicked() {
                    delete = Some(i);
                }
            });
        }
        if let Some(inst) = d.instances.get(wb.selected) {
            let mut label = inst.category.clone();
            let edit = ui.add(egui::TextEdit::singleline(&mut label).hint_text("label"));
            if edit.changed() {
                relabel = Some((wb.selected, label));
            }
        }
        let (mut undo, mut redo) = (false, false);
        ui.horizontal(|ui| {
            undo = ui.button("Undo").on_hover_text("Ctrl+Z").clicked();
            redo = ui.button("Redo").on_hover_text("Ctrl+Shift+Z").clicked();
        });
        let result = match (delete, relabel) {
            (Some(i), _) => wb.delete_instance(i),
            (_, Some((i, label))) => wb.relabel(i, &label),
            _ => Ok(()),
        };
        if let Err(e) = result {
            self.error(format!("{e:#}"));
        }
        if delete.is_some() {
            self.overlay = None;
        }
        if undo || redo {
            self.project_undo(redo);
        }
    }
}
