//! `instructdiffusion eval`: a model's per-task scores on held-out procedural samples (seeds the
//! trainer never draws), masks and keypoints read back with [`crate::decode`].
//!
//! Metrics (documented in docs/training.md, *Evaluation*):
//! - segmentation: cIoU (total intersection / total union over the set) and mIoU (mean of the
//!   per-sample IoU; a sample whose truth and answer are both empty scores 1);
//! - keypoints: PCK@0.05 and PCK@0.1, the share of asked keypoints found within that fraction of
//!   the person's height of the truth (a missing disc counts as a miss);
//! - enhancement: PSNR of the answer against the clean target, and its gain over the input's;
//! - remove / recolour / add / replace: success rate. A sample succeeds when, on the pixels the
//!   target changes (any channel by more than 30 levels), the answer is closer to the target than
//!   to the source, and elsewhere it keeps the source (mean difference under 12 levels).

use std::ops::ControlFlow;

use anyhow::bail;
use image::RgbImage;
use serde::Serialize;

use crate::data::sample::{generate, Sample, TaskWeights};
use crate::decode;
use crate::model::load::Model;
use crate::sample::pipeline::{self, EditOutcome, EditRequest};
use crate::settings::SamplingDefaults;
use crate::tasks::Task;
use crate::train::HELD_OUT_FIRST_SEED;

mod tables;

pub use tables::{best_guidance, grid_table, headline, table, wilson_interval};

/// Where eval seeds start: past the trainer's held-out preview seeds.
pub const EVAL_FIRST_SEED: u64 = HELD_OUT_FIRST_SEED + (1 << 32);

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalPlan {
    pub per_task: usize,
    pub size: u32,
    pub tasks: Vec<Task>,
    /// Steps, guidance, sampler, seed: as for an edit (the prompt is each sample's).
    pub request: EditRequest,
    /// Ask with the held-out phrasings ([`Task::paraphrases`]) instead of the training
    /// templates: same scenes and targets, other words.
    pub paraphrased: bool,
    /// Each family with the model's guidance for it ([`SamplingDefaults::guidance_for`]: its
    /// measured table, else the official recipe) instead of the request's.
    pub task_guidance: bool,
    /// Score samples the trainer drew instead of held-out ones: those among the first N of a
    /// `train edit --pool N` pool (the trainer's default seed) of each family. A score well
    /// above the held-out one means the network memorises; the same score means it cannot fit
    /// even what it saw.
    pub trained_on: Option<usize>,
}

impl EvalPlan {
    /// The edit request for samples of `task` on a model with these defaults.
    pub fn request_for(&self, task: Task, defaults: &SamplingDefaults) -> EditRequest {
        let mut r = self.request.clone();
        if self.task_guidance {
            let (t, i) = defaults.guidance_for(task);
            (r.text_cfg, r.image_cfg) = (Some(t), Some(i));
        }
        r
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub task: String,
    pub samples: usize,
    pub metrics: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    /// Asked with held-out phrasings.
    pub paraphrased: bool,
    /// Each family with its official guidance recipe.
    pub task_guidance: bool,
    /// Scored on samples of a training pool this size ([`EvalPlan::trained_on`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trained_on: Option<usize>,
    pub size: u32,
    pub steps: Option<usize>,
    /// The guidance rescale the edits ran at, asked for or the model's default (none: off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance_rescale: Option<f64>,
    pub rows: Vec<Row>,
    pub seconds: f64,
}

/// The samples `plan` evaluates, for `task` (deterministic).
pub fn samples(plan: &EvalPlan, task: Task) -> Vec<Sample> {
    let k = Task::ALL.iter().position(|t| *t == task).unwrap_or(0) as u64;
    let weights = TaskWeights(vec![(task, 1.0)]);
    let make = || match plan.trained_on {
        // The pool's seeds, drawn with the recipe's task weights: keep this family's.
        Some(n) => crate::train::pool::generator_seeds(crate::train::edit::DEFAULT_SEED, n)
            .map(|seed| generate(seed, plan.size, &TaskWeights::default()))
            .filter(|s| s.task == task)
            .take(plan.per_task)
            .collect(),
        None => (0..plan.per_task as u64)
            .map(|i| generate(EVAL_FIRST_SEED + k * 1_000_000 + i, plan.size, &weights))
            .collect(),
    };
    if plan.paraphrased {
        crate::tasks::with_paraphrases(make)
    } else {
        make()
    }
}

/// One sample's answer and its own score, as [`run`] reports each.
pub struct Scored<'a> {
    pub task: Task,
    /// Position among the family's samples, from 1.
    pub index: usize,
    pub sample: &'a Sample,
    pub answer: &'a RgbImage,
    /// The family's measure for this sample alone ([`sample_measure`]).
    pub value: f64,
}

