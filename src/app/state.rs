//! The editor's state, apart from drawing: the open image, the history of results with
//! undo/redo, the settings that persist, and what the worker is doing. Pure data and logic,
//! tested without a window.

use std::path::PathBuf;
use std::sync::Arc;

use eframe::egui;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::sample::pipeline::{EditPlan, EditRequest};
use crate::sample::samplers::Sampler;
use crate::settings::GuidanceFormula;
use crate::tasks::compose::{Fields, Recipe};

/// How the seed of the next edit is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeedMode {
    Fixed,
    Random,
    Increment,
}

/// Settings that persist between runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// "builtin", a folder, a single file or a hub id.
    pub model: String,
    /// "cpu", or "cuda" / "metal" in builds with those features.
    pub device: String,
    /// The weights' precision: "auto" (bf16 on CPUs with AVX512-BF16, else f32), "f32",
    /// "bf16" (half the memory) or "f16".
    pub precision: String,
    pub steps: usize,
    pub text_cfg: f64,
    pub image_cfg: f64,
    /// The guidance rescale (0: off; "CFG rescale" in other UIs); none: the model's own
    /// (`instructdiffusion.json`, else off).
    pub guidance_rescale: Option<f64>,
    pub sampler: Sampler,
    pub guidance: GuidanceFormula,
    pub seed: u64,
    pub seed_mode: SeedMode,
    /// Edits per run, consecutive seeds, shown to pick from.
    pub variants: usize,
    /// Long side the model runs at (a multiple of 64); 0: the model's own (the built-in
    /// model's is 128, Stable Diffusion's 512).
    pub resolution: usize,
    pub recent_files: Vec<PathBuf>,
    pub prompt_history: Vec<String>,
    /// Models loaded or trained lately (specs, newest first).
    pub recent_models: Vec<String>,
    /// The task picker's recipe and fields.
    pub recipe: Recipe,
    pub fields: Fields,
    /// How the picker phrases instructions; None: as the loaded model was taught.
    pub phrasing: Option<crate::tasks::Phrasing>,
    /// How results come back at the photo's resolution.
    pub full_res: crate::fullres::FullRes,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: "builtin".into(),
            device: "cpu".into(),
            precision: "auto".into(),
            steps: 20,
            text_cfg: 5.0,
            image_cfg: 1.25,
            guidance_rescale: None,
            sampler: Sampler::EulerAncestral,
            guidance: GuidanceFormula::InstructDiffusion,
            seed: 42,
            seed_mode: SeedMode::Random,
            variants: 1,
            resolution: 0,
            recent_files: vec![],
            prompt_history: vec![],
            recent_models: vec![],
            recipe: Recipe::Segment,
            phrasing: None,
            fields: Fields::default(),
            full_res: Default::default(),
        }
    }
}

impl Settings {
    /// The request for the next edit; advances the seed as the mode says.
    pub fn next_request(&mut self, prompt: &str, random: u64) -> EditRequest {
        let seed = match self.seed_mode {
            SeedMode::Fixed => self.seed,
            SeedMode::Random => random,
            SeedMode::Increment => {
                let s = self.seed;
                self.seed = self.seed.wrapping_add(1);
                s
            }
        };
        EditRequest {
            prompt: prompt.to_string(),
            steps: Some(self.steps),
            text_cfg: Some(self.text_cfg),
            image_cfg: Some(self.image_cfg),
            guidance_rescale: self.guidance_rescale,
            sampler: Some(self.sampler),
            guidance: Some(self.guidance),
            seed: Some(seed),
            resolution: (self.resolution > 0).then_some(self.resolution),
            keep_model_resolution: false,
            full_res: self.full_res,
        }
    }

    /// Remembers a prompt (most recent first, no duplicates, at most 50).
    pub fn remember_prompt(&mut self, prompt: &str) {
        let p = prompt.trim().to_string();
        if p.is_empty() {
            return;
        }
        self.prompt_history.retain(|q| *q != p);
        self.prompt_history.insert(0, p);
        self.prompt_history.truncate(50);
    }

    /// Takes a result's seed (fixed from now on, so the next run repeats it) and, with
    /// `everything`, its steps, guidance, sampler and formula too. Returns its prompt.
    pub fn reuse(&mut self, plan: &EditPlan, everything: bool) -> String {
        self.seed = plan.seed;
        self.seed_mode = SeedMode::Fixed;
        if everything {
            self.steps = plan.steps;
            (self.text_cfg, self.image_cfg) = (plan.text_cfg, plan.image_cfg);
            self.guidance_rescale = Some(plan.guidance_rescale);
            self.sampler = plan.sampler;
            self.guidance = plan.guidance;
        }
        plan.prompt.clone()
    }

