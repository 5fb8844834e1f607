//! A folder of images as an annotation project: each image's status (not run, drafted,
//! reviewed, rejected) and its answer (the decoded masks, keypoints or label, at the image's own
//! size), kept in one state file beside the images, written atomically after every change, so
//! closing or a crash loses nothing and reopening continues. The images are never written.
//!
//! `annotate` and the editor's workbench (`app/workbench/`) both keep their work here; the
//! editor saves through [`writer`], off its UI thread.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::decode::{parse::Kind, Decoded, Instance, Point};
use crate::export::rle::Rle;

pub mod writer;

/// The state file's name inside the folder.
pub const STATE_FILE: &str = "instructdiffusion-project.json";

/// Where an image is in the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    NotRun,
    Drafted,
    Reviewed,
    Rejected,
}

/// A mask instance as stored: its mask as COCO's compressed RLE string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredInstance {
    pub category: String,
    pub phrase: String,
    pub color: [u8; 3],
    pub rle: String,
    pub score: f32,
}

/// One image's answer as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub kind: Kind,
    pub width: usize,
    pub height: usize,
    pub instances: Vec<StoredInstance>,
    pub keypoints: Vec<Point>,
    pub label: Option<(String, f32)>,
}

impl Answer {
    pub fn from_decoded(d: &Decoded) -> Self {
        Self {
            kind: d.kind,
            width: d.width,
            height: d.height,
            instances: d
                .instances
                .iter()
                .map(|i| StoredInstance {
                    category: i.category.clone(),
                    phrase: i.phrase.clone(),
                    color: i.color,
                    rle: Rle::encode(&i.mask, d.width, d.height).to_coco_string(),
                    score: i.score,
                })
                .collect(),
            keypoints: d.keypoints.clone(),
            label: d.label.clone(),
        }
    }

    /// The answer with its masks expanded.
    pub fn to_decoded(&self) -> Result<Decoded, String> {
        let instances = self
            .instances
            .iter()
            .map(|i| {
                let rle = Rle::from_coco_string(&i.rle, self.width, self.height)
                    .map_err(|e| format!("a stored mask of '{}': {e}", i.category))?;
                Ok(Instance {
                    category: i.category.clone(),
                    phrase: i.phrase.clone(),
                    color: i.color,
                    mask: rle.decode(),
                    area: rle.area(),
                    bbox: rle.bbox(),
                    score: i.score,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Decoded {
            kind: self.kind,
            width: self.width,
            height: self.height,
            instances,
            keypoints: self.keypoints.clone(),
            label: self.label.clone(),
        })
    }
}

/// One image of the project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// The file name inside the folder.
    pub file: String,
    pub status: Status,
    #[serde(default)]
    pub answer: Option<Answer>,
    /// Why the last draft failed (an unreadable image), if it did.
    #[serde(default)]
    pub error: Option<String>,
    /// Whether a person corrected the draft.
    #[serde(default)]
    pub corrected: bool,
}

/// The state file's contents.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// The instruction the drafts come from.
    pub instruction: Option<String>,
    /// The model that drafted them.
    pub model: Option<String>,
    pub items: Vec<Item>,
}

/// An open project.
#[derive(Debug)]
pub struct Project {
    pub dir: PathBuf,
    /// The state file (`dir/instructdiffusion-project.json` unless chosen).
    pub state_path: PathBuf,
    pub state: State,
    /// Where saves go when they are written on a thread of their own (the editor's way).
    writer: Option<writer::Writer>,
}

/// What opening a folder found worth telling.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// The state file could not be read; it was moved aside (nothing deleted) and the project
    /// starts fresh.
    UnreadableState { moved_to: PathBuf, reason: String },
    /// Images named in the state file are gone from the folder (their work is kept).
    Missing(Vec<String>),
}

impl Project {
    /// Opens `dir`: its images (sorted by name) with the work recorded for them, new images
    /// as not run. A state file that cannot be read is moved aside with a notice.
    pub fn open(dir: &Path) -> anyhow::Result<(Self, Vec<Notice>)> {
        Self::open_at(dir, &dir.join(STATE_FILE))
    }