/// What [`Scored::value`] measures for `task`: the IoU of the decoded mask (segmentation), the
/// share of the asked keypoints found within 0.1 of the person's height, 1 or 0 (edits), the
/// PSNR gain in dB (enhancement).
pub fn sample_measure(task: Task) -> &'static str {
    match task {
        // The table pools segmentation over the set (cIoU); one sample has its own IoU.
        Task::ReferringSegmentation | Task::SemanticSegmentation => "IoU",
        _ => headline(task),
    }
}

/// Scores `answer(sample)` over the plan's samples, calling `on_sample` after each. `answer` is
/// the model's edit (or, for a check of the metrics themselves, the target).
pub fn run(
    plan: &EvalPlan,
    model_name: &str,
    mut answer: impl FnMut(&Sample) -> anyhow::Result<RgbImage>,
    mut on_sample: impl FnMut(&Scored) -> anyhow::Result<()>,
) -> anyhow::Result<Report> {
    let t0 = std::time::Instant::now();
    let mut rows = vec![];
    for &task in &plan.tasks {
        let mut acc = Acc::default();
        let samples = samples(plan, task);
        if let (Some(n), true) = (plan.trained_on, samples.is_empty()) {
            anyhow::bail!(
                "the first {n} samples of the trainer's pool hold no {} sample: pass a larger \
                 --trained-on (the pool's size, e.g. 16384 for the built-in recipe's)",
                task.name()
            );
        }
        for (i, s) in samples.iter().enumerate() {
            let pred = answer(s)?;
            let value = score(task, s, &pred, &mut acc);
            on_sample(&Scored {
                task,
                index: i + 1,
                sample: s,
                answer: &pred,
                value,
            })?;
        }
        rows.push(acc.row(task));
    }
    Ok(Report {
        model: model_name.to_string(),
        paraphrased: plan.paraphrased,
        task_guidance: plan.task_guidance,
        trained_on: plan.trained_on,
        size: plan.size,
        steps: plan.request.steps,
        guidance_rescale: plan.request.guidance_rescale,
        rows,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The model's answer to a sample.
pub fn edit_answer(model: &Model, request: &EditRequest, s: &Sample) -> anyhow::Result<RgbImage> {
    let req = EditRequest {
        prompt: s.instruction.clone(),
        resolution: request
            .resolution
            .or(Some(s.input.width().max(s.input.height()) as usize)),
        // The model's own answer is what is measured.
        full_res: crate::fullres::FullRes::Off,
        ..request.clone()
    };
    let plan = req.validate(model)?;
    match pipeline::edit(model, &s.input, &plan, None, &mut |_| {
        ControlFlow::Continue(())
    })? {
        EditOutcome::Done(e) => Ok(e.image),
        EditOutcome::Cancelled { .. } => bail!("cancelled"),
    }
}

/// The target through the model's autoencoder alone (encode, decode): what a perfect UNet
/// could at best answer, so the ceiling the VAE sets on every metric.
pub fn autoencoder_answer(model: &Model, s: &Sample) -> anyhow::Result<RgbImage> {
    let x = pipeline::image_to_tensor(&s.target, &model.device, model.dtype)?;
    let latent = (model.vae.encode_mean(&x)? * model.vae.config.scaling_factor)?;
    Ok(pipeline::decode(model, &latent)?)
}

#[derive(Default)]
struct Acc {
    n: usize,
    inter: u64,
    union: u64,
    iou_sum: f64,
    kp_total: usize,
    pck05: usize,
    pck10: usize,
    psnr_sum: f64,
    gain_sum: f64,
    successes: usize,
}

impl Acc {
    fn row(&self, task: Task) -> Row {
        let n = self.n.max(1) as f64;
        let metrics = match task {
            Task::ReferringSegmentation | Task::SemanticSegmentation => vec![
                ("cIoU".into(), self.inter as f64 / self.union.max(1) as f64),
                ("mIoU".into(), self.iou_sum / n),
            ],
            Task::Keypoints => {
                let k = self.kp_total.max(1) as f64;
                vec![
                    ("PCK@0.05".into(), self.pck05 as f64 / k),
                    ("PCK@0.1".into(), self.pck10 as f64 / k),
                ]
            }
            Task::Denoise | Task::Deblur | Task::Watermark => vec![
                ("PSNR dB".into(), self.psnr_sum / n),
                ("gain dB".into(), self.gain_sum / n),
            ],
            Task::Remove | Task::Recolor | Task::Add | Task::Replace => {
                vec![("success".into(), self.successes as f64 / n)]
            }
        };
        Row {
            task: task.name().into(),
            samples: self.n,
            metrics,
        }
    }
}

fn union_mask(d: &Option<decode::Decoded>, len: usize) -> Vec<bool> {
    let mut m = vec![false; len];
    if let Some(d) = d {
        for inst in &d.instances {
            m.iter_mut().zip(&inst.mask).for_each(|(a, b)| *a |= *b);
        }
    }
    m
}

/// Adds one answer to `acc` and returns its own score ([`sample_measure`]).
fn score(task: Task, s: &Sample, pred: &RgbImage, acc: &mut Acc) -> f64 {
    acc.n += 1;
    let len = (s.input.width() * s.input.height()) as usize;
    match task {
        Task::ReferringSegmentation | Task::SemanticSegmentation => {
            let mut truth = vec![false; len];
            for (_, m) in &s.truth.masks {
                truth.iter_mut().zip(m).for_each(|(a, b)| *a |= *b);
            }
            let decoded = decode::read(&s.input, pred, &s.instruction)
                .ok()
                .map(|r| r.decoded);
            let got = union_mask(&decoded, len);
            let (i, u) = truth.iter().zip(&got).fold((0u64, 0u64), |(i, u), (a, b)| {
                (i + (*a && *b) as u64, u + (*a || *b) as u64)
            });
            let iou = if u == 0 { 1.0 } else { i as f64 / u as f64 };
            acc.inter += i;
            acc.union += u;
            acc.iou_sum += iou;
            iou
        }
        Task::Keypoints => {
            let decoded = decode::read(&s.input, pred, &s.instruction)
                .ok()
                .map(|r| r.decoded);
            let scale = s.truth.object_size.unwrap_or(s.input.height() as f32) as f64;
            let mut hits = 0;
            for k in &s.truth.keypoints {
                acc.kp_total += 1;
                let found = decoded
                    .as_ref()
                    .and_then(|d| d.keypoints.iter().find(|p| p.color == k.color));
                if let Some(p) = found {
                    let e =
                        ((p.x - k.x as f64).powi(2) + (p.y - k.y as f64).powi(2)).sqrt() / scale;
                    acc.pck05 += (e <= 0.05) as usize;
                    acc.pck10 += (e <= 0.1) as usize;
                    hits += (e <= 0.1) as usize;
                }
            }
            hits as f64 / s.truth.keypoints.len().max(1) as f64
        }
        Task::Denoise | Task::Deblur | Task::Watermark => {
            let p = psnr(pred, &s.target);
            let gain = p - psnr(&s.input, &s.target);
            acc.psnr_sum += p;
            acc.gain_sum += gain;
            gain
        }
        Task::Remove | Task::Recolor | Task::Add | Task::Replace => {
            let ok = edit_succeeded(&s.input, &s.target, pred);
            acc.successes += ok as usize;
            ok as u8 as f64
        }
    }
}

/// One sample for the eye: source, target and answer side by side (the answer at the source's
/// size), 4 px apart on white.
pub fn sheet(s: &Sample, answer: &RgbImage) -> RgbImage {
    let (w, h) = s.input.dimensions();
    let answer = if answer.dimensions() == (w, h) {
        answer.clone()
    } else {
        crate::imageio::resize_exact(answer, w, h)
    };
    let gap = 4;
    let mut out = RgbImage::from_pixel(3 * w + 2 * gap, h, image::Rgb([255, 255, 255]));
    for (k, img) in [&s.input, &s.target, &answer].into_iter().enumerate() {
        image::imageops::replace(&mut out, img, (k as u32 * (w + gap)) as i64, 0);
    }
    out
}

/// PSNR in dB (capped at 60 for identical images).
pub fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let mse = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        / a.as_raw().len() as f64;
    if mse <= 1e-6 {
        60.0
    } else {
        (10.0 * (255.0f64 * 255.0 / mse).log10()).min(60.0)
    }
}

/// The success rule for object edits (see the module docs).
pub fn edit_succeeded(source: &RgbImage, target: &RgbImage, pred: &RgbImage) -> bool {
    let (mut to_target, mut to_source, mut changed) = (0f64, 0f64, 0usize);
    let (mut kept, mut rest) = (0f64, 0usize);
    for ((s, t), p) in source.pixels().zip(target.pixels()).zip(pred.pixels()) {
        let d = |a: &image::Rgb<u8>, b: &image::Rgb<u8>| {
            (0..3)
                .map(|c| (a[c] as f64 - b[c] as f64).abs())
                .sum::<f64>()
                / 3.0
        };
        if (0..3).any(|c| (s[c] as i32 - t[c] as i32).abs() > 30) {
            changed += 1;
            to_target += d(p, t);
            to_source += d(p, s);
        } else {
            rest += 1;
            kept += d(p, s);
        }
    }
    changed > 0 && to_target < to_source && kept / (rest.max(1) as f64) < 12.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wilson intervals as statistics tables give them.
    #[test]
    fn success_rates_come_with_their_interval() {
        let round = |(lo, hi): (f64, f64)| ((lo * 100.0).round(), (hi * 100.0).round());
        assert_eq!(round(wilson_interval(0.8, 20)), (58.0, 92.0));
        assert_eq!(round(wilson_interval(0.58, 50)), (44.0, 71.0));
        assert_eq!(round(wilson_interval(0.0, 10)), (0.0, 28.0));
        assert_eq!(round(wilson_interval(1.0, 10)), (72.0, 100.0));
        assert_eq!(wilson_interval(0.5, 0), (0.0, 1.0));
    }

    fn plan(n: usize) -> EvalPlan {
        EvalPlan {
            per_task: n,
            size: 128,
            tasks: Task::ALL.to_vec(),
            paraphrased: false,
            trained_on: None,
            task_guidance: false,
            request: EditRequest {
                prompt: String::new(),
                steps: None,
                text_cfg: None,
                image_cfg: None,
                guidance_rescale: None,
                sampler: None,
                guidance: None,
                seed: None,
                resolution: None,
                keep_model_resolution: false,
                full_res: Default::default(),
            },
        }
    }

    /// The metrics themselves: answering with the target scores (near) perfectly, answering with
    /// the source scores as nothing done.
    #[test]
    fn targets_score_perfectly_and_sources_score_nothing() {
        let p = plan(6);
        let mut each = vec![];
        let oracle = run(
            &p,
            "oracle",
            |s| Ok(s.target.clone()),
            |x| {
                each.push((x.task, x.index, x.value));
                Ok(())
            },
        )
        .unwrap();
        let idle = run(&p, "identity", |s| Ok(s.input.clone()), |_| Ok(())).unwrap();
        let get = |r: &Report, task: Task, m: &str| {
            let row = r.rows.iter().find(|row| row.task == task.name()).unwrap();
            row.metrics.iter().find(|(k, _)| k == m).unwrap().1
        };
        // Each sample is reported once, with its own score: the family's mean of them is the
        // table's mean metric.
        assert_eq!(each.len(), 6 * Task::ALL.len());
        for task in Task::ALL {
            let mine: Vec<&(Task, usize, f64)> = each.iter().filter(|e| e.0 == task).collect();
            assert_eq!(
                mine.iter().map(|e| e.1).collect::<Vec<_>>(),
                [1, 2, 3, 4, 5, 6]
            );
            let mean = mine.iter().map(|e| e.2).sum::<f64>() / 6.0;
            let table_mean = match sample_measure(task) {
                "IoU" => get(&oracle, task, "mIoU"),
                "PCK@0.1" => continue, // pooled over keypoints, not samples
                m => get(&oracle, task, m),
            };
            assert!((mean - table_mean).abs() < 1e-9, "{}", task.name());
        }
        eprintln!("{}\n{}", table(&oracle), table(&idle));
        assert!(get(&oracle, Task::ReferringSegmentation, "cIoU") > 0.9);
        assert!(get(&oracle, Task::SemanticSegmentation, "mIoU") > 0.9);
        assert!(get(&oracle, Task::Keypoints, "PCK@0.1") > 0.9);
        for t in [Task::Remove, Task::Recolor, Task::Add, Task::Replace] {
            assert_eq!(get(&oracle, t, "success"), 1.0, "{}", t.name());
            assert_eq!(get(&idle, t, "success"), 0.0, "{}", t.name());
        }
        assert!(get(&oracle, Task::Denoise, "gain dB") > 6.0);
        assert_eq!(get(&idle, Task::Denoise, "gain dB"), 0.0);
        assert!(get(&idle, Task::ReferringSegmentation, "cIoU") < 0.05);
        assert_eq!(get(&idle, Task::Keypoints, "PCK@0.1"), 0.0);
        // Eval seeds are not training seeds.
        assert!(samples(&p, Task::Keypoints)[0].seed > HELD_OUT_FIRST_SEED);
        // ... unless asked for the trainer's own: this family's samples of its pool, in order.
        let tp = EvalPlan {
            trained_on: Some(64),
            ..p.clone()
        };
        let pool: Vec<u64> =
            crate::train::pool::generator_seeds(crate::train::edit::DEFAULT_SEED, 64).collect();
        let seen = samples(&tp, Task::Remove);
        assert!(!seen.is_empty() && seen.len() <= p.per_task);
        assert!(seen
            .iter()
            .all(|s| s.task == Task::Remove && pool.contains(&s.seed)));
        assert!(seen.windows(2).all(|w| {
            let at = |x: u64| pool.iter().position(|&y| y == x);
            at(w[0].seed) < at(w[1].seed)
        }));
        // Held-out phrasings: the same scenes, other words, still decoded.
        let pp = EvalPlan {
            paraphrased: true,
            ..p.clone()
        };
        let (a, b) = (
            &samples(&p, Task::Remove)[0],
            &samples(&pp, Task::Remove)[0],
        );
        assert!(a.input == b.input && a.instruction != b.instruction);
        // Per-task guidance replaces the request's scales with the model's value for each
        // family: its own table first, the official recipe otherwise.
        let mut d = SamplingDefaults::instructdiffusion();
        assert_eq!(p.request_for(Task::Keypoints, &d).text_cfg, None);
        let tg = EvalPlan {
            task_guidance: true,
            ..p.clone()
        };
        d.task_guidance.insert(Task::Watermark, [2.0, 1.5]);
        let r = tg.request_for(Task::Keypoints, &d);
        assert_eq!((r.text_cfg, r.image_cfg), (Some(6.0), Some(0.5)));
        let r = tg.request_for(Task::Watermark, &d);
        assert_eq!((r.text_cfg, r.image_cfg), (Some(2.0), Some(1.5)));
        let para = run(&pp, "oracle", |s| Ok(s.target.clone()), |_| Ok(())).unwrap();
        assert!(get(&para, Task::ReferringSegmentation, "cIoU") > 0.9);
        assert!(get(&para, Task::SemanticSegmentation, "mIoU") > 0.9);
        assert!(get(&para, Task::Keypoints, "PCK@0.1") > 0.9);
        assert!(table(&para).contains("held-out instructions"));
        let n = para
            .rows
            .iter()
            .find(|r| r.task == "remove")
            .unwrap()
            .samples;
        let lo = wilson_interval(1.0, n).0;
        assert!(table(&para).contains(&format!("success 1.000 (95% {lo:.2}-1.00)")));
    }

    #[test]
    fn a_sheet_shows_source_target_and_answer_side_by_side() {
        let s = &samples(&plan(1), Task::Recolor)[0];
        let small = crate::imageio::resize_exact(&s.target, 64, 64);
        let sheet = sheet(s, &small);
        assert_eq!(sheet.dimensions(), (3 * 128 + 8, 128));
        assert_eq!(sheet.get_pixel(5, 7), s.input.get_pixel(5, 7));
        assert_eq!(sheet.get_pixel(132 + 5, 7), s.target.get_pixel(5, 7));
        assert_eq!(sheet.get_pixel(130, 7), &image::Rgb([255, 255, 255]));
    }

    fn report(rows: &[(Task, &str, f64)]) -> Report {
        Report {
            model: "m".into(),
            paraphrased: false,
            task_guidance: false,
            trained_on: None,
            size: 128,
            steps: None,
            guidance_rescale: None,
            rows: rows
                .iter()
                .map(|(t, k, v)| Row {
                    task: t.name().into(),
                    samples: 10,
                    metrics: vec![(k.to_string(), *v)],
                })
                .collect(),
            seconds: 0.0,
        }
    }

    /// A grid picks each family's best point by its headline metric; a family that never moves
    /// keeps the official recipe (no entry).
    #[test]
    fn a_grid_keeps_each_familys_best_point_and_skips_ties() {
        let grid = vec![
            (
                (1.0, 1.25),
                report(&[
                    (Task::Denoise, "gain dB", 6.1),
                    (Task::Keypoints, "PCK@0.1", 0.0),
                    (Task::Remove, "success", 0.3),
                ]),
            ),
            (
                (5.0, 1.25),
                report(&[
                    (Task::Denoise, "gain dB", 2.1),
                    (Task::Keypoints, "PCK@0.1", 0.0),
                    (Task::Remove, "success", 0.4),
                ]),
            ),
        ];
        let best = best_guidance(&grid);
        assert_eq!(best.get(&Task::Denoise), Some(&[1.0, 1.25]));
        assert_eq!(best.get(&Task::Remove), Some(&[5.0, 1.25]));
        assert_eq!(best.get(&Task::Keypoints), None);
        assert_eq!(best.len(), 2);
        let t = grid_table(&grid);
        assert!(t.contains("6.100*") && t.contains("0.400*"), "{t}");
        assert!(!t.contains("recolor"), "{t}");
    }
}