    pub fn remember_file(&mut self, path: PathBuf) {
        remember(&mut self.recent_files, path);
    }

    pub fn remember_model(&mut self, spec: String) {
        remember(&mut self.recent_models, spec);
    }
}

/// Puts `item` first in `list` (no duplicates, at most 10).
fn remember<T: PartialEq>(list: &mut Vec<T>, item: T) {
    list.retain(|q| *q != item);
    list.insert(0, item);
    list.truncate(10);
}

/// One finished edit.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Shared, so the session writer's snapshot costs no pixel copies.
    pub image: Arc<RgbImage>,
    /// What the overlays mean, when the instruction asked for masks, keypoints or a label.
    pub decoded: Option<Box<crate::decode::Decoded>>,
    pub plan: EditPlan,
    pub seconds: f64,
    /// Seconds since the Unix epoch when it finished.
    pub finished_at: u64,
    /// The model's own pixels at its size (not kept across restarts).
    pub model_image: Option<Arc<RgbImage>>,
    /// How the result was brought to the photo's resolution.
    pub applied: Option<crate::fullres::Applied>,
    /// Show the model's own pixels instead of the result at the photo's size.
    pub show_model: bool,
}

/// The open image and what was made of it. Results chain: an edit applies to the current
/// image (the source, or the result the cursor is on); a new result after an undo drops the
/// undone ones, as editors do.
#[derive(Debug, Clone, Default)]
pub struct Session {
    pub source_path: Option<PathBuf>,
    pub source: Option<Arc<RgbImage>>,
    pub history: Vec<Entry>,
    /// How many history entries are applied (0 = the source).
    pub cursor: usize,
    /// Results not saved since they were made.
    pub unsaved: bool,
}

impl Session {
    pub fn open(&mut self, path: Option<PathBuf>, image: RgbImage) {
        *self = Session {
            source_path: path,
            source: Some(Arc::new(image)),
            ..Default::default()
        };
    }

    /// The image the next edit starts from and the canvas shows.
    pub fn current(&self) -> Option<&RgbImage> {
        match self.cursor {
            0 => self.source.as_deref(),
            n => self
                .history
                .get(n - 1)
                .map(|e| match (&e.model_image, e.show_model) {
                    (Some(m), true) => &**m,
                    _ => &*e.image,
                }),
        }
    }

    /// The result the cursor is on, if any.
    pub fn current_entry_mut(&mut self) -> Option<&mut Entry> {
        match self.cursor {
            0 => None,
            n => self.history.get_mut(n - 1),
        }
    }

    pub fn push(&mut self, entry: Entry) {
        self.history.truncate(self.cursor);
        self.history.push(entry);
        self.cursor = self.history.len();
        self.unsaved = true;
    }

    pub fn can_undo(&self) -> bool {
        self.cursor > 0
    }

    pub fn can_redo(&self) -> bool {
        self.cursor < self.history.len()
    }

    pub fn undo(&mut self) {
        self.cursor = self.cursor.saturating_sub(1);
    }

    pub fn redo(&mut self) {
        if self.can_redo() {
            self.cursor += 1;
        }
    }
}

/// What the worker is doing for the UI.
#[derive(Debug, Clone, Default)]
pub enum Activity {
    #[default]
    Idle,
    Loading {
        spec: String,
        file: Option<(String, u64, u64)>,
    },
    Editing {
        job: u64,
        step: usize,
        total: usize,
        elapsed_s: f64,
        previews: usize,
        cancelling: bool,
        /// Tiled runs: tiles done in this step, of how many.
        tile: Option<(usize, usize)>,
        /// Drafting a project: images done, of how many, seconds since the job started.
        images: Option<(usize, usize, f64)>,
    },
}

impl Activity {
    /// A job just sent: `total` steps an image, and for drafts the number of images.
    pub fn editing(job: u64, total: usize, images: Option<usize>) -> Self {
        Activity::Editing {
            job,
            step: 0,
            total,
            elapsed_s: 0.0,
            previews: 0,
            cancelling: false,
            tile: None,
            images: images.map(|n| (0, n, 0.0)),
        }
    }
}

