//! Writes the training batches of a `gradcache train` run — its texts, in
//! its order — as JSONL, one line per step: `{"step", "queries",
//! "passages", "positives"}` (`passages` holds `group_size` texts per query,
//! its positive first; `positives[k]` the indices of query k's positives).
//! Peers that are not gradcache train on these lines, so that they see the
//! same examples in the same order (`benchmarks/heads/st_cross_encoder.py`).
//! The flags are `gradcache train`'s; batch order depends on the data,
//! `--batch-size`, `--group-size`, `--steps` and `--seed`.
//!
//!     cargo run --release --example common_write_batches -- --batches FILE [--seed 1] [gradcache train flags]

use std::io::Write;

use anyhow::{Context, Result};
use clap::Parser;
use gradcache::app::data::wordnet::WordSenseData;
use gradcache::app::recipe::{batch_texts, training_records};
use gradcache::cli::TrainArgs;

#[derive(Parser)]
struct Cli {
    /// The JSONL file to write.
    #[arg(long)]
    batches: std::path::PathBuf,
    #[command(flatten)]
    args: TrainArgs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let c = cli.args.resolve().context("reading the run's settings")?;
    let task = WordSenseData::read(&c.data_dir)?;
    let records = training_records(&c, &task, &gradcache::cli::console::Console::new())?;
    let mut text = String::new();
    for step in 0..c.train.steps {
        let b = batch_texts(&records, &c, step)?;
        let line = serde_json::json!({"step": step, "queries": b.queries, "passages": b.passages, "positives": b.positives});
        text.push_str(&line.to_string());
        text.push('\n');
    }
    gradcache::models::weights::write_bytes_atomically(&cli.batches, text.as_bytes())?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "wrote {} batches of {} queries x {} passages (seed {}) to {}",
        c.train.steps,
        c.batch_size,
        c.group_size,
        c.train.seed,
        cli.batches.display()
    )?;
    Ok(())
}
