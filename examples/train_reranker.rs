//! The README's main job: MiniLM (tied) and the default learned head (a
//! residual MLP) trained with the two-cache step on the embedded WordNet
//! task, evaluated on its dev split beside the bi-encoder baselines, saved
//! as a model bundle in `OUTPUT/model`.
//!
//!     cargo run --release --example train_reranker -- [--config FILE] [--steps N] [--device cuda] ...
//!
//! The same recipe as `gradcache train` (`gradcache::app::recipe`); see
//! docs/training.md for the config fields and the files a run writes.

use anyhow::{Context, Result};
use clap::Parser;
use gradcache::app::recipe::run;
use gradcache::cli::TrainArgs;

#[derive(Parser)]
#[command(about = "Train MiniLM + a learned head with the two-cache step on the WordNet task (same as `gradcache train`)")]
struct Cli {
    #[command(flatten)]
    args: TrainArgs,
}

fn main() -> Result<()> {
    gradcache::runtime::tune_allocator();
    let cli = Cli::parse();
    let config = cli.args.resolve().context("reading the run's settings")?;
    let report = run(&config, cli.args.start(), &gradcache::cli::console::Console::new())
        .with_context(|| format!("training into {}", config.output_dir.display()))?;
    gradcache::cli::print_report(&report);
    Ok(())
}