/// The compare slider's geometry: the screen part of `rect` left of the divider at `split`
/// (a fraction of the width) and the matching texture coordinates of the source.
pub fn compare_split_rects(rect: egui::Rect, split: f32) -> (egui::Rect, egui::Rect) {
    let split = split.clamp(0.0, 1.0);
    let x = rect.left() + rect.width() * split;
    (
        egui::Rect::from_min_max(rect.min, egui::pos2(x, rect.bottom())),
        egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(split, 1.0)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_results_seed_or_all_its_settings_are_reused() {
        let plan = entry(1).plan;
        let mut s = Settings::default();
        s.reuse(&plan, false);
        assert_eq!((s.seed, s.seed_mode), (plan.seed, SeedMode::Fixed));
        assert_eq!(s.steps, Settings::default().steps, "only the seed");
        let mut r = s.next_request("again", 1);
        assert_eq!(r.seed, Some(plan.seed), "the next run repeats it");
        let prompt = s.reuse(&plan, true);
        r = s.next_request(&prompt, 1);
        assert_eq!(
            (r.prompt.as_str(), r.steps, r.text_cfg, r.image_cfg),
            (
                plan.prompt.as_str(),
                Some(plan.steps),
                Some(plan.text_cfg),
                Some(plan.image_cfg)
            )
        );
    }

    #[test]
    fn the_compare_divider_shows_that_share_of_the_source() {
        let rect = egui::Rect::from_min_size(egui::pos2(100.0, 50.0), egui::vec2(200.0, 80.0));
        let (left, uv) = compare_split_rects(rect, 0.25);
        assert_eq!(
            left,
            egui::Rect::from_min_max(egui::pos2(100.0, 50.0), egui::pos2(150.0, 130.0))
        );
        assert_eq!(
            uv,
            egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(0.25, 1.0))
        );
        assert_eq!(
            compare_split_rects(rect, 7.0).0,
            rect,
            "clamped to the image"
        );
    }

    fn entry(v: u8) -> Entry {
        let plan = EditPlan {
            prompt: "p".into(),
            steps: 1,
            text_cfg: 1.0,
            image_cfg: 1.0,
            guidance_rescale: 0.0,
            sampler: Sampler::Euler,
            guidance: GuidanceFormula::InstructDiffusion,
            seed: 1,
            resolution: 64,
            keep_model_resolution: false,
            full_res: Default::default(),
        };
        Entry {
            image: Arc::new(RgbImage::from_pixel(2, 2, image::Rgb([v; 3]))),
            decoded: None,
            plan,
            seconds: 0.0,
            finished_at: 0,
            model_image: None,
            applied: None,
            show_model: false,
        }
    }

    #[test]
    fn undo_redo_and_chaining() {
        let mut s = Session::default();
        assert!(s.current().is_none());
        s.open(None, RgbImage::from_pixel(2, 2, image::Rgb([0; 3])));
        s.push(entry(1));
        s.push(entry(2));
        assert_eq!(s.current().unwrap()[(0, 0)][0], 2);
        s.undo();
        assert_eq!(s.current().unwrap()[(0, 0)][0], 1);
        s.undo();
        s.undo();
        assert_eq!(s.current().unwrap()[(0, 0)][0], 0);
        s.redo();
        // A new result after an undo replaces the undone ones.
        s.push(entry(3));
        assert_eq!(s.history.len(), 2);
        assert!(!s.can_redo());
        assert_eq!(s.current().unwrap()[(0, 0)][0], 3);
    }

    #[test]
    fn mask_overlay_paints_instances_in_their_colours() {
        use crate::decode::{parse::Kind, Decoded, Instance};
        let mut mask = vec![false; 6];
        mask[4] = true;
        let d = Decoded {
            kind: Kind::Segmentation,
            width: 3,
            height: 2,
            instances: vec![Instance {
                category: "cat".into(),
                phrase: "the cat".into(),
                color: [0, 0, 255],
                mask,
                area: 1,
                bbox: [1.0, 1.0, 1.0, 1.0],
                score: 1.0,
            }],
            keypoints: vec![],
            label: None,
        };
        let img = mask_overlay(&d).unwrap();
        assert_eq!(img.get_pixel(1, 1).0, [0, 0, 255, 255]);
        assert_eq!(img.get_pixel(0, 0).0[3], 0);
        assert!(mask_overlay(&Decoded {
            instances: vec![],
            ..d
        })
        .is_none());
    }

    #[test]
    fn seeds_and_prompt_history() {
        let mut st = Settings {
            seed_mode: SeedMode::Increment,
            seed: 7,
            ..Default::default()
        };
        assert_eq!(st.next_request("a", 99).seed, Some(7));
        assert_eq!(st.next_request("a", 99).seed, Some(8));
        st.seed_mode = SeedMode::Random;
        assert_eq!(st.next_request("a", 99).seed, Some(99));
        st.seed_mode = SeedMode::Fixed;
        assert_eq!(st.next_request("a", 5).seed, Some(9));
        st.remember_prompt("one");
        st.remember_prompt("two");
        st.remember_prompt("one");
        assert_eq!(st.prompt_history, ["one", "two"]);
    }
}

