//! The annotator's workbench, first part: a folder opened as a project ([`crate::project`]):
//! its images listed with their status, a filter by status, previous / next from the keyboard,
//! each image shown with its draft as overlays, accept or reject (saved at once), and one COCO
//! export. Drafting from the editor, thumbnails and corrections are to come (issue #28);
//! `annotate` drafts a folder into the same project state today.

mod panel;
pub mod prefetch;
pub mod thumbs;

use std::path::{Path, PathBuf};

use eframe::egui;

use crate::decode::Decoded;
use crate::project::{Project, Status};

/// Which images the list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filter {
    #[default]
    All,
    Only(Status),
}

impl Filter {
    pub fn passes(self, s: Status) -> bool {
        match self {
            Filter::All => true,
            Filter::Only(want) => s == want,
        }
    }
}

/// The open project and where the review is.
pub struct Workbench {
    pub project: Project,
    pub current: usize,
    pub filter: Filter,
    /// The current image's draft, expanded (masks at the image's size).
    pub draft: Option<Box<Decoded>>,
    /// What a drag on the image does.
    pub tool: Tool,
    /// The mask instance the brush paints into.
    pub selected: usize,
    /// Brush radius in image pixels.
    pub radius: f32,
    /// The keypoint being dragged.
    pub dragging: Option<usize>,
    /// The name a click on the image gives a new keypoint (empty: clicks add none).
    pub new_point: String,
    /// Where the current press on the image began (image pixels).
    pressed_at: Option<egui::Vec2>,
    undo: Vec<Option<crate::project::Answer>>,
    redo: Vec<Option<crate::project::Answer>>,
    /// Thumbnails of the rows in view.
    pub thumbs: thumbs::Thumbs,
    /// The list's rows in view at the last frame (positions among the rows shown), so that
    /// the current image, moved to by the keyboard, is scrolled into view.
    pub rows_in_view: std::ops::Range<usize>,
    /// The current image changed since the list was drawn.
    pub reveal: bool,
    /// The current image's neighbours, decoded ahead.
    pub prefetch: prefetch::Prefetch,
}

/// A status as a person reads it.
pub fn status_name(s: Status) -> &'static str {
    match s {
        Status::NotRun => "not run",
        Status::Drafted => "drafted",
        Status::Reviewed => "reviewed",
        Status::Rejected => "rejected",
    }
}

/// The keys the workbench answers to, as listed in its panel.
pub const KEYS: &str = "Up/Down: previous/next, Enter: accept, Delete: reject, Ctrl+Z / Ctrl+Shift+Z: undo / redo a correction";

impl Workbench {
    /// Opens `dir` as a project; the notices say what was found wrong with its state.
    pub fn open(dir: &Path) -> anyhow::Result<(Self, Vec<String>)> {
        let (mut project, notices) = Project::open(dir)?;
        project.write_in_background();
        if project.state.items.is_empty() {
            anyhow::bail!("no images in the folder '{}'", dir.display());
        }
        let notices = notices
            .into_iter()
            .map(|n| match n {
                crate::project::Notice::UnreadableState { moved_to, reason } => format!(
                    "the project state could not be read ({reason}); it was kept as '{}' and the folder starts fresh",
                    moved_to.display()
                ),
                crate::project::Notice::Missing(files) => format!(
                    "{} image(s) of the project are gone from the folder (their work is kept): {}",
                    files.len(),
                    files.join(", ")
                ),
            })
            .collect();
        let mut wb = Self {
            project,
            current: 0,
            filter: Filter::All,
            draft: None,
            tool: Tool::Points,
            selected: 0,
            radius: 6.0,
            dragging: None,
            new_point: String::new(),
            pressed_at: None,
            undo: vec![],
            redo: vec![],
            thumbs: thumbs::Thumbs::new(),
            rows_in_view: 0..0,
            reveal: false,
            prefetch: prefetch::Prefetch::new(),
        };
        wb.load_draft();
        Ok((wb, notices))
    }

