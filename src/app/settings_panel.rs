//! The settings panel on the left: the model and device, the sampling settings and the task
//! picker.

use eframe::egui;

use super::state::SeedMode;
use crate::sample::samplers::Sampler;
use crate::settings::GuidanceFormula;
use crate::tasks::Task;

use super::{picker, EditorApp};

impl EditorApp {
    pub(crate) fn settings_panel(&mut self, ui: &mut egui::Ui) {
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
            let l = ui.label("Precision");
            egui::ComboBox::from_id_salt("precision")
                .selected_text(&self.settings.precision)
                .show_ui(ui, |ui| {
                    for (p, tip) in PRECISIONS {
                        ui.selectable_value(&mut self.settings.precision, p.to_string(), *p)
                            .on_hover_text(*tip);
                    }
                })
                .response
                .labelled_by(l.id)
                .on_hover_text("The weights' precision; applies at the next Load");
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
}

/// The precisions offered, each with what it means.
const PRECISIONS: &[(&str, &str)] = &[
    (
        "auto",
        "bf16 on a CPU with AVX512-BF16 (faster, half the memory), else f32",
    ),
    ("f32", "Full precision"),
    (
        "bf16",
        "Weights in half the memory; products on AVX512-BF16 where the CPU has it (no faster elsewhere), the rest in f32",
    ),
    ("f16", "Half precision, for GPUs (slow on the CPU)"),
];

/// The devices this build can use.
const DEVICES: &[&str] = &[
    "cpu",
    #[cfg(feature = "cuda")]
    "cuda",
    #[cfg(feature = "metal")]
    "metal",
];

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
