//! The worker: one thread owns the loaded model and runs jobs sent over a channel; the UI
//! thread never touches tensors and never blocks on it. Every sampler step sends progress and
//! a cheap preview (pixels, not tensors); cancelling takes effect at the next step; a failed
//! or panicking job becomes an error event and the worker keeps serving.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{unbounded, Receiver, Sender};
use image::RgbImage;

use crate::decode::Decoded;
use crate::fullres;
use crate::model::load::{self, LoadOptions, Model, ModelSource};
use crate::sample::pipeline::{self, EditOutcome, EditPlan, EditRequest};
use crate::sample::preview;

/// Work for the worker.
pub enum Command {
    /// Load a model ("builtin", a folder, a file or a hub id) onto a device ("cpu", "cuda",
    /// "metal"); replaces (and frees) the old one.
    Load {
        spec: String,
        device: String,
        /// The weights' precision: "auto", "f32", "f16" or "bf16".
        precision: String,
    },
    /// Edit `image` as `request` says; `job` names the events it produces.
    Edit {
        job: u64,
        image: RgbImage,
        request: EditRequest,
        /// Where the edit may change the image (row-major, the image's size); outside it the
        /// result keeps the input's pixels exactly. `None`: everywhere.
        region: Option<Vec<bool>>,
    },
    /// Draft annotations of `files` with `request`'s instruction, one after another: a
    /// [`Event::Drafted`] per image (the steps of each as [`Event::Step`]), then
    /// [`Event::DraftsDone`]; cancelling stops within a step.
    Draft {
        job: u64,
        files: Vec<PathBuf>,
        request: EditRequest,
    },
    /// Fine-tune a model (the UI's training panel); events come as [`Event::Train`], then
    /// [`Event::TrainFinished`] or [`Event::TrainFailed`]. Edits sent meanwhile wait.
    Train(TrainJob),
}

/// A fine-tune as the training panel describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainJob {
    /// The model to fine-tune: "builtin" or a diffusers folder.
    pub base: String,
    /// A dataset folder (`metadata.jsonl`); `None`: the procedural generator.
    pub data: Option<PathBuf>,
    /// The run folder (checkpoint, pool, samples, and the trained `model/`); running a job
    /// on a folder that holds a checkpoint resumes it.
    pub out: PathBuf,
    pub steps: usize,
    pub lr: f64,
    pub batch: usize,
    /// Generated samples to train on when `data` is `None`.
    pub pool: usize,
    /// LoRA rank (0: full fine-tune of the UNet and text encoder).
    pub lora_rank: usize,
    /// Side of the training images; `None`: the base model's resolution
    /// (`instructdiffusion.json`, else 512).
    pub size: Option<u32>,
}

impl TrainJob {
    /// The base model's folder (fine-tuning reads its files directly).
    pub fn base_dir(&self) -> Result<PathBuf, String> {
        match ModelSource::parse(&self.base).map_err(|e| e.to_string())? {
            ModelSource::Builtin => Ok(load::builtin_dir()),
            ModelSource::Diffusers(dir) => Ok(dir),
            other => Err(format!(
                "fine-tuning needs a diffusers folder; '{}' is {}: convert it first",
                self.base,
                other.describe()
            )),
        }
    }

