//! The workbench as the editor shows it: opening a folder, the project panel (list, review,
//! drafting, export, training set), its keys, and corrections drawn on the canvas.

use std::path::{Path, PathBuf};

use eframe::egui;

use super::{status_name, Filter, Tool, Workbench, KEYS};
use crate::app::{DialogResult, EditorApp, Notice};
use crate::decode::Decoded;
use crate::project::Status;

impl EditorApp {
    /// Opens `dir` as a project and shows its first image with its draft.
    pub fn open_folder(&mut self, dir: &Path) {
        match Workbench::open(dir) {
            Ok((wb, notices)) => {
                self.settings.remember_file(dir.to_path_buf());
                let summary = wb.summary();
                self.workbench = Some(wb);
                self.show_project_image();
                let text =
                    std::iter::once(format!("opened the folder {}: {summary}", dir.display()))
                        .chain(notices)
                        .collect::<Vec<_>>()
                        .join("; ");
                let error = text.contains("could not be read");
                self.notice = Some(Notice { text, error });
            }
            Err(e) => self.error(format!("{e:#}")),
        }
    }

    /// Opens the project's current image (the source; its draft shows as overlays).
    fn show_project_image(&mut self) {
        let Some(wb) = &mut self.workbench else {
            return;
        };
        let path = wb.current_path();
        let loaded = match wb.prefetch.take(&path) {
            Some(img) => Ok(img),
            None => crate::imageio::load_rgb(&path, crate::imageio::DEFAULT_MAX_PIXELS),
        };
        // The next move's image, decoded ahead.
        let near = [wb.neighbour(true), wb.neighbour(false)]
            .into_iter()
            .flatten()
            .map(|i| wb.project.dir.join(&wb.project.state.items[i].file))
            .collect();
        wb.prefetch.want(near);
        match loaded {
            Ok(img) => {
                // The folder is what Recent remembers, not each image looked at.
                let recent = self.settings.recent_files.clone();
                self.open_image(Some(path), img);
                self.settings.recent_files = recent;
            }
            Err(e) => self.error(e.to_string()),
        }
    }

    /// The current project image's draft, while the source is shown.
    pub(crate) fn project_draft(&self) -> Option<&Decoded> {
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
    pub(crate) fn project_keys(&mut self, ctx: &egui::Context) {
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
    /// window's data (see [`crate::project::Project::training_set`]).
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
                self.notice = Some(Notice {
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
                self.notice = Some(Notice {
                    text: format!("exported {n} image(s) to {}", path.display()),
                    error: false,
                })
            }
            Err(e) => self.error(format!("{e:#}")),
        }
    }

    /// The project panel: counts, filter, the list, review buttons and the export.
    pub(crate) fn project_panel(&mut self, ui: &mut egui::Ui) {
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
        wb.thumbs.receive(ui.ctx());
        let side = super::thumbs::SIZE as f32;
        // show_rows places row k at k * (height + spacing).
        let pitch = side + ui.spacing().item_spacing.y;
        let mut list =
            egui::ScrollArea::vertical().max_height((ui.available_height() * 0.45).max(120.0));
        // The current image out of view (moved to by the keyboard): scroll it in, a few rows
        // from the edge it came in by.
        let at = shown.iter().position(|&i| i == wb.current);
        if let (Some(at), true) = (at, std::mem::take(&mut wb.reveal)) {
            let view = wb.rows_in_view.clone();
            if !view.is_empty() && !view.contains(&at) {
                let first = if at < view.start {
                    at.saturating_sub(1)
                } else {
                    (at + 2).saturating_sub(view.len())
                };
                list = list.vertical_scroll_offset(first as f32 * pitch);
            }
        }
        let view = list.show_rows(ui, side, shown.len(), |ui, range| {
            let view = range.clone();
            for &i in &shown[range] {
                let item = &wb.project.state.items[i];
                let text = format!("{:<9} {}", status_name(item.status), item.file);
                let dir = &wb.project.dir;
                let thumb = wb.thumbs.get(i, || dir.join(&item.file));
                ui.horizontal(|ui| {
                    ui.set_height(side);
                    match thumb {
                        Some(t) => {
                            // The thumbnail at its own aspect, centred in a square.
                            let (rect, _) = ui
                                .allocate_exact_size(egui::vec2(side, side), egui::Sense::hover());
                            let fit = egui::Rect::from_center_size(rect.center(), t.size);
                            ui.painter().image(
                                t.id,
                                fit,
                                egui::Rect::from_min_max(
                                    egui::pos2(0.0, 0.0),
                                    egui::pos2(1.0, 1.0),
                                ),
                                egui::Color32::WHITE,
                            );
                        }
                        None => {
                            ui.add_space(side + ui.spacing().item_spacing.x);
                        }
                    }
                    if ui.selectable_label(i == wb.current, text).clicked() {
                        picked = Some(i);
                    }
                });
            }
            view
        });
        // The last row, usually cut by the edge, counts as out of view.
        let r = view.inner;
        wb.rows_in_view = if r.len() > 1 { r.start..r.end - 1 } else { r };
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
                    let _ = tx.send(DialogResult::ProjectTrainingSet(p));
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
                    let _ = tx.send(DialogResult::ProjectExport(p, reviewed_only));
                }
            });
        }
    }
}

impl EditorApp {
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
        self.activity = crate::app::state::Activity::editing(job, self.settings.steps, Some(n));
    }

    /// A drafted image: recorded in the project (saved at once), shown if it is the current one.
    pub(crate) fn on_drafted(
        &mut self,
        file: &Path,
        result: Result<Box<Decoded>, String>,
        done: usize,
        total: usize,
        elapsed_s: f64,
    ) {
        if let crate::app::state::Activity::Editing { images, .. } = &mut self.activity {
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

    pub(crate) fn on_drafts_done(&mut self) {
        self.activity = crate::app::state::Activity::Idle;
        if let Some(wb) = &self.workbench {
            let text = format!("drafting done: {}", wb.summary());
            self.notice = Some(Notice { text, error: false });
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

impl EditorApp {
    /// Drags on the shown image correct the draft: keypoints move, the brush adds to or
    /// erases from the selected mask (see [`Tool`]).
    pub(crate) fn correction_layer(
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
    pub(crate) fn project_undo(&mut self, redo: bool) -> bool {
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
    pub(crate) fn correction_panel(&mut self, ui: &mut egui::Ui) {
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
