//! The canvas: the image at its own resolution with zoom and pan, the live preview beside it,
//! the compare divider and side by side, and the brush that limits an edit to a region.

use eframe::egui;
use eframe::egui::{ColorImage, TextureHandle, TextureOptions};

use super::state::Activity;
use super::{state, EditorApp};

impl EditorApp {
    pub(crate) fn canvas(&mut self, ui: &mut egui::Ui) {
        let Some(current) = self.session.current() else {
            ui.centered_and_justified(|ui| {
                ui.label("Open an image (Ctrl+O), drop one here, or pick a sample in the menu.");
            });
            return;
        };
        let show_source = self.show_before && self.session.cursor > 0;
        // From 1:1 up, pixels are drawn as crisp squares (nearest), smaller ones smoothly.
        let magnified = self
            .zoom
            .is_some_and(|z| z * ui.ctx().pixels_per_point() >= 0.999);
        let model_pixels = self
            .session
            .cursor
            .checked_sub(1)
            .and_then(|i| self.session.history.get(i))
            .is_some_and(|e| e.show_model);
        let key = (
            self.session.cursor,
            self.session.history.len(),
            show_source,
            magnified,
            model_pixels,
        );
        if self.canvas.as_ref().map(|c| c.1) != Some(key) {
            let img = if show_source {
                self.session.source.as_deref().unwrap()
            } else {
                current
            };
            let color =
                ColorImage::from_rgb([img.width() as usize, img.height() as usize], img.as_raw());
            let options = if magnified {
                TextureOptions::NEAREST
            } else {
                TextureOptions::LINEAR
            };
            self.canvas = Some((ui.ctx().load_texture("canvas", color, options), key));
        }
        let tex = self.canvas.as_ref().unwrap().0.clone();
        let avail = ui.available_size();
        let editing = matches!(self.activity, Activity::Editing { .. });
        let panes = if editing || self.side_by_side {
            2.0
        } else {
            1.0
        };
        let size = tex.size_vec2();
        let fit = ((avail.x / panes - 8.0) / size.x)
            .min(avail.y / size.y)
            .clamp(0.05, 4.0);
        // Ctrl + wheel (or a pinch) over the canvas zooms; the scroll bars and dragging pan.
        let zoom_delta = ui.input(|i| i.zoom_delta());
        if zoom_delta != 1.0 && ui.rect_contains_pointer(ui.max_rect()) {
            self.zoom = Some((self.zoom.unwrap_or(fit) * zoom_delta).clamp(0.05, 32.0));
        }
        let scale = self.zoom.unwrap_or(fit);
        egui::ScrollArea::both()
            .scroll_source(if self.zoom.is_some() {
                egui::containers::scroll_area::ScrollSource::ALL
            } else {
                egui::containers::scroll_area::ScrollSource::SCROLL_BAR
            })
            .auto_shrink(false)
            .show(ui, |ui| {
                self.canvas_images(ui, &tex, size, scale, show_source, editing)
            });
    }

    pub(crate) fn canvas_images(
        &mut self,
        ui: &mut egui::Ui,
        tex: &TextureHandle,
        size: egui::Vec2,
        scale: f32,
        show_source: bool,
        editing: bool,
    ) {
        let texture = egui::load::SizedTexture::new(tex.id(), size * scale);
        ui.horizontal_centered(|ui| {
            let shown = ui
                .add(egui::Image::from_texture(texture))
                .on_hover_text(if show_source {
                    "before (release B)"
                } else {
                    "current (hold B for before)"
                });
            self.canvas_rect = Some(shown.rect);
            if !show_source {
                self.draw_overlays(ui, shown.rect);
                if self.compare && !editing && self.session.cursor > 0 {
                    self.compare_layer(ui, &shown);
                } else if self.project_draft().is_some() {
                    self.correction_layer(ui, &shown, scale);
                } else {
                    self.brush_layer(ui, &shown, scale);
                }
            }
            if editing {
                if let Some(p) = &self.preview {
                    ui.add(egui::Image::from_texture((p.id(), size * scale)))
                        .on_hover_text("live preview of the edit");
                }
            } else if self.side_by_side {
                if let Some(t) = self.source_texture(ui.ctx()) {
                    ui.add(egui::Image::from_texture((t, size * scale)))
                        .on_hover_text("source");
                }
            }
        });
    }