    /// The current image's path.
    pub fn current_path(&self) -> PathBuf {
        self.project
            .dir
            .join(&self.project.state.items[self.current].file)
    }

    fn load_draft(&mut self) {
        self.draft = self.project.state.items[self.current]
            .answer
            .as_ref()
            .and_then(|a| a.to_decoded().ok())
            .map(Box::new);
    }

    /// Makes image `i` current.
    pub fn select(&mut self, i: usize) {
        if i < self.project.state.items.len() {
            if i != self.current {
                self.reveal = true;
                self.undo.clear();
                self.redo.clear();
                self.selected = 0;
            }
            self.current = i;
            self.load_draft();
        }
    }

    /// Moves to the next (or previous) image the filter shows; false when there is none.
    pub fn step(&mut self, forward: bool) -> bool {
        let found = self.neighbour(forward);
        if let Some(i) = found {
            self.select(i);
        }
        found.is_some()
    }

    /// The image [`Self::step`] would move to.
    pub fn neighbour(&self, forward: bool) -> Option<usize> {
        let n = self.project.state.items.len();
        (1..n)
            .map(|k| {
                if forward {
                    (self.current + k) % n
                } else {
                    (self.current + n - k) % n
                }
            })
            .find(|&i| self.filter.passes(self.project.state.items[i].status))
    }

    /// Accepts (reviewed) or rejects the current image, saved at once, then moves to the next
    /// image still to review (drafted), if any.
    pub fn review(&mut self, status: Status) -> anyhow::Result<()> {
        let file = self.project.state.items[self.current].file.clone();
        self.project.set_status(&file, status)?;
        if let Some(i) = self.project.next(self.current, |s| s == Status::Drafted) {
            self.select(i);
        }
        Ok(())
    }

    /// Writes one COCO file of the reviewed images (or of every drafted and reviewed one),
    /// atomically.
    pub fn export(&self, path: &Path, reviewed_only: bool) -> anyhow::Result<usize> {
        let coco = self.project.coco(reviewed_only)?;
        crate::imageio::write_atomic(path, serde_json::to_string_pretty(&coco)?.as_bytes())?;
        Ok(coco.images.len())
    }

    /// One line of counts: "5 images: 2 not run, 1 drafted, 1 reviewed, 1 rejected".
    pub fn summary(&self) -> String {
        let c = self.project.counts();
        format!(
            "{} images: {} not run, {} drafted, {} reviewed, {} rejected",
            self.project.state.items.len(),
            c[0],
            c[1],
            c[2],
            c[3]
        )
    }
}

/// What a drag on the image does while a project is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tool {
    /// Drags move keypoints only.
    #[default]
    Points,
    /// Paint into the selected mask.
    Add,
    /// Erase from the selected mask.
    Erase,
}

/// Corrections of the current draft: every change is undoable and saved to the project when
/// the stroke or drag ends.
impl Workbench {
    fn answer_now(&self) -> Option<crate::project::Answer> {
        self.project.state.items[self.current].answer.clone()
    }

    /// Starts a correction: the answer as it is goes on the undo stack.
    pub fn begin(&mut self) {
        self.undo.push(self.answer_now());
        self.redo.clear();
    }

    /// Ends a correction: boxes and areas recomputed from the masks, the answer saved.
    pub fn commit(&mut self) -> anyhow::Result<()> {
        let Some(d) = &mut self.draft else {
            return Ok(());
        };
        for inst in &mut d.instances {
            let rle = crate::export::rle::Rle::encode(&inst.mask, d.width, d.height);
            inst.area = rle.area();
            inst.bbox = rle.bbox();
        }
        d.instances.retain(|i| i.area > 0);
        let file = self.project.state.items[self.current].file.clone();
        let d = (**d).clone();
        self.project.set_corrected(&file, &d)?;
        self.selected = self.selected.min(d.instances.len().saturating_sub(1));
        Ok(())
    }

