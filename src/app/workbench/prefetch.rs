//! The images next to the current one, decoded ahead on a thread of their own, so that moving
//! to the next or previous image (Up, Down, Enter, Delete) shows it at once instead of decoding
//! it on the UI thread. At most the two neighbours asked for last are held.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crossbeam_channel::{unbounded, Receiver, Sender};
use image::RgbImage;

/// The loader and the images it has decoded.
pub struct Prefetch {
    ask: Sender<PathBuf>,
    got: Receiver<(PathBuf, Option<RgbImage>)>,
    /// The paths wanted now (the current image's neighbours).
    wanted: Vec<PathBuf>,
    pending: HashSet<PathBuf>,
    ready: Vec<(PathBuf, RgbImage)>,
    /// Images shown from here rather than decoded on the UI thread.
    pub hits: usize,
}

impl Prefetch {
    pub fn new() -> Self {
        let (ask, todo) = unbounded::<PathBuf>();
        let (done, got) = unbounded();
        std::thread::Builder::new()
            .name("instructdiffusion-prefetch".into())
            .spawn(move || {
                for path in todo {
                    let img =
                        crate::imageio::load_rgb(&path, crate::imageio::DEFAULT_MAX_PIXELS).ok();
                    if done.send((path, img)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning the prefetch thread");
        Self {
            ask,
            got,
            wanted: vec![],
            pending: HashSet::new(),
            ready: vec![],
            hits: 0,
        }
    }

    fn receive(&mut self) {
        for (path, img) in self.got.try_iter() {
            self.pending.remove(&path);
            if let (Some(img), true) = (img, self.wanted.contains(&path)) {
                if !self.ready.iter().any(|(p, _)| *p == path) {
                    self.ready.push((path, img));
                }
            }
        }
    }

    /// Decodes these images ahead (letting go of any other held).
    pub fn want(&mut self, paths: Vec<PathBuf>) {
        self.receive();
        self.ready.retain(|(p, _)| paths.contains(p));
        for p in &paths {
            if !self.pending.contains(p) && !self.ready.iter().any(|(r, _)| r == p) {
                self.pending.insert(p.clone());
                let _ = self.ask.send(p.clone());
            }
        }
        self.wanted = paths;
    }

    /// The decoded image of `path`, if it is ready (taken out of the cache).
    pub fn take(&mut self, path: &Path) -> Option<RgbImage> {
        self.receive();
        let i = self.ready.iter().position(|(p, _)| p == path)?;
        self.hits += 1;
        Some(self.ready.remove(i).1)
    }

    /// Images decoded and held now.
    pub fn held(&mut self) -> usize {
        self.receive();
        self.ready.len()
    }
}

impl Default for Prefetch {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wanted image comes back as the UI thread would have decoded it; one no longer wanted
    /// is let go; one never asked for is not there.
    #[test]
    fn neighbours_are_decoded_ahead_and_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..3u8)
            .map(|i| {
                let p = dir.path().join(format!("{i}.png"));
                RgbImage::from_fn(9, 7, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, i]))
                    .save(&p)
                    .unwrap();
                p
            })
            .collect();
        let mut f = Prefetch::new();
        f.want(vec![paths[0].clone(), paths[1].clone()]);
        let t0 = std::time::Instant::now();
        while f.held() < 2 && t0.elapsed().as_secs() < 30 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        f.want(vec![paths[1].clone()]);
        assert_eq!(f.held(), 1, "the image no longer wanted is let go");
        assert!(f.take(&paths[0]).is_none());
        assert!(f.take(&paths[2]).is_none(), "never asked for");
        let img = f.take(&paths[1]).expect("decoded ahead");
        let direct = crate::imageio::load_rgb(&paths[1], u64::MAX).unwrap();
        assert_eq!(img, direct);
        assert_eq!(f.hits, 1);
        assert!(f.take(&paths[1]).is_none(), "taken once");
    }
}
