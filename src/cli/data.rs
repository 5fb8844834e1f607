//! `instructdiffusion data synth`: a dataset folder of procedural samples.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::parse_task_weights;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Write a dataset folder (diffusers InstructPix2Pix format) of generated samples.
    Synth(SynthArgs),
}

#[derive(Args, Debug, Clone)]
pub struct SynthArgs {
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of samples.
    #[arg(long, default_value_t = 100)]
    pub count: u64,
    /// First seed (samples are seeds first..first+count).
    #[arg(long, default_value_t = 0)]
    pub first_seed: u64,
    /// Image size in pixels.
    #[arg(long, default_value_t = 128)]
    pub size: u32,
    /// Only these task families, comma-separated, each `name` or `name=weight` (as
    /// `train edit --tasks`); default: all, with the built-in recipe's weights.
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
}

pub(super) fn run_synth(args: &SynthArgs) -> anyhow::Result<()> {
    if !(16..=1024).contains(&args.size) {
        anyhow::bail!("size must be between 16 and 1024, got {}", args.size);
    }
    let bar = indicatif::ProgressBar::new(args.count);
    let weights = if args.tasks.is_empty() {
        crate::data::sample::TaskWeights::default()
    } else {
        parse_task_weights(&args.tasks)?
    };
    let seeds = args.first_seed..args.first_seed + args.count;
    crate::data::dataset::write(&args.out, seeds, args.size, &weights, &mut |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    eprintln!("wrote {} samples to '{}'", args.count, args.out.display());
    Ok(())
}