    /// Paints (or erases) a disc of radius `r` at image point `(x, y)` into the selected mask.
    pub fn paint(&mut self, x: f32, y: f32, r: f32, add: bool) {
        let Some(d) = &mut self.draft else { return };
        let (w, h) = (d.width, d.height);
        let Some(inst) = d.instances.get_mut(self.selected) else {
            return;
        };
        let (x0, x1) = (
            (x - r).floor().max(0.0) as usize,
            ((x + r).ceil() as usize).min(w),
        );
        let (y0, y1) = (
            (y - r).floor().max(0.0) as usize,
            ((y + r).ceil() as usize).min(h),
        );
        for py in y0..y1 {
            for px in x0..x1 {
                let (dx, dy) = (px as f32 + 0.5 - x, py as f32 + 0.5 - y);
                if dx * dx + dy * dy <= r * r {
                    inst.mask[py * w + px] = add;
                }
            }
        }
    }

    /// The keypoint under image point `(x, y)`, within `reach` pixels (or its disc).
    pub fn point_at(&self, x: f32, y: f32, reach: f32) -> Option<usize> {
        let d = self.draft.as_ref()?;
        d.keypoints
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    i,
                    ((p.x - x as f64).powi(2) + (p.y - y as f64).powi(2)).sqrt(),
                )
            })
            .filter(|(i, dist)| *dist <= d.keypoints[*i].radius.max(reach as f64))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    }

    /// Adds a keypoint named `name` at image point `(x, y)` (a missing one), in the colour and
    /// size of the draft's other points (red and the expected size if it has none).
    pub fn add_point(&mut self, name: &str, x: f32, y: f32) {
        let Some(d) = &mut self.draft else { return };
        let like = d.keypoints.first().cloned();
        let radius = like.as_ref().map_or_else(
            || crate::decode::keypoint::expected_radius(d.width, d.height),
            |p| p.radius,
        );
        d.keypoints.push(crate::decode::Point {
            category: like
                .as_ref()
                .map_or("person".into(), |p| p.category.clone()),
            name: name.to_string(),
            color: [255, 0, 0],
            x: x as f64,
            y: y as f64,
            radius,
            score: 1.0,
            instance: like.map_or(0, |p| p.instance),
        });
    }

    /// Moves keypoint `i` to image point `(x, y)`.
    pub fn move_point(&mut self, i: usize, x: f32, y: f32) {
        if let Some(p) = self.draft.as_mut().and_then(|d| d.keypoints.get_mut(i)) {
            (p.x, p.y) = (x as f64, y as f64);
        }
    }

    /// Deletes mask instance `i` (undoable, saved).
    pub fn delete_instance(&mut self, i: usize) -> anyhow::Result<()> {
        self.begin();
        if let Some(d) = &mut self.draft {
            if i < d.instances.len() {
                d.instances.remove(i);
            }
        }
        self.commit()
    }

    /// Renames mask instance `i` (undoable, saved).
    pub fn relabel(&mut self, i: usize, category: &str) -> anyhow::Result<()> {
        self.begin();
        if let Some(inst) = self.draft.as_mut().and_then(|d| d.instances.get_mut(i)) {
            inst.category = category.to_string();
        }
        self.commit()
    }

    fn restore(&mut self, answer: Option<crate::project::Answer>) -> anyhow::Result<()> {
        let file = self.project.state.items[self.current].file.clone();
        self.project.restore_answer(&file, answer)?;
        self.load_draft();
        Ok(())
    }

    /// Takes the last correction back; false when there is none.
    pub fn undo(&mut self) -> anyhow::Result<bool> {
        let Some(prev) = self.undo.pop() else {
            return Ok(false);
        };
        self.redo.push(self.answer_now());
        self.restore(prev)?;
        Ok(true)
    }

    /// Does again what [`Self::undo`] took back; false when there is nothing.
    pub fn redo(&mut self) -> anyhow::Result<bool> {
        let Some(next) = self.redo.pop() else {
            return Ok(false);
        };
        self.undo.push(self.answer_now());
        self.restore(next)?;
        Ok(true)
    }
}