    /// The trainer's plan for this job: the base's resolution, a checkpoint (with two sample
    /// edits) at least every 250 steps.
    pub fn plan(&self) -> Result<crate::train::edit::EditPlan, String> {
        let dir = self.base_dir()?;
        let mut plan = crate::train::edit::default_plan(self.out.clone(), dir.join("vae"));
        let defaults: Option<crate::settings::SamplingDefaults> =
            std::fs::read_to_string(dir.join(crate::settings::DEFAULTS_FILE))
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok());
        plan.size = self
            .size
            .unwrap_or_else(|| defaults.map_or(512, |d| d.resolution as u32));
        let sched = crate::train::edit::base_scheduler(&dir);
        plan.prediction = sched.prediction_type;
        plan.zero_terminal_snr = sched.rescale_betas_zero_snr;
        plan.base = Some(dir);
        plan.data = self.data.clone();
        plan.lora_rank = self.lora_rank;
        plan.steps = self.steps.max(1);
        plan.optim.lr = self.lr;
        plan.optim.warmup_steps = plan.optim.warmup_steps.min(plan.steps / 10);
        plan.batch = self.batch.max(1);
        plan.pool = self.pool;
        plan.checkpoint_every = (plan.steps / 4).clamp(1, 250);
        plan.sample_edits = 2;
        Ok(plan)
    }
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
        /// What the model's files recommend (steps, guidance per task family, ...).
        defaults: crate::settings::SamplingDefaults,
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
        /// When the worker sent it (the UI measures how long previews wait).
        sent: Instant,
        /// Tiled runs: tiles done in this step, of how many.
        tile: Option<(usize, usize)>,
    },
    Done {
        job: u64,
        image: RgbImage,
        plan: EditPlan,
        seconds: f64,
        /// Masks, keypoints or a label when the instruction asked for them (else `None`).
        decoded: Option<Box<Decoded>>,
        /// The model's own pixels at its size (none for tiled runs).
        model_image: Option<RgbImage>,
        /// How the result was brought to the photo's resolution.
        applied: crate::fullres::Applied,
    },
    Cancelled {
        job: u64,
    },
    /// One image of a [`Command::Draft`] job: its answer at its own size, or why not.
    Drafted {
        job: u64,
        file: PathBuf,
        result: Result<Box<Decoded>, String>,
        /// Images done of the job's total.
        done: usize,
        total: usize,
        elapsed_s: f64,
    },
    DraftsDone {
        job: u64,
    },
    Failed {
        job: u64,
        message: String,
    },
    /// Progress of a training job.
    Train(crate::train::TrainEvent),
    /// The training job ended (finished, or stopped on request); its model folder loads.
    TrainFinished {
        model: PathBuf,
        stopped: bool,
    },
    TrainFailed {
        message: String,
    },
}