    /// [`Self::open`] with the state in `path` (for a folder that cannot be written).
    pub fn open_at(dir: &Path, path: &Path) -> anyhow::Result<(Self, Vec<Notice>)> {
        let files = crate::imageio::list_images(dir)?;
        let mut notices = vec![];
        let mut state = match std::fs::read_to_string(path) {
            Ok(text) => match serde_json::from_str::<State>(&text) {
                Ok(s) => s,
                Err(e) => {
                    let moved_to = aside(path)?;
                    notices.push(Notice::UnreadableState {
                        moved_to,
                        reason: e.to_string(),
                    });
                    State::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => {
                anyhow::bail!("reading '{}': {e}", path.display())
            }
        };
        state.version = 1;
        let names: Vec<String> = files
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        let missing: Vec<String> = state
            .items
            .iter()
            .filter(|i| !names.contains(&i.file))
            .map(|i| i.file.clone())
            .collect();
        if !missing.is_empty() {
            notices.push(Notice::Missing(missing));
        }
        for name in names {
            if !state.items.iter().any(|i| i.file == name) {
                state.items.push(Item {
                    file: name,
                    status: Status::NotRun,
                    answer: None,
                    error: None,
                    corrected: false,
                });
            }
        }
        state.items.sort_by(|a, b| a.file.cmp(&b.file));
        Ok((
            Self {
                dir: dir.to_path_buf(),
                state_path: path.to_path_buf(),
                state,
                writer: None,
            },
            notices,
        ))
    }

    /// From now on, saves hand a snapshot to a writer thread and return at once (the latest
    /// snapshot is written; dropping the project finishes it). A failed write is reported by
    /// the next save or [`Self::flush`].
    pub fn write_in_background(&mut self) {
        if self.writer.is_none() {
            self.writer = Some(writer::Writer::start(self.state_path.clone()));
        }
    }

    /// Waits for the writes handed over so far (nothing to wait for without a writer).
    pub fn flush(&self) -> anyhow::Result<()> {
        self.writer.as_ref().map_or(Ok(()), |w| w.flush())
    }

    /// Writes the state file atomically (or hands it to the writer thread).
    pub fn save(&self) -> anyhow::Result<()> {
        if let Some(w) = &self.writer {
            return w.submit(self.state.clone());
        }
        let text = serde_json::to_string(&self.state)?;
        crate::imageio::write_atomic(&self.state_path, text.as_bytes())?;
        Ok(())
    }

    fn item_mut(&mut self, file: &str) -> anyhow::Result<&mut Item> {
        self.state
            .items
            .iter_mut()
            .find(|i| i.file == file)
            .ok_or_else(|| anyhow::anyhow!("'{file}' is not an image of this project"))
    }

    /// Records a draft of `file` (its answer at the image's size) and saves.
    pub fn set_draft(&mut self, file: &str, d: &Decoded) -> anyhow::Result<()> {
        let item = self.item_mut(file)?;
        item.answer = Some(Answer::from_decoded(d));
        item.status = Status::Drafted;
        item.error = None;
        item.corrected = false;
        self.save()
    }

    /// Replaces `file`'s answer with a corrected one (its status unchanged) and saves.
    pub fn set_corrected(&mut self, file: &str, d: &Decoded) -> anyhow::Result<()> {
        let item = self.item_mut(file)?;
        item.answer = Some(Answer::from_decoded(d));
        item.corrected = true;
        self.save()
    }

    /// Puts back an answer as it was (undo, redo) and saves.
    pub fn restore_answer(&mut self, file: &str, answer: Option<Answer>) -> anyhow::Result<()> {
        let item = self.item_mut(file)?;
        item.answer = answer;
        self.save()
    }

    /// Records that drafting `file` failed (it stays not run) and saves.
    pub fn set_failed(&mut self, file: &str, reason: &str) -> anyhow::Result<()> {
        let item = self.item_mut(file)?;
        item.error = Some(reason.to_string());
        self.save()
    }

    /// Sets the review status of `file` and saves (an image without a draft cannot be
    /// reviewed).
    pub fn set_status(&mut self, file: &str, status: Status) -> anyhow::Result<()> {
        let item = self.item_mut(file)?;
        if status == Status::Reviewed && item.answer.is_none() {
            anyhow::bail!("'{file}' has no draft to accept: draft it first");
        }
        item.status = status;
        self.save()
    }

    /// Images with each status, in the order of [`Status`].
    pub fn counts(&self) -> [usize; 4] {
        let mut c = [0; 4];
        for i in &self.state.items {
            c[i.status as usize] += 1;
        }
        c
    }

    /// The index of the next image after `from` (wrapping) whose status passes `filter`.
    pub fn next(&self, from: usize, filter: impl Fn(Status) -> bool) -> Option<usize> {
        let n = self.state.items.len();
        (1..=n)
            .map(|k| (from + k) % n)
            .find(|&i| filter(self.state.items[i].status))
    }

    /// One COCO file of the project's answers: reviewed images only, or every drafted or
    /// reviewed one (rejected images never).
    pub fn coco(&self, reviewed_only: bool) -> anyhow::Result<crate::export::coco::Coco> {
        let mut coco = crate::export::coco::Coco::default();
        for item in &self.state.items {
            let take = match item.status {
                Status::Reviewed => true,
                Status::Drafted => !reviewed_only,
                Status::NotRun | Status::Rejected => false,
            };
            if let (true, Some(answer)) = (take, &item.answer) {
                let d = answer
                    .to_decoded()
                    .map_err(|e| anyhow::anyhow!("'{}': {e}", item.file))?;
                let id = coco.add_image(&item.file, d.width, d.height);
                coco.add_decoded(id, &d);
            }
        }
        Ok(coco)
    }
}

impl Project {
    /// Writes the reviewed images as a training set in `out` (the dataset format of
    /// [`crate::data::dataset`]): each image, its answer as corrected drawn on it the way the
    /// model draws answers (a 0.5 blend on the masks, opaque discs), and the project's
    /// instruction. Images are kept at their size up to 1024 px on the long side. Returns the
    /// number of samples; `metadata.jsonl` is written last, atomically.
    pub fn training_set(&self, out: &Path) -> anyhow::Result<usize> {
        let instruction =
            self.state.instruction.clone().ok_or_else(|| {
                anyhow::anyhow!("the project has no instruction yet: draft it first")
            })?;
        let images = out.join("images");
        std::fs::create_dir_all(&images)
            .map_err(|e| anyhow::anyhow!("creating '{}': {e}", images.display()))?;
        let mut records = vec![];
        for (k, item) in self.state.items.iter().enumerate() {
            let (Status::Reviewed, Some(answer)) = (item.status, &item.answer) else {
                continue;
            };
            let source = crate::imageio::load_rgb(
                &self.dir.join(&item.file),
                crate::imageio::DEFAULT_MAX_PIXELS,
            )?;
            let d = answer
                .to_decoded()
                .map_err(|e| anyhow::anyhow!("'{}': {e}", item.file))?;
            let target = crate::fullres::redraw::draw(&source, &d);
            let (w, h) = source.dimensions();
            let shrink = |img: &image::RgbImage| {
                let long = w.max(h);
                if long <= 1024 {
                    img.clone()
                } else {
                    let f = 1024.0 / long as f64;
                    let size = |s: u32| ((s as f64 * f).round() as u32).max(1);
                    crate::imageio::resize_exact(img, size(w), size(h))
                }
            };
            let (a, b) = (
                format!("images/{k:06}_source.png"),
                format!("images/{k:06}_edited.png"),
            );
            crate::imageio::save(&shrink(&source), &out.join(&a), &[])?;
            crate::imageio::save(&shrink(&target), &out.join(&b), &[])?;
            records.push(crate::data::dataset::Record {
                input_image: a,
                edit_prompt: instruction.clone(),
                edited_image: b,
                task: None,
                seed: None,
            });
        }
        if records.is_empty() {
            anyhow::bail!("no reviewed image yet: accept some drafts first");
        }
        let mut jsonl = String::new();
        for r in &records {
            jsonl.push_str(&serde_json::to_string(r)?);
            jsonl.push('\n');
        }
        crate::imageio::write_atomic(&out.join("metadata.jsonl"), jsonl.as_bytes())?;
        Ok(records.len())
    }
}

/// Moves an unreadable state file aside, next to it, under a name that says so; returns it.
fn aside(path: &Path) -> anyhow::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".unreadable-{stamp}"));
    let to = path.with_file_name(name);
    std::fs::rename(path, &to).map_err(|e| {
        anyhow::anyhow!(
            "the state file '{}' is unreadable and could not be moved aside: {e}",
            path.display()
        )
    })?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(n: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..n {
            image::RgbImage::from_pixel(8 + i as u32, 6, image::Rgb([i as u8 * 40, 90, 200]))
                .save(dir.path().join(format!("img{i}.png")))
                .unwrap();
        }
        dir
    }

    fn answer(w: usize, h: usize) -> Decoded {
        let mut mask = vec![false; w * h];
        mask[w + 1] = true;
        mask[w + 2] = true;
        Decoded {
            kind: Kind::Segmentation,
            width: w,
            height: h,
            instances: vec![Instance {
                category: "dog".into(),
                phrase: "the dog".into(),
                color: [0, 0, 255],
                area: 2,
                bbox: [1.0, 1.0, 2.0, 1.0],
                mask,
                score: 0.9,
            }],
            keypoints: vec![],
            label: None,
        }
    }

    fn bytes(dir: &Path) -> Vec<Vec<u8>> {
        crate::imageio::list_images(dir)
            .unwrap()
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect()
    }

    #[test]
    fn work_survives_reopening_and_exports_what_was_reviewed() {
        let dir = folder(5);
        let before = bytes(dir.path());
        let (mut p, notices) = Project::open(dir.path()).unwrap();
        assert!(notices.is_empty());
        assert_eq!(p.counts(), [5, 0, 0, 0]);
        p.set_draft("img1.png", &answer(9, 6)).unwrap();
        p.set_draft("img3.png", &answer(11, 6)).unwrap();
        assert!(
            p.set_status("img0.png", Status::Reviewed).is_err(),
            "no draft yet"
        );
        p.set_status("img3.png", Status::Reviewed).unwrap();
        p.set_status("img4.png", Status::Rejected).unwrap();

        let (back, _) = Project::open(dir.path()).unwrap();
        assert_eq!(back.counts(), [2, 1, 1, 1]);
        assert_eq!(
            back.state.items[1]
                .answer
                .as_ref()
                .unwrap()
                .to_decoded()
                .unwrap(),
            answer(9, 6)
        );
        // Next by status: img1 is the only draft, so from it the next draft wraps round to
        // itself; the next image not run is img2.
        assert_eq!(back.next(1, |s| s == Status::Drafted), Some(1));
        assert_eq!(back.next(1, |s| s == Status::NotRun), Some(2));
        let reviewed = back.coco(true).unwrap();
        assert_eq!(reviewed.images.len(), 1);
        assert_eq!(reviewed.images[0].file_name, "img3.png");
        assert_eq!(back.coco(false).unwrap().images.len(), 2);
        assert_eq!(bytes(dir.path()), before, "the images were written");
    }

    /// Reviewed images become training samples: the image, the corrected answer drawn on it
    /// as the model draws answers, the instruction.
    #[test]
    fn reviewed_images_become_a_training_set() {
        let dir = folder(3);
        let (mut p, _) = Project::open(dir.path()).unwrap();
        assert!(
            p.training_set(&dir.path().join("set")).is_err(),
            "no instruction yet"
        );
        p.state.instruction = Some("Apply a blue semi-transparent mask to the dog.".into());
        p.set_draft("img0.png", &answer(8, 6)).unwrap();
        p.set_draft("img1.png", &answer(9, 6)).unwrap();
        p.set_status("img1.png", Status::Reviewed).unwrap();
        let out = dir.path().join("set");
        assert_eq!(p.training_set(&out).unwrap(), 1);
        let records = crate::data::dataset::read(&out).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0].edit_prompt,
            "Apply a blue semi-transparent mask to the dog."
        );
        let src = image::open(out.join(&records[0].input_image))
            .unwrap()
            .to_rgb8();
        let tgt = image::open(out.join(&records[0].edited_image))
            .unwrap()
            .to_rgb8();
        assert_eq!(
            src,
            image::open(dir.path().join("img1.png")).unwrap().to_rgb8()
        );
        for (i, (a, b)) in src.pixels().zip(tgt.pixels()).enumerate() {
            if i == 9 + 1 || i == 9 + 2 {
                let want = [0, 1, 2].map(|c| (0.5 * a[c] as f32 + 0.5 * [0., 0., 255.][c]) as u8);
                assert_eq!(b.0, want, "pixel {i} is in the mask");
            } else {
                assert_eq!(a, b, "pixel {i} is outside the mask");
            }
        }
    }

    #[test]
    fn an_unreadable_state_is_moved_aside_with_a_notice_and_new_images_join() {
        let dir = folder(2);
        std::fs::write(dir.path().join(STATE_FILE), b"{ not json").unwrap();
        let (p, notices) = Project::open(dir.path()).unwrap();
        assert_eq!(p.counts(), [2, 0, 0, 0]);
        let Some(Notice::UnreadableState { moved_to, .. }) = notices.first() else {
            panic!("{notices:?}")
        };
        assert_eq!(std::fs::read(moved_to).unwrap(), b"{ not json");
        p.save().unwrap();
        // An image removed from the folder keeps its work and is named; a new one joins.
        let (mut p, _) = Project::open(dir.path()).unwrap();
        p.set_draft("img0.png", &answer(8, 6)).unwrap();
        std::fs::remove_file(dir.path().join("img0.png")).unwrap();
        image::RgbImage::new(4, 4)
            .save(dir.path().join("new.png"))
            .unwrap();
        let (p, notices) = Project::open(dir.path()).unwrap();
        assert_eq!(notices, vec![Notice::Missing(vec!["img0.png".into()])]);
        let files: Vec<&str> = p.state.items.iter().map(|i| i.file.as_str()).collect();
        assert_eq!(files, ["img0.png", "img1.png", "new.png"]);
        assert_eq!(p.state.items[0].status, Status::Drafted);
    }

    #[test]
    fn background_saves_keep_the_last_state_and_report_a_failed_write() {
        let dir = folder(3);
        let (mut p, _) = Project::open(dir.path()).unwrap();
        p.write_in_background();
        for i in 0..50 {
            p.set_draft(&format!("img{}.png", i % 3), &answer(8 + i % 2, 6))
                .unwrap();
        }
        p.set_status("img2.png", Status::Rejected).unwrap();
        let last = p.state.clone();
        drop(p);
        let (p, notices) = Project::open(dir.path()).unwrap();
        assert!(notices.is_empty(), "{notices:?}");
        assert_eq!(
            p.state, last,
            "dropping the project finishes the last write"
        );

        // A state file whose folder is gone: the failure comes back at the next save or
        // flush, and the writer goes on once the folder is back.
        let elsewhere = tempfile::tempdir().unwrap();
        let gone = elsewhere.path().join("sub");
        std::fs::create_dir(&gone).unwrap();
        let (mut p, _) = Project::open_at(dir.path(), &gone.join("state.json")).unwrap();
        p.write_in_background();
        std::fs::remove_dir(&gone).unwrap();
        p.set_status("img0.png", Status::Rejected).unwrap();
        let err = p.flush().unwrap_err().to_string();
        assert!(err.contains("could not be saved"), "{err}");
        std::fs::create_dir(&gone).unwrap();
        p.set_status("img1.png", Status::Rejected).unwrap();
        p.flush().unwrap();
        let (q, _) = Project::open_at(dir.path(), &gone.join("state.json")).unwrap();
        assert_eq!(q.state, p.state);
    }
}
