//! The menu bar and the keyboard shortcuts.

use std::path::PathBuf;

use eframe::egui;
use eframe::egui::{Key, KeyboardShortcut, Modifiers};
use image::RgbImage;

use super::{sample_images, DialogResult, EditorApp};

impl EditorApp {
    pub(crate) fn menu(&mut self, ui: &mut egui::Ui) {
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

    pub(crate) fn shortcuts(&mut self, ctx: &egui::Context) {
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
}
