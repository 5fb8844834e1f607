//! The worker's events taken in once a frame: loads, progress and previews, results, drafts,
//! training, failures.

use eframe::egui;
use eframe::egui::{ColorImage, TextureOptions};

use super::state::{Activity, Entry};
use super::training::TrainState;
use crate::worker::Event;

use super::{DialogResult, EditorApp, Notice};

impl EditorApp {
    /// Applies what the worker reported.
    pub fn handle_events(&mut self, ctx: &egui::Context) {
        for event in self.worker.poll() {
            match event {
                Event::Loading { spec } => {
                    self.activity = Activity::Loading { spec, file: None };
                }
                Event::Download { file, done, total } => {
                    if let Activity::Loading { file: f, .. } = &mut self.activity {
                        *f = Some((file, done, total));
                    }
                }
                Event::Loaded {
                    spec,
                    source,
                    notes,
                    defaults,
                } => {
                    self.model_defaults = Some(defaults);
                    self.activity = Activity::Idle;
                    self.settings.remember_model(spec);
                    self.notice = Some(Notice {
                        text: format!(
                            "model ready: {source}{}",
                            if notes.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", notes.join("; "))
                            }
                        ),
                        error: false,
                    });
                    self.model = Some(source);
                }
                Event::LoadFailed { message, .. } => {
                    self.activity = Activity::Idle;
                    self.model = None;
                    self.model_defaults = None;
                    self.error(format!("{message}. Choose a model in the settings panel (a diffusers folder, a .ckpt/.safetensors file or a hub id)."));
                }
                Event::Started { .. } => {}
                Event::Step {
                    job,
                    step,
                    total,
                    elapsed_s,
                    preview,
                    sent,
                    tile,
                } => {
                    if preview.is_some() {
                        if self.preview_waits_ms.len() == 256 {
                            self.preview_waits_ms.remove(0);
                        }
                        self.preview_waits_ms
                            .push(sent.elapsed().as_secs_f64() * 1e3);
                    }
                    if let Activity::Editing {
                        job: j,
                        step: s,
                        total: t,
                        elapsed_s: e,
                        previews,
                        tile: tl,
                        ..
                    } = &mut self.activity
                    {
                        if *j == job {
                            (*s, *t, *e, *tl) = (step, total, elapsed_s, tile);
                            if let Some(p) = preview {
                                *previews += 1;
                                self.previews_received += 1;
                                let img = ColorImage::from_rgba_unmultiplied(
                                    [p.width, p.height],
                                    &p.rgba,
                                );
                                match &mut self.preview {
                                    Some(tex) => tex.set(img, TextureOptions::LINEAR),
                                    None => {
                                        self.preview = Some(ctx.load_texture(
                                            "preview",
                                            img,
                                            TextureOptions::LINEAR,
                                        ))
                                    }
                                }
                            }
                        }
                    }
                }
                Event::Done {
                    image,
                    plan,
                    seconds,
                    decoded,
                    model_image,
                    applied,
                    ..
                } => {
                    self.activity = Activity::Idle;
                    self.notice = Some(Notice {
                        text: format!(
                            "done in {seconds:.1} s (seed {}, {} steps)",
                            plan.seed, plan.steps
                        ),
                        error: false,
                    });
                    let finished_at = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    if let Some(d) = &decoded {
                        let n = d.instances.len() + d.keypoints.len();
                        let label = d
                            .label
                            .as_ref()
                            .map(|(l, _)| format!(", label: {l}"))
                            .unwrap_or_default();
                        if let Some(notice) = &mut self.notice {
                            notice
                                .text
                                .push_str(&format!("; decoded {n} overlay(s){label}"));
                        }
                    }
                    let entry = Entry {
                        image: std::sync::Arc::new(image),
                        decoded,
                        plan,
                        seconds,
                        finished_at,
                        model_image: model_image.map(std::sync::Arc::new),
                        applied: Some(applied),
                        show_model: false,
                    };
                    if self.collecting {
                        self.variants.push(entry);
                        match self.queue.pop() {
                            Some((img, req)) => self.start_job(img, req),
                            None => self.collecting = false,
                        }
                    } else {
                        self.session.push(entry);
                        self.persist_session();
                        self.canvas = None;
                        self.overlay = None;
                    }
                }
                Event::Drafted {
                    file,
                    result,
                    done,
                    total,
                    elapsed_s,
                    ..
                } => self.on_drafted(&file, result, done, total, elapsed_s),
                Event::DraftsDone { .. } => self.on_drafts_done(),
                Event::Cancelled { .. } => {
                    self.activity = Activity::Idle;
                    self.queue.clear();
                    self.collecting = false;
                    self.notice = Some(Notice {
                        text: "cancelled".into(),
                        error: false,
                    });
                }
                Event::Failed { message, .. } => {
                    if matches!(self.activity, Activity::Editing { .. }) {
                        self.activity = Activity::Idle;
                    }
                    self.queue.clear();
                    self.collecting = false;
                    self.error(message);
                }
                Event::Train(e) => self.training.apply(&e),
                Event::TrainFinished { model, stopped } => {
                    self.settings.remember_model(model.display().to_string());
                    self.notice = Some(Notice {
                        text: format!(
                            "training {}: the model is in '{}'",
                            if stopped { "stopped" } else { "finished" },
                            model.display()
                        ),
                        error: false,
                    });
                    self.training.state = TrainState::Finished { model, stopped };
                }
                Event::TrainFailed { message } => {
                    self.training.state = TrainState::Failed(message.clone());
                    self.error(format!("training failed: {message}"));
                }
            }
        }
        while let Ok(r) = self.dialogs.1.try_recv() {
            match r {
                DialogResult::Open(p) => self.open_path(&p),
                DialogResult::Save(p) => self.save_to(&p),
                DialogResult::Export(kind, p) => self.export_to(kind, &p),
                DialogResult::TrainData(p) => self.training.data = Some(p),
                DialogResult::ProjectExport(p, reviewed_only) => {
                    self.export_project(&p, reviewed_only)
                }
                DialogResult::ProjectTrainingSet(p) => self.project_training_set(&p),
            }
        }
    }
}
