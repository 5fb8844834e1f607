//! Thumbnails of a project's images, made off the UI thread and only for the rows in view: a
//! loader thread decodes each image and shrinks it to [`SIZE`] px; the UI keeps at most
//! [`KEEP`] of them as textures, the least recently shown going first. Memory stays bounded
//! whatever the folder's size; the full images are never held.

use std::collections::HashMap;
use std::path::PathBuf;

use crossbeam_channel::{unbounded, Receiver, Sender};
use eframe::egui;

/// The long side of a thumbnail, in pixels.
pub const SIZE: u32 = 48;
/// Thumbnails kept as textures at most.
pub const KEEP: usize = 256;

/// The loader and the textures made so far.
pub struct Thumbs {
    ask: Sender<(usize, PathBuf)>,
    got: Receiver<(usize, Option<egui::ColorImage>)>,
    textures: HashMap<usize, (egui::TextureHandle, u64)>,
    asked: std::collections::HashSet<usize>,
    /// Frames counted, for the least recently shown.
    clock: u64,
}

impl Thumbs {
    pub fn new() -> Self {
        let (ask, todo) = unbounded::<(usize, PathBuf)>();
        let (done, got) = unbounded();
        std::thread::Builder::new()
            .name("instructdiffusion-thumbnails".into())
            .spawn(move || {
                for (i, path) in todo {
                    let img = crate::imageio::load_rgb(&path, crate::imageio::DEFAULT_MAX_PIXELS)
                        .ok()
                        .map(|img| {
                            let (w, h) = img.dimensions();
                            let f = SIZE as f64 / w.max(h) as f64;
                            let side = |s: u32| ((s as f64 * f).round() as u32).clamp(1, SIZE);
                            let t = image::imageops::thumbnail(&img, side(w), side(h));
                            egui::ColorImage::from_rgb(
                                [t.width() as usize, t.height() as usize],
                                t.as_raw(),
                            )
                        });
                    if done.send((i, img)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning the thumbnail thread");
        Self {
            ask,
            got,
            textures: HashMap::new(),
            asked: Default::default(),
            clock: 0,
        }
    }

    /// Takes in what the loader made; call once a frame.
    pub fn receive(&mut self, ctx: &egui::Context) {
        self.clock += 1;
        for (i, img) in self.got.try_iter() {
            if let Some(img) = img {
                let tex = ctx.load_texture(format!("thumb{i}"), img, egui::TextureOptions::LINEAR);
                self.textures.insert(i, (tex, self.clock));
            }
        }
        while self.textures.len() > KEEP {
            let oldest = self
                .textures
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(i, _)| *i);
            if let Some(i) = oldest {
                self.textures.remove(&i);
                self.asked.remove(&i);
            }
        }
    }

    /// The thumbnail of image `i` when made (asking the loader for it otherwise).
    pub fn get(
        &mut self,
        i: usize,
        path: impl FnOnce() -> PathBuf,
    ) -> Option<egui::load::SizedTexture> {
        if let Some((tex, seen)) = self.textures.get_mut(&i) {
            *seen = self.clock;
            return Some(egui::load::SizedTexture::new(tex.id(), tex.size_vec2()));
        }
        if self.asked.insert(i) {
            let _ = self.ask.send((i, path()));
        }
        None
    }

    /// Thumbnails held as textures now.
    pub fn held(&self) -> usize {
        self.textures.len()
    }
}

impl Default for Thumbs {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However many rows pass by, at most [`KEEP`] thumbnails are held, each at most
    /// [`SIZE`] px.
    #[test]
    fn thumbnails_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        image::RgbImage::from_pixel(120, 60, image::Rgb([9, 99, 199]))
            .save(&path)
            .unwrap();
        let ctx = egui::Context::default();
        let mut t = Thumbs::new();
        let n = KEEP + 60;
        for i in 0..n {
            assert!(t.get(i, || path.clone()).is_none(), "not made yet");
        }
        // Every one made, the oldest let go: as many asked for as held.
        let t0 = std::time::Instant::now();
        while t.asked.len() > KEEP && t0.elapsed().as_secs() < 60 {
            t.receive(&ctx);
            assert!(t.held() <= KEEP);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(t.held(), KEEP);
        let any = t.get(n - 1, || path.clone()).expect("the newest is kept");
        assert_eq!(any.size, egui::vec2(48.0, 24.0));
    }
}
