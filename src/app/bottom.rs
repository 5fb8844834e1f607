//! The bar under the image: the instruction box, progress, the history of results, the view
//! toggles, overlay exports and the status line.

use eframe::egui;
use eframe::egui::Color32;

use super::state::{Activity, ExportKind};
use super::{EditorApp, Notice};

impl EditorApp {
    pub(crate) fn bottom(&mut self, ui: &mut egui::Ui) {
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
}
