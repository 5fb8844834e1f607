//! What is drawn over the image: the decoded answer (masks, boxes, keypoints with their labels)
//! and the variants of a run to pick from.

use eframe::egui;
use eframe::egui::{Color32, ColorImage, TextureOptions};

use super::{state, EditorApp};

impl EditorApp {
    /// The current result's decoded answer (at the photo's size; none while the model's own
    /// pixels are shown).
    pub(crate) fn current_decoded(&self) -> Option<&crate::decode::Decoded> {
        let Some(i) = self.session.cursor.checked_sub(1) else {
            return self.project_draft();
        };
        let entry = self.session.history.get(i)?;
        if entry.show_model {
            return None;
        }
        entry.decoded.as_deref()
    }

    /// Masks, boxes and keypoints over the canvas image at `rect`; hovering one names it.
    pub(crate) fn draw_overlays(&mut self, ui: &mut egui::Ui, rect: egui::Rect) {
        let Some(d) = self.current_decoded().cloned() else {
            return;
        };
        if !self.show_overlays {
            return;
        }
        let sx = rect.width() / d.width as f32;
        let sy = rect.height() / d.height as f32;
        let key = self.session.cursor;
        if self.overlay.as_ref().map(|o| o.1) != Some(key) {
            self.overlay = state::mask_overlay(&d).map(|img| {
                let color = ColorImage::from_rgba_unmultiplied(
                    [img.width() as usize, img.height() as usize],
                    img.as_raw(),
                );
                (
                    ui.ctx()
                        .load_texture("overlay", color, TextureOptions::NEAREST),
                    key,
                )
            });
        }
        let painter = ui.painter_at(rect);
        if let Some((tex, _)) = &self.overlay {
            let tint = Color32::from_white_alpha((self.overlay_opacity * 255.0) as u8);
            painter.image(
                tex.id(),
                rect,
                egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
                tint,
            );
        }
        for (i, inst) in d.instances.iter().enumerate() {
            let [x, y, w, h] = inst.bbox;
            let r = egui::Rect::from_min_size(
                rect.min + egui::vec2(x as f32 * sx, y as f32 * sy),
                egui::vec2(w as f32 * sx, h as f32 * sy),
            );
            let [cr, cg, cb] = inst.color;
            painter.rect_stroke(
                r,
                0.0,
                egui::Stroke::new(2.0, Color32::from_rgb(cr, cg, cb)),
                egui::StrokeKind::Outside,
            );
            ui.interact(r, ui.scope_id().with(("instance", i)), egui::Sense::hover())
                .on_hover_text(format!(
                    "{} ({})
score {:.2}, area {} px",
                    inst.category, inst.phrase, inst.score, inst.area
                ));
        }
        for (i, p) in d.keypoints.iter().enumerate() {
            let c = rect.min + egui::vec2(p.x as f32 * sx, p.y as f32 * sy);
            let [cr, cg, cb] = p.color;
            painter.circle_stroke(
                c,
                (p.radius as f32 * sx).max(4.0),
                egui::Stroke::new(2.0, Color32::from_rgb(cr, cg, cb)),
            );
            painter.text(
                c + egui::vec2(8.0, -8.0),
                egui::Align2::LEFT_BOTTOM,
                &p.name,
                egui::FontId::proportional(13.0),
                Color32::WHITE,
            );
            let hit = egui::Rect::from_center_size(c, egui::vec2(16.0, 16.0));
            ui.interact(
                hit,
                ui.scope_id().with(("keypoint", i)),
                egui::Sense::hover(),
            )
            .on_hover_text(format!(
                "{} of {}
({:.1}, {:.1}), score {:.2}",
                p.name, p.category, p.x, p.y, p.score
            ));
        }
        if let Some((label, share)) = &d.label {
            painter.text(
                rect.min + egui::vec2(8.0, 8.0),
                egui::Align2::LEFT_TOP,
                format!("{label} ({:.0}%)", share * 100.0),
                egui::FontId::proportional(18.0),
                Color32::WHITE,
            );
        }
    }

    pub(crate) fn variant_picker(&mut self, ui: &mut egui::Ui) {
        if self.variant_tex.len() != self.variants.len() {
            self.variant_tex = self
                .variants
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let img = image::imageops::thumbnail(&*e.image, 96, 96);
                    let color = ColorImage::from_rgb(
                        [img.width() as usize, img.height() as usize],
                        img.as_raw(),
                    );
                    ui.ctx()
                        .load_texture(format!("variant{i}"), color, TextureOptions::LINEAR)
                })
                .collect();
        }
        let mut picked = None;
        ui.horizontal(|ui| {
            ui.label("Variants: pick one");
            for (i, (tex, e)) in self.variant_tex.iter().zip(&self.variants).enumerate() {
                let name = format!("Variant {} (seed {})", i + 1, e.plan.seed);
                let r = ui
                    .add(egui::Button::image(egui::load::SizedTexture::new(
                        tex.id(),
                        tex.size_vec2() * (64.0 / tex.size_vec2().max_elem()),
                    )))
                    .on_hover_text(&name);
                r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, true, &name));
                if r.clicked() {
                    picked = Some(i);
                }
            }
        });
        if let Some(i) = picked {
            self.pick_variant(i);
        }
    }
}