/// The overlay of decoded masks as an RGBA image (each instance in its colour at full alpha;
/// the canvas applies the opacity), `None` when there is nothing to show.
pub fn mask_overlay(d: &crate::decode::Decoded) -> Option<image::RgbaImage> {
    if d.instances.is_empty() {
        return None;
    }
    let mut img = image::RgbaImage::new(d.width as u32, d.height as u32);
    for inst in &d.instances {
        for (i, _) in inst.mask.iter().enumerate().filter(|(_, m)| **m) {
            let [r, g, b] = inst.color;
            img.put_pixel(
                (i % d.width) as u32,
                (i / d.width) as u32,
                image::Rgba([r, g, b, 255]),
            );
        }
    }
    Some(img)
}

/// Which file an export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    Coco,
    Labelme,
    Masks,
}

/// Writes the decoded result of `entry` (atomically; `Masks` writes into the folder `path`).
pub fn export(
    kind: ExportKind,
    path: &std::path::Path,
    entry: &Entry,
    source_name: &str,
) -> anyhow::Result<()> {
    use crate::export::{coco::Coco, labelme, masks};
    let Some(d) = &entry.decoded else {
        anyhow::bail!(
            "this result has no masks or keypoints to export (the instruction was an edit)"
        );
    };
    match kind {
        ExportKind::Coco => {
            let mut coco = Coco::default();
            let id = coco.add_image(source_name, d.width, d.height);
            coco.add_decoded(id, d);
            crate::imageio::write_atomic(path, serde_json::to_string_pretty(&coco)?.as_bytes())?;
        }
        ExportKind::Labelme => {
            let doc = labelme::document(d, source_name);
            crate::imageio::write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
        }
        ExportKind::Masks => {
            let stem = std::path::Path::new(source_name)
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            masks::write(d, path, &stem)?;
        }
    }
    Ok(())
}

