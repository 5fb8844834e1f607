//! `instructdiffusion eval`: per-task scores on held-out procedural samples, guidance grids.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::imageio;
use crate::model::load::{self, ModelSource};

use super::{load_model, parse_task, ModelArgs, SamplingArgs};

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Samples per task family.
    #[arg(long, default_value_t = 50)]
    pub per_task: usize,
    /// Scene size in pixels (the built-in model's is 128).
    #[arg(long, default_value_t = 128)]
    pub size: u32,
    /// Only these task families (comma-separated names, e.g. keypoints,remove).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Ask with held-out phrasings (never trained on) instead of the training templates.
    #[arg(long)]
    pub paraphrased: bool,
    /// Each task family with the model's guidance for it (the table `--save-guidance` wrote in
    /// its instructdiffusion.json, else the official recipe: segmentation 7.5 / 1.5, keypoints
    /// 6.0 / 0.5, watermark removal 1.0 / 1.0, the rest 5.0 / 1.25) instead of one setting.
    #[arg(long, conflicts_with_all = ["text_cfg", "image_cfg"])]
    pub task_guidance: bool,
    /// Evaluate at each of these guidance settings, TEXT:IMAGE (e.g. 1:1.25,5:1.25,7.5:1.5),
    /// and print each family's headline score per setting.
    #[arg(long, value_delimiter = ',', value_parser = parse_guidance_pair,
          conflicts_with_all = ["text_cfg", "image_cfg", "task_guidance"])]
    pub grid: Vec<(f64, f64)>,
    /// With --grid: record each family's best setting in the model folder's
    /// instructdiffusion.json, where the editor's task picker and `eval --task-guidance` read it,
    /// with the guidance rescale the grid ran at as the model's default.
    #[arg(long, requires = "grid")]
    pub save_guidance: bool,
    /// Score samples the model was trained on instead of held-out ones: each family's among
    /// the first N of the trainer's generated pool (`train edit --pool N`). Far above the
    /// held-out score: the network memorises; the same: it cannot fit even what it saw.
    #[arg(long, value_name = "N")]
    pub trained_on: Option<usize>,
    /// Score the targets passed through the model's autoencoder alone (no UNet): the ceiling
    /// the VAE sets on every metric.
    #[arg(long)]
    pub autoencoder_only: bool,
    /// Also keep every answer for the eye: DIR/TASK/NNN.png (source, target and answer side by
    /// side) and DIR/samples.jsonl (each sample's seed, instruction, the phrase a segmentation
    /// names, and its own score).
    #[arg(long, value_name = "DIR", conflicts_with = "grid")]
    pub samples_out: Option<PathBuf>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

fn parse_guidance_pair(s: &str) -> Result<(f64, f64), String> {
    let err = || format!("'{s}' is not TEXT:IMAGE guidance (e.g. 5:1.25)");
    let (t, i) = s.split_once(':').ok_or_else(err)?;
    let (t, i): (f64, f64) = (
        t.trim().parse().map_err(|_| err())?,
        i.trim().parse().map_err(|_| err())?,
    );
    if !(t.is_finite() && i.is_finite() && t >= 0.0 && i >= 0.0) {
        return Err(err());
    }
    Ok((t, i))
}