    /// The source image's texture (made once per opened image).
    pub(crate) fn source_texture(&mut self, ctx: &egui::Context) -> Option<egui::TextureId> {
        if let (None, Some(src)) = (&self.source_tex, &self.session.source) {
            let color =
                ColorImage::from_rgb([src.width() as usize, src.height() as usize], src.as_raw());
            self.source_tex = Some(ctx.load_texture("source", color, TextureOptions::LINEAR));
        }
        self.source_tex.as_ref().map(|t| t.id())
    }

    /// The compare slider over the shown result: the source drawn left of the divider; a click
    /// or a drag on the image moves the divider.
    pub(crate) fn compare_layer(&mut self, ui: &mut egui::Ui, shown: &egui::Response) {
        let rect = shown.rect;
        let r = ui.interact(
            rect,
            ui.scope_id().with("compare_slider"),
            egui::Sense::click_and_drag(),
        );
        if let (true, Some(p)) = (r.clicked() || r.dragged(), r.interact_pointer_pos()) {
            self.compare_split = ((p.x - rect.left()) / rect.width()).clamp(0.0, 1.0);
        }
        let Some(src) = self.source_texture(ui.ctx()) else {
            return;
        };
        let (left, uv) = state::compare_split_rects(rect, self.compare_split);
        let painter = ui.painter_at(rect);
        painter.image(src, left, uv, egui::Color32::WHITE);
        let x = left.right();
        painter.line_segment(
            [egui::pos2(x, rect.top()), egui::pos2(x, rect.bottom())],
            egui::Stroke::new(2.0, egui::Color32::WHITE),
        );
        let label = |pos, align, text: &str| {
            painter.text(
                pos,
                align,
                text,
                egui::FontId::proportional(12.0),
                egui::Color32::WHITE,
            )
        };
        label(
            rect.left_top() + egui::vec2(4.0, 4.0),
            egui::Align2::LEFT_TOP,
            "before",
        );
        label(
            rect.right_top() + egui::vec2(-4.0, 4.0),
            egui::Align2::RIGHT_TOP,
            "after",
        );
        r.on_hover_cursor(egui::CursorIcon::ResizeHorizontal)
            .on_hover_text("drag: source on the left, result on the right");
    }

    /// Paints into the edit region while the brush is on, and shows the region.
    pub(crate) fn brush_layer(&mut self, ui: &mut egui::Ui, shown: &egui::Response, scale: f32) {
        let Some(img) = self.session.current() else {
            return;
        };
        let (w, h) = (img.width() as usize, img.height() as usize);
        if self.brush {
            let r = ui.interact(shown.rect, ui.scope_id().with("brush"), egui::Sense::drag());
            if let Some(pos) = r
                .interact_pointer_pos()
                .filter(|_| r.dragged() || r.drag_started())
            {
                let p = (pos - shown.rect.min) / scale;
                let region = self.region.get_or_insert_with(|| vec![false; w * h]);
                if region.len() == w * h {
                    paint_disc(region, w, h, p.x, p.y, self.brush_radius);
                    self.region_tex = None;
                }
            }
        }
        let Some(region) = &self.region else { return };
        if region.len() != w * h {
            return;
        }
        if self.region_tex.is_none() {
            let pixels: Vec<egui::Color32> = region
                .iter()
                .map(|v| {
                    if *v {
                        egui::Color32::from_rgba_unmultiplied(255, 220, 0, 90)
                    } else {
                        egui::Color32::TRANSPARENT
                    }
                })
                .collect();
            let color = ColorImage::new([w, h], pixels);
            self.region_tex = Some(
                ui.ctx()
                    .load_texture("region", color, TextureOptions::NEAREST),
            );
        }
        if let Some(t) = &self.region_tex {
            ui.painter_at(shown.rect).image(
                t.id(),
                shown.rect,
                egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
                egui::Color32::WHITE,
            );
        }
    }
}

/// Sets the pixels of a disc of radius `r` (image pixels) around `(cx, cy)`.
pub fn paint_disc(region: &mut [bool], w: usize, h: usize, cx: f32, cy: f32, r: f32) {
    let (x0, x1) = (
        (cx - r).floor().max(0.0) as usize,
        ((cx + r).ceil().max(0.0) as usize).min(w),
    );
    let (y0, y1) = (
        (cy - r).floor().max(0.0) as usize,
        ((cy + r).ceil().max(0.0) as usize).min(h),
    );
    for y in y0..y1 {
        for x in x0..x1 {
            if (x as f32 + 0.5 - cx).powi(2) + (y as f32 + 0.5 - cy).powi(2) <= r * r {
                region[y * w + x] = true;
            }
        }
    }
}
