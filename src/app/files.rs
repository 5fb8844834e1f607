//! Files: open and save dialogs, saving a result, exporting an answer, and the question before
//! closing with unsaved results.

use std::path::Path;

use eframe::egui;

use super::state::ExportKind;
use crate::imageio;

use super::{state, DialogResult, EditorApp, Notice};

impl EditorApp {
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

    pub(crate) fn pick_export(&self, kind: ExportKind) {
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

    pub(crate) fn pick_open(&self) {
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

    pub(crate) fn pick_save(&self) {
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

    /// Closing with unsaved results asks first (they also stay in the recovered session).
    pub(crate) fn close_guard(&mut self, ctx: &egui::Context) {
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
}