/// Writes the best settings of the `evaluated` families (`table`; one left out of it keeps the
/// official recipe) into a model folder's `instructdiffusion.json`, keeping the rest of it,
/// other families' recorded settings included.
fn save_task_guidance(
    spec: &str,
    model: &load::Model,
    evaluated: &[crate::tasks::Task],
    table: &std::collections::BTreeMap<crate::tasks::Task, [f64; 2]>,
    rescale: f64,
) -> anyhow::Result<PathBuf> {
    let dir = match ModelSource::parse(spec)? {
        ModelSource::Diffusers(dir) => dir,
        ModelSource::Builtin => load::builtin_dir(),
        other => anyhow::bail!(
            "--save-guidance writes into a diffusers folder; '{spec}' is {}",
            other.describe()
        ),
    };
    let mut defaults = model.defaults.clone();
    defaults.phrasing = Some(model.defaults.phrasing());
    // The table holds for the rescale it was measured with.
    defaults.guidance_rescale = rescale;
    for task in evaluated {
        match table.get(task) {
            Some(best) => defaults.task_guidance.insert(*task, *best),
            None => defaults.task_guidance.remove(task),
        };
    }
    let path = dir.join(crate::settings::DEFAULTS_FILE);
    let mut json = serde_json::to_string_pretty(&defaults)?;
    json.push('\n');
    imageio::write_atomic(&path, json.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub(super) fn run_eval(args: &EvalArgs) -> anyhow::Result<()> {
    use crate::tasks::Task;
    let tasks = if args.tasks.is_empty() {
        Task::ALL.to_vec()
    } else {
        args.tasks
            .iter()
            .map(|n| parse_task(n))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    if args.trained_on == Some(0) {
        anyhow::bail!("--trained-on N takes the pool's size, at least 1");
    }
    if args.per_task == 0 || args.size < 64 {
        anyhow::bail!("--per-task must be at least 1 and --size at least 64");
    }
    let model = load_model(&args.model)?;
    let mut request = args.sampling.request("");
    // The report names the rescale a model's defaults bring, as one asked for.
    let rescale = model.defaults.guidance_rescale;
    if request.guidance_rescale.is_none() && rescale > 0.0 {
        request.guidance_rescale = Some(rescale);
    }
    let plan = crate::eval::EvalPlan {
        per_task: args.per_task,
        size: args.size,
        tasks,
        request: request.clone(),
        paraphrased: args.paraphrased,
        task_guidance: args.task_guidance,
        trained_on: args.trained_on,
    };
    let points: Vec<Option<(f64, f64)>> = if args.grid.is_empty() {
        vec![None]
    } else {
        args.grid.iter().copied().map(Some).collect()
    };
    let bar = indicatif::ProgressBar::new((plan.per_task * plan.tasks.len() * points.len()) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} samples {elapsed_precise} eta {eta} {msg}",
        )
        .expect("static template"),
    );
    let name = if args.autoencoder_only {
        format!("{} (autoencoder only)", model.source)
    } else {
        model.source.clone()
    };
    let mut reports = vec![];
    let mut lines = String::new();
    for point in &points {
        let mut plan = plan.clone();
        if let Some((t, i)) = point {
            (plan.request.text_cfg, plan.request.image_cfg) = (Some(*t), Some(*i));
        }
        let report = crate::eval::run(
            &plan,
            &name,
            |s| {
                if args.autoencoder_only {
                    crate::eval::autoencoder_answer(&model, s)
                } else {
                    crate::eval::edit_answer(&model, &plan.request_for(s.task, &model.defaults), s)
                }
            },
            |x| {
                bar.set_message(match point {
                    Some((t, i)) => format!("{} at {t}/{i}", x.task.name()),
                    None => x.task.name().to_string(),
                });
                bar.inc(1);
                if let Some(dir) = &args.samples_out {
                    lines.push_str(&keep_sample(dir, x)?);
                    lines.push('\n');
                }
                Ok(())
            },
        )?;
        bar.suspend(|| {
            if let Some((t, i)) = point {
                println!("guidance text {t} / image {i}");
            }
            print!("{}", crate::eval::table(&report));
        });
        reports.push(report);
    }
    bar.finish_and_clear();
    if let Some(dir) = &args.samples_out {
        let path = dir.join("samples.jsonl");
        imageio::write_atomic(&path, lines.as_bytes())?;
        println!("answers: {} (sheets), {}", dir.display(), path.display());
    }
    if let Some(path) = &args.json {
        // One report, or with --grid one per setting (an array, however many).
        let json = match reports.as_slice() {
            [one] if args.grid.is_empty() => serde_json::to_string_pretty(one)?,
            all => serde_json::to_string_pretty(all)?,
        };
        imageio::write_atomic(path, json.as_bytes())?;
    }
    if !args.grid.is_empty() {
        let grid: Vec<((f64, f64), crate::eval::Report)> =
            args.grid.iter().copied().zip(reports).collect();
        print!(
            "\nheadline score per guidance (text/image), best marked *\n{}",
            crate::eval::grid_table(&grid)
        );
        if args.save_guidance {
            let best = crate::eval::best_guidance(&grid);
            let rescale = plan.request.guidance_rescale.unwrap_or(0.0);
            let path = save_task_guidance(&args.model.model, &model, &plan.tasks, &best, rescale)?;
            println!(
                "saved {} families' guidance to {}",
                best.len(),
                path.display()
            );
        }
    }
    Ok(())
}

/// Writes `x`'s sheet under `dir` and returns its `samples.jsonl` line.
fn keep_sample(dir: &Path, x: &crate::eval::Scored) -> anyhow::Result<String> {
    let name = format!("{}/{:03}.png", x.task.name(), x.index);
    let path = dir.join(&name);
    std::fs::create_dir_all(path.parent().expect("has a folder"))
        .with_context(|| format!("creating {}", dir.display()))?;
    imageio::save(&crate::eval::sheet(x.sample, x.answer), &path, &[])?;
    Ok(serde_json::json!({
        "task": x.task.name(),
        "index": x.index,
        "seed": x.sample.seed,
        "instruction": x.sample.instruction,
        "phrase": x.sample.truth.phrase,
        "measure": crate::eval::sample_measure(x.task),
        "value": x.value,
        "sheet": name,
    })
    .to_string())
}