/// The crash-safe copy of the editing session: the source and every result as PNG plus a
/// `session.json`, rewritten (atomically) after each result, so a crash or a kill loses nothing;
/// the next start restores it. Decoded overlays are not kept (re-run to get them back).
#[derive(Debug, Clone)]
pub struct SessionFile {
    pub dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct SessionJson {
    source_path: Option<PathBuf>,
    cursor: usize,
    entries: Vec<EntryJson>,
}

#[derive(Serialize, Deserialize)]
struct EntryJson {
    file: String,
    plan: serde_json::Value,
    seconds: f64,
    finished_at: u64,
}

impl SessionFile {
    /// Writes what is not on disk yet, then the index.
    pub fn save(&self, s: &Session) -> anyhow::Result<()> {
        let Some(source) = &s.source else {
            return Ok(());
        };
        std::fs::create_dir_all(&self.dir)?;
        let write_png = |name: &str, img: &RgbImage, always: bool| -> anyhow::Result<()> {
            let path = self.dir.join(name);
            if always || !path.exists() {
                crate::imageio::save(img, &path, &[])?;
            }
            Ok(())
        };
        // A new session replaces the old one's files.
        let index = self.dir.join("session.json");
        if s.history.is_empty() {
            for e in std::fs::read_dir(&self.dir)?.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        write_png("source.png", source, false)?;
        let mut entries = vec![];
        for (i, e) in s.history.iter().enumerate() {
            let file = format!("result_{:04}_{}.png", i + 1, e.finished_at);
            write_png(&file, &e.image, i + 1 == s.history.len())?;
            entries.push(EntryJson {
                file,
                plan: serde_json::to_value(&e.plan)?,
                seconds: e.seconds,
                finished_at: e.finished_at,
            });
        }
        let json = SessionJson {
            source_path: s.source_path.clone(),
            cursor: s.cursor,
            entries,
        };
        crate::imageio::write_atomic(&index, serde_json::to_string_pretty(&json)?.as_bytes())?;
        Ok(())
    }

    /// The saved session, if there is one (a damaged one is an error the caller reports).
    pub fn load(&self) -> anyhow::Result<Option<Session>> {
        let index = self.dir.join("session.json");
        let Ok(text) = std::fs::read_to_string(&index) else {
            return Ok(None);
        };
        let json: SessionJson = serde_json::from_str(&text)?;
        let read = |name: &str| -> anyhow::Result<RgbImage> {
            Ok(crate::imageio::load_rgb(&self.dir.join(name), u64::MAX)?)
        };
        let mut history = vec![];
        for e in json.entries {
            history.push(Entry {
                image: Arc::new(read(&e.file)?),
                decoded: None,
                plan: plan_from_json(e.plan)?,
                seconds: e.seconds,
                finished_at: e.finished_at,
                model_image: None,
                applied: None,
                show_model: false,
            });
        }
        Ok(Some(Session {
            source_path: json.source_path,
            source: Some(Arc::new(read("source.png")?)),
            cursor: json.cursor.min(history.len()),
            history,
            unsaved: true,
        }))
    }
}

fn plan_from_json(v: serde_json::Value) -> anyhow::Result<EditPlan> {
    let g = |k: &str| v.get(k).cloned().unwrap_or(serde_json::Value::Null);
    Ok(EditPlan {
        prompt: serde_json::from_value(g("prompt"))?,
        steps: serde_json::from_value(g("steps"))?,
        text_cfg: serde_json::from_value(g("text_cfg"))?,
        image_cfg: serde_json::from_value(g("image_cfg"))?,
        // Absent in sessions saved before the rescale existed.
        guidance_rescale: serde_json::from_value::<Option<f64>>(g("guidance_rescale"))?
            .unwrap_or(0.0),
        sampler: serde_json::from_value(g("sampler"))?,
        guidance: serde_json::from_value(g("guidance"))?,
        seed: serde_json::from_value(g("seed"))?,
        resolution: serde_json::from_value(g("resolution"))?,
        keep_model_resolution: serde_json::from_value(g("keep_model_resolution"))?,
        // Absent in sessions saved before results came back at full resolution.
        full_res: serde_json::from_value::<Option<_>>(g("full_res"))?.unwrap_or_default(),
    })
}

#[cfg(test)]
mod session_file_tests {
    use super::*;

    #[test]
    fn a_session_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = SessionFile {
            dir: dir.path().join("s"),
        };
        assert!(file.load().unwrap().is_none());
        let mut s = Session::default();
        s.open(
            Some("/photos/cat.png".into()),
            RgbImage::from_pixel(3, 2, image::Rgb([9, 8, 7])),
        );
        file.save(&s).unwrap();
        let plan = EditPlan {
            prompt: "make it snow".into(),
            steps: 20,
            text_cfg: 5.0,
            image_cfg: 1.25,
            guidance_rescale: 0.7,
            sampler: Sampler::EulerAncestral,
            guidance: GuidanceFormula::InstructDiffusion,
            seed: 42,
            resolution: 256,
            keep_model_resolution: false,
            full_res: Default::default(),
        };
        for v in [1u8, 2] {
            s.push(Entry {
                image: Arc::new(RgbImage::from_pixel(3, 2, image::Rgb([v; 3]))),
                decoded: None,
                plan: plan.clone(),
                seconds: 1.5,
                finished_at: v as u64,
                model_image: None,
                applied: None,
                show_model: false,
            });
            file.save(&s).unwrap();
        }
        s.undo();
        file.save(&s).unwrap();
        let back = file.load().unwrap().unwrap();
        assert_eq!(back.source, s.source);
        assert_eq!(back.source_path, s.source_path);
        assert_eq!(back.cursor, 1);
        assert_eq!(back.history.len(), 2);
        assert_eq!(back.history[1].image, s.history[1].image);
        assert_eq!(back.history[0].plan, plan);
        // Opening a new image starts a new session file.
        let mut fresh = Session::default();
        fresh.open(None, RgbImage::from_pixel(1, 1, image::Rgb([0; 3])));
        file.save(&fresh).unwrap();
        let back = file.load().unwrap().unwrap();
        assert!(back.history.is_empty());
        assert_eq!(
            std::fs::read_dir(&file.dir).unwrap().count(),
            2,
            "old results removed"
        );
    }
}