/// The handle the UI keeps.
pub struct Worker {
    tx: Option<Sender<Command>>,
    rx: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    stop_training: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the worker thread; `notify` is called after every event (the UI passes
    /// `ctx.request_repaint`).
    pub fn spawn(notify: impl Fn() + Send + Sync + 'static) -> Self {
        let (tx, cmd_rx) = unbounded::<Command>();
        let (ev_tx, rx) = unbounded::<Event>();
        let cancel = Arc::new(AtomicBool::new(false));
        let stop_training = Arc::new(AtomicBool::new(false));
        let flags = Flags {
            cancel: cancel.clone(),
            stop_training: stop_training.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("instructdiffusion-worker".into())
            .spawn(move || {
                crate::support::in_compute_pool(move || {
                    let send = |e: Event| {
                        let _ = ev_tx.send(e);
                        notify();
                    };
                    let mut model: Option<Model> = None;
                    for cmd in cmd_rx {
                        let r =
                            catch_unwind(AssertUnwindSafe(|| run(cmd, &mut model, &flags, &send)));
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
            })
            .expect("spawning the worker thread");
        Self {
            tx: Some(tx),
            rx,
            cancel,
            stop_training,
            handle: Some(handle),
        }
    }

    pub fn send(&self, cmd: Command) {
        match cmd {
            Command::Edit { .. } | Command::Draft { .. } => {
                self.cancel.store(false, Ordering::SeqCst)
            }
            Command::Train(_) => self.stop_training.store(false, Ordering::SeqCst),
            Command::Load { .. } => {}
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(cmd);
        }
    }

    /// Stops the running edit at its next step.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Stops the running training job after its current step, with a checkpoint.
    pub fn stop_training(&self) {
        self.stop_training.store(true, Ordering::SeqCst);
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
        self.stop_training();
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The flags the UI sets while a job runs.
struct Flags {
    cancel: Arc<AtomicBool>,
    stop_training: Arc<AtomicBool>,
}

fn run(cmd: Command, model: &mut Option<Model>, flags: &Flags, send: &(dyn Fn(Event) + Sync)) {
    let cancel = &*flags.cancel;
    match cmd {
        Command::Train(job) => train(&job, &flags.stop_training, send),
        Command::Draft {
            job,
            files,
            request,
        } => draft(job, &files, &request, model.as_ref(), cancel, send),
        Command::Load {
            spec,
            device,
            precision,
        } => {
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
                let dtype = crate::support::parse_dtype(&precision, &device)
                    .map_err(|e| format!("{e:#}"))?;
                let source = ModelSource::parse(&spec).map_err(|e| e.to_string())?;
                let opts = LoadOptions {
                    device,
                    dtype,
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
                        defaults: m.defaults.clone(),
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
            let Some((m, plan)) = start(job, &request, model.as_ref(), send) else {
                return;
            };
            let t0 = Instant::now();
            let mut on_step = |e: &pipeline::StepEvent| {
                send(Event::Step {
                    job,
                    step: e.step,
                    total: e.total,
                    elapsed_s: e.elapsed.as_secs_f64(),
                    preview: e.denoised.and_then(|d| {
                        preview::latent_to_rgba(d, m.defaults.latent_rgb.as_deref()).ok()
                    }),
                    tile: e.tile,
                    sent: Instant::now(),
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
                        fullres::keep_outside(&mut edited.image, &image, region);
                    }
                    // Decoding is part of the job (the pipeline reads every instruction that
                    // is not an edit): the UI thread never does pixel work.
                    let decoded = edited
                        .answer
                        .and_then(|a| a.ok())
                        .map(|r| Box::new(r.decoded));
                    send(Event::Done {
                        job,
                        image: edited.image,
                        plan,
                        seconds: t0.elapsed().as_secs_f64(),
                        decoded,
                        model_image: edited.model_image,
                        applied: edited.applied,
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

/// The model and the checked plan of a job, [`Event::Started`] sent; `None` (a
/// [`Event::Failed`] sent) when no model is loaded or the request is refused.
fn start<'m>(
    job: u64,
    request: &EditRequest,
    model: Option<&'m Model>,
    send: &(dyn Fn(Event) + Sync),
) -> Option<(&'m Model, EditPlan)> {
    let fail = |message: String| send(Event::Failed { job, message });
    let Some(m) = model else {
        fail("no model is loaded: choose one in the settings panel".into());
        return None;
    };
    match request.validate(m) {
        Ok(plan) => {
            send(Event::Started {
                job,
                plan: plan.clone(),
            });
            Some((m, plan))
        }
        Err(e) => {
            fail(e.to_string());
            None
        }
    }
}

/// Drafts `files` one by one (see [`Command::Draft`]).
fn draft(
    job: u64,
    files: &[PathBuf],
    request: &EditRequest,
    model: Option<&Model>,
    cancel: &AtomicBool,
    send: &(dyn Fn(Event) + Sync),
) {
    let Some((m, plan)) = start(job, request, model, send) else {
        return;
    };
    let t0 = Instant::now();
    for (k, file) in files.iter().enumerate() {
        let mut on_step = |e: &pipeline::StepEvent| {
            if e.tile.is_none() {
                send(Event::Step {
                    job,
                    step: e.step,
                    total: e.total,
                    elapsed_s: e.elapsed.as_secs_f64(),
                    preview: None,
                    sent: Instant::now(),
                    tile: None,
                });
            }
            if cancel.load(Ordering::SeqCst) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let drafted = crate::annotate::draft_one(
            m,
            &plan,
            file,
            crate::imageio::DEFAULT_MAX_PIXELS,
            &mut on_step,
        );
        let result = match drafted {
            Ok(Some(d)) => Ok(Box::new(d)),
            Ok(None) => return send(Event::Cancelled { job }),
            Err(e) => Err(crate::support::error_chain(&e)),
        };
        send(Event::Drafted {
            job,
            file: file.clone(),
            result,
            done: k + 1,
            total: files.len(),
            elapsed_s: t0.elapsed().as_secs_f64(),
        });
        if cancel.load(Ordering::SeqCst) {
            return send(Event::Cancelled { job });
        }
    }
    send(Event::DraftsDone { job });
}

/// Runs a training job on the CPU, forwarding its events.
fn train(job: &TrainJob, stop: &AtomicBool, send: &(dyn Fn(Event) + Sync)) {
    let result = (|| -> Result<(), String> {
        let plan = job.plan()?;
        let base = plan.base.clone().expect("a job always has a base");
        let (unet, clip) = crate::train::edit::base_configs(&base).map_err(|e| format!("{e:#}"))?;
        let mut stopped = false;
        crate::train::edit::train(
            &plan,
            &unet,
            &clip,
            &candle_core::Device::Cpu,
            stop,
            &mut |e| {
                stopped |= matches!(e, crate::train::TrainEvent::Stopped { .. });
                send(Event::Train(e.clone()))
            },
        )
        .map_err(|e| e.to_string())?;
        send(Event::TrainFinished {
            model: plan.out.join("model"),
            stopped,
        });
        Ok(())
    })();
    if let Err(message) = result {
        send(Event::TrainFailed { message });
    }
}
