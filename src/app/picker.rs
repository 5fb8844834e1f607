//! The task picker: a recipe, its few fields, and a button that writes the instruction (with
//! [`crate::tasks::compose`]) and sets the guidance the loaded model recommends for that family.

use eframe::egui;

use crate::data::scene::KEYPOINT_NAMES;
use crate::tasks::compose::{Field, Fields, Recipe, MAX_MARKS};
use crate::tasks::Phrasing;

use super::labelled_row;

/// What the user asked the picker for this frame.
pub enum Picked {
    /// The instruction and its guidance `(text, image)`.
    Write(String, (f64, f64)),
    /// A field is missing: this says which.
    Missing(String),
}

/// Draws the picker. `guidance` gives a family's recommended `(text, image)` on the loaded
/// model, `model` how that model was taught to be asked; `chosen` overrides it.
pub fn show(
    ui: &mut egui::Ui,
    recipe: &mut Recipe,
    f: &mut Fields,
    guidance: impl Fn(crate::tasks::Task) -> (f64, f64),
    model: Phrasing,
    chosen: &mut Option<Phrasing>,
) -> Option<Picked> {
    let phrasing = chosen.unwrap_or(model);
    egui::Grid::new("task_picker")
        .num_columns(2)
        .show(ui, |ui| {
            let l = ui.label("Task");
            egui::ComboBox::from_id_salt("recipe")
                .selected_text(recipe.label())
                .show_ui(ui, |ui| {
                    for r in Recipe::ALL {
                        ui.selectable_value(recipe, r, r.label());
                    }
                })
                .response
                .labelled_by(l.id);
            ui.end_row();
            let l = ui.label("Phrasing");
            egui::ComboBox::from_id_salt("phrasing")
                .selected_text(match chosen {
                    None => format!("as the model was taught: {}", model.label()),
                    Some(p) => p.label().to_string(),
                })
                .show_ui(ui, |ui| {
                    ui.selectable_value(
                        chosen,
                        None,
                        format!("as the model was taught: {}", model.label()),
                    );
                    for p in Phrasing::ALL {
                        ui.selectable_value(chosen, Some(p), p.label());
                    }
                })
                .response
                .on_hover_text("The wording the instruction is written in: the loaded model's own (from its instructdiffusion.json, else its layout), or one you pick")
                .labelled_by(l.id);
            ui.end_row();
            for field in recipe.fields() {
                match field {
                    Field::Target => labelled_row(
                        ui,
                        "Target",
                        egui::TextEdit::singleline(&mut f.target).hint_text("the red circle"),
                    ),
                    Field::Color => {
                        let l = ui.label("Colour");
                        choose(ui, "color", &mut f.color, &recipe.colors_for(phrasing))
                            .labelled_by(l.id);
                        ui.end_row();
                    }
                    Field::Kind => labelled_row(
                        ui,
                        "Shape / object",
                        egui::TextEdit::singleline(&mut f.kind).hint_text("star"),
                    ),
                    Field::Place => labelled_row(
                        ui,
                        "Place",
                        egui::TextEdit::singleline(&mut f.place)
                            .hint_text("in the top left corner"),
                    ),
                    Field::Part => labelled_row(
                        ui,
                        "Part",
                        egui::TextEdit::singleline(&mut f.part).hint_text("nose"),
                    ),
                    Field::Marks => marks(ui, recipe, f, phrasing),
                }
            }
        });
    let (t, i) = guidance(recipe.task());
    let tip = format!(
        "Writes the instruction and sets guidance {t} / {i} (this model's value for {}){}",
        recipe.task().name().replace('_', " "),
        if recipe.unseen() {
            ". The model was not trained on this task: a demonstration of generalisation"
        } else {
            ""
        }
    );
    if ui.button("Write instruction").on_hover_text(tip).clicked() {
        return Some(
            match crate::tasks::compose::compose_as(*recipe, f, phrasing) {
                Ok(text) => Picked::Write(text, (t, i)),
                Err(e) => Picked::Missing(e),
            },
        );
    }
    None
}

/// One row per keypoint (name and colour, a button to drop it), and one to add another.
fn marks(ui: &mut egui::Ui, recipe: &Recipe, f: &mut Fields, phrasing: Phrasing) {
    let mut drop = None;
    let colors = recipe.colors_for(phrasing);
    for (k, (name, color)) in f.marks.iter_mut().enumerate() {
        let l = ui.label(format!("Keypoint {}", k + 1));
        ui.horizontal(|ui| {
            let names: Vec<&str> = KEYPOINT_NAMES.to_vec();
            choose(ui, ("kp_name", k), name, &names).labelled_by(l.id);
            choose(ui, ("kp_color", k), color, &colors).labelled_by(l.id);
            if ui
                .small_button("×")
                .on_hover_text("Drop this keypoint")
                .clicked()
            {
                drop = Some(k);
            }
        });
        ui.end_row();
    }
    if let Some(k) = drop {
        f.marks.remove(k);
    }
    if f.marks.len() < MAX_MARKS {
        ui.label("");
        if ui.button("+ keypoint").clicked() {
            // A name and a colour not used yet.
            let used = |s: &str, i: usize| {
                f.marks
                    .iter()
                    .any(|m| (if i == 0 { &m.0 } else { &m.1 }) == s)
            };
            let name = KEYPOINT_NAMES
                .iter()
                .find(|n| !used(n, 0))
                .unwrap_or(&"nose");
            let color = colors.iter().find(|c| !used(c, 1)).unwrap_or(&"red");
            f.marks.push((name.to_string(), color.to_string()));
        }
        ui.end_row();
    }
}

/// A combo box over `options` bound to a string.
fn choose(
    ui: &mut egui::Ui,
    id: impl std::hash::Hash + std::fmt::Debug,
    value: &mut String,
    options: &[&str],
) -> egui::Response {
    egui::ComboBox::from_id_salt(id)
        .selected_text(value.replace('_', " "))
        .show_ui(ui, |ui| {
            for o in options {
                ui.selectable_value(value, o.to_string(), o.replace('_', " "));
            }
        })
        .response
}
