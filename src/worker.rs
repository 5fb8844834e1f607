//! The worker: one thread owns the loaded model and runs jobs sent over a channel; the UI
//! thread never touches tensors and never blocks on it. Every sampler step sends progress and
//! a cheap preview (pixels, not tensors); cancelling takes effect at the next step; a failed
//! or panicking job becomes an error event and the worker keeps serving.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{unbounded, Receiver, Sender};
use image::RgbImage;

use crate::decode::{self, parse, Decoded};
use crate::model::load::{self, LoadOptions, Model, ModelSource};
use crate::sample::pipeline::{self, EditOutcome, EditPlan, EditRequest};
use crate::sample::preview;

/// Work for the worker.
pub enum Command {
    /// Load a model ("builtin", a folder, a file or a hub id) onto a device ("cpu", "cuda",
    /// "metal"); replaces (and frees) the old one.
    Load { spec: String, device: String },
    /// Edit `image` as `request` says; `job` names the events it produces.
    Edit {
        job: u64,
        image: RgbImage,
        request: EditRequest,
        /// Where the edit may change the image (row-major, the image's size); outside it the
        /// result keeps the input's pixels exactly. `None`: everywhere.
        region: Option<Vec<bool>>,
    },
}

/// What the worker reports.
#[derive(Debug, Clone)]
pub enum Event {
    Loading {
        spec: String,
    },
    /// Download progress of a hub model (bytes of the current file).
    Download {
        file: String,
        done: u64,
        total: u64,
    },
    Loaded {
        spec: String,
        source: String,
        notes: Vec<String>,
    },
    LoadFailed {
        spec: String,
        message: String,
    },
    /// The request was checked against the model: these are the settings that run.
    Started {
        job: u64,
        plan: EditPlan,
    },
    Step {
        job: u64,
        step: usize,
        total: usize,
        elapsed_s: f64,
        /// The predicted clean image, small (latent resolution), RGBA.
        preview: Option<preview::Preview>,
    },
    Done {
        job: u64,
        image: RgbImage,
        plan: EditPlan,
        seconds: f64,
        /// Masks, keypoints or a label when the instruction asked for them (else `None`).
        decoded: Option<Box<Decoded>>,
    },
    Cancelled {
        job: u64,
    },
    Failed {
        job: u64,
        message: String,
    },
}

/// The handle the UI keeps.
pub struct Worker {
    tx: Option<Sender<Command>>,
    rx: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the worker thread; `notify` is called after every event (the UI passes
    /// `ctx.request_repaint`).
    pub fn spawn(notify: impl Fn() + Send + Sync + 'static) -> Self {
        let (tx, cmd_rx) = unbounded::<Command>();
        let (ev_tx, rx) = unbounded::<Event>();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let handle = std::thread::Builder::new()
            .name("instructdiffusion-worker".into())
            .spawn(move || {
                let send = |e: Event| {
                    let _ = ev_tx.send(e);
                    notify();
                };
                let mut model: Option<Model> = None;
                for cmd in cmd_rx {
                    let r = catch_unwind(AssertUnwindSafe(|| run(cmd, &mut model, &flag, &send)));
                    if let Err(panic) = r {
                        let message = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "unknown panic".into());
                        send(Event::Failed {
                            job: u64::MAX,
                            message: format!(
                                "the worker hit an internal error and recovered: {message}"
                            ),
                        });
                    }
                }
            })
            .expect("spawning the worker thread");
        Self {
            tx: Some(tx),
            rx,
            cancel,
            handle: Some(handle),
        }
    }

    pub fn send(&self, cmd: Command) {
        if matches!(cmd, Command::Edit { .. }) {
            self.cancel.store(false, Ordering::SeqCst);
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(cmd);
        }
    }

    /// Stops the running edit at its next step.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Every event that has arrived, oldest first.
    pub fn poll(&self) -> Vec<Event> {
        self.rx.try_iter().collect()
    }

    /// Waits up to `timeout` for the next event (tests and scripts).
    pub fn wait(&self, timeout: std::time::Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout).ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.cancel();
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(
    cmd: Command,
    model: &mut Option<Model>,
    cancel: &AtomicBool,
    send: &(dyn Fn(Event) + Sync),
) {
    match cmd {
        Command::Load { spec, device } => {
            send(Event::Loading { spec: spec.clone() });
            *model = None; // free the old weights before reading the new ones
            let mut progress = |file: &str, done: u64, total: u64| {
                send(Event::Download {
                    file: file.to_string(),
                    done,
                    total,
                })
            };
            let result = (|| {
                let device = crate::support::parse_device(&device).map_err(|e| format!("{e:#}"))?;
                let source = ModelSource::parse(&spec).map_err(|e| e.to_string())?;
                let opts = LoadOptions {
                    device,
                    progress: Some(&mut progress),
                    ..Default::default()
                };
                load::load(&source, opts).map_err(|e| e.to_string())
            })();
            match result {
                Ok(m) => {
                    send(Event::Loaded {
                        spec,
                        source: m.source.clone(),
                        notes: m.notes.clone(),
                    });
                    *model = Some(m);
                }
                Err(message) => send(Event::LoadFailed { spec, message }),
            }
        }
        Command::Edit {
            job,
            image,
            request,
            region,
        } => {
            let Some(m) = model.as_ref() else {
                send(Event::Failed {
                    job,
                    message: "no model is loaded: choose one in the settings panel".into(),
                });
                return;
            };
            let plan = match request.validate(m) {
                Ok(p) => p,
                Err(e) => {
                    send(Event::Failed {
                        job,
                        message: e.to_string(),
                    });
                    return;
                }
            };
            send(Event::Started {
                job,
                plan: plan.clone(),
            });
            let t0 = Instant::now();
            let mut on_step = |e: &pipeline::StepEvent| {
                send(Event::Step {
                    job,
                    step: e.step,
                    total: e.total,
                    elapsed_s: e.elapsed.as_secs_f64(),
                    preview: preview::latent_to_rgba(e.denoised, m.defaults.latent_rgb.as_deref())
                        .ok(),
                });
                if cancel.load(Ordering::SeqCst) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            };
            match pipeline::edit(m, &image, &plan, None, &mut on_step) {
                Ok(EditOutcome::Done(mut edited)) => {
                    if let Some(region) = &region {
                        keep_outside(&mut edited.image, &image, region);
                    }
                    // Decoding is part of the job: the UI thread never does pixel work.
                    let decoded = parse::parse(&plan.prompt)
                        .ok()
                        .filter(|p| p.kind != parse::Kind::Edit)
                        .and_then(|p| decode::decode(&image, &edited.image, &p).ok())
                        .map(Box::new);
                    send(Event::Done {
                        job,
                        image: edited.image,
                        plan,
                        seconds: t0.elapsed().as_secs_f64(),
                        decoded,
                    })
                }
                Ok(EditOutcome::Cancelled { .. }) => send(Event::Cancelled { job }),
                Err(e) => send(Event::Failed {
                    job,
                    message: crate::support::error_chain(&e),
                }),
            }
        }
    }
}

/// Restores `source`'s pixels wherever `region` is unset (sizes must match; otherwise the
/// result is left as it is).
pub fn keep_outside(result: &mut RgbImage, source: &RgbImage, region: &[bool]) {
    if result.dimensions() != source.dimensions()
        || region.len() != (source.width() * source.height()) as usize
    {
        return;
    }
    for ((r, s), inside) in result.pixels_mut().zip(source.pixels()).zip(region) {
        if !inside {
            *r = *s;
        }
    }
}
