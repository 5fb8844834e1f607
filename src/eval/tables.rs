//! Reports as tables: per-task rows, guidance grids, the best setting per family, and the
//! confidence interval of a rate.

use std::collections::BTreeMap;

use super::*;
use crate::tasks::Task;

impl Report {
    /// The value of metric `name` in `task`'s row.
    pub fn metric(&self, task: Task, name: &str) -> Option<f64> {
        let row = self.rows.iter().find(|r| r.task == task.name())?;
        row.metrics.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
}

/// The one metric a family's guidance is chosen by (higher is better).
pub fn headline(task: Task) -> &'static str {
    match task {
        Task::ReferringSegmentation | Task::SemanticSegmentation => "cIoU",
        Task::Keypoints => "PCK@0.1",
        Task::Remove | Task::Recolor | Task::Add | Task::Replace => "success",
        Task::Denoise | Task::Deblur | Task::Watermark => "gain dB",
    }
}

/// For each family, the guidance `[text, image]` of the grid point with the best headline
/// score (the first of equals). A family that scores the same at every point is left out: no
/// evidence moves it off the official recipe.
pub fn best_guidance(grid: &[((f64, f64), Report)]) -> BTreeMap<Task, [f64; 2]> {
    let mut best = BTreeMap::new();
    for task in Task::ALL {
        let scores: Vec<((f64, f64), f64)> = grid
            .iter()
            .filter_map(|(g, r)| Some((*g, r.metric(task, headline(task))?)))
            .collect();
        let Some(&(first_g, first)) = scores.first() else {
            continue;
        };
        let ((t, i), top) = scores
            .iter()
            .fold((first_g, first), |a, &b| if b.1 > a.1 { b } else { a });
        if scores.iter().any(|(_, v)| *v != top) {
            best.insert(task, [t, i]);
        }
    }
    best
}

/// The headline score of every family at every grid point, the best marked with `*`.
pub fn grid_table(grid: &[((f64, f64), Report)]) -> String {
    let best = best_guidance(grid);
    let mut s = format!("{:<24} {:<10}", "task", "metric");
    for ((t, i), _) in grid {
        s.push_str(&format!(" {:>11}", format!("{t}/{i}")));
    }
    s.push('\n');
    for task in Task::ALL {
        if grid
            .iter()
            .all(|(_, r)| r.metric(task, headline(task)).is_none())
        {
            continue;
        }
        s.push_str(&format!("{:<24} {:<10}", task.name(), headline(task)));
        for ((t, i), r) in grid {
            let mark = if best.get(&task) == Some(&[*t, *i]) {
                "*"
            } else {
                " "
            };
            match r.metric(task, headline(task)) {
                Some(v) => s.push_str(&format!(" {:>10.3}{mark}", v)),
                None => s.push_str(&format!(" {:>11}", "-")),
            }
        }
        s.push('\n');
    }
    s
}

/// The Wilson score interval (95%) of a success rate `p` over `n` samples: where the true
/// rate lies, given the count (20 samples at 0.80 allow 0.58-0.92).
pub fn wilson_interval(p: f64, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (n, z2) = (n as f64, 1.96f64 * 1.96);
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = (z2 * (p * (1.0 - p) / n + z2 / (4.0 * n * n))).sqrt() / (1.0 + z2 / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The report as a table.
pub fn table(r: &Report) -> String {
    let mut s = format!(
        "model: {}, {} px, {} steps, {} scenes, {} instructions, {} guidance{}, {:.0} s\n{:<24} {:>7}  metrics\n",
        r.model,
        r.size,
        r.steps.map_or("default".into(), |n| n.to_string()),
        r.trained_on
            .map_or("held-out".into(), |n| format!("trained-on (pool of {n})")),
        if r.paraphrased {
            "held-out"
        } else {
            "template"
        },
        if r.task_guidance {
            "per-task"
        } else {
            "one"
        },
        r.guidance_rescale
            .map_or(String::new(), |phi| format!(" rescaled {phi}")),
        r.seconds,
        "task",
        "samples"
    );
    for row in &r.rows {
        let m: Vec<String> = row
            .metrics
            .iter()
            .map(|(k, v)| match k.as_str() {
                // A rate over a few samples says little alone: its 95% interval beside it.
                "success" => {
                    let (lo, hi) = wilson_interval(*v, row.samples);
                    format!("{k} {v:.3} (95% {lo:.2}-{hi:.2})")
                }
                _ => format!("{k} {v:.3}"),
            })
            .collect();
        s.push_str(&format!(
            "{:<24} {:>7}  {}\n",
            row.task,
            row.samples,
            m.join("  ")
        ));
    }
    s
}
