//! The `gradcache` command-line tool.
//!
//!     gradcache check-head --head interaction      # is this head exact under the two-cache step?
//!     gradcache prepare-wordnet                    # rebuild examples/data/wordnet from WordNet 3.0

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use gradcache::check::{check_head, Tolerance};
use gradcache::data::wordnet::{Split, WordSenseData};
use gradcache::encoders::{Pooling, TinyEncoderConfig};
use gradcache::heads::HeadConfig;
use gradcache::{GradCache, InfoNce, StepConfig, Targets, TokenBatch};
use tch::{nn, Device, Kind, Tensor};

#[derive(Parser)]
#[command(name = "gradcache", about = "Two-cache Gradient Cache tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a built-in head, or one from a JSON head config, against the
    /// full-batch step: replay, coupling between pairs, and every gradient.
    CheckHead {
        /// A head kind (dot, cosine, bilinear, mlp, max_sim, weighted_max_sim, poly, interaction).
        #[arg(long, conflicts_with = "config")]
        head: Option<String>,
        /// A JSON head config, e.g. {"kind": "interaction", "dim": 16, "heads": 2, "ffn": 32, "dropout": 0.1}.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Representation width of the sample encoder (and of a named head).
        #[arg(long, default_value_t = 16)]
        dim: usize,
        /// Dropout of the sample encoder and of a named head.
        #[arg(long, default_value_t = 0.1)]
        dropout: f64,
        /// Queries in the sample batch; each has `group` passages.
        #[arg(long, default_value_t = 6)]
        queries: usize,
        #[arg(long, default_value_t = 3)]
        group: usize,
        /// Run in f32 (tolerance 1e-6 + 2e-6 relative) instead of f64 (1e-13 + 1e-12).
        #[arg(long)]
        f32: bool,
    },
    /// Rebuild the WordNet task from WordNet 3.0's data files
    /// (Debian: apt-get install wordnet-base).
    PrepareWordnet {
        #[arg(long, default_value = "/usr/share/wordnet")]
        wordnet: PathBuf,
        #[arg(long, default_value = "examples/data/wordnet")]
        out: PathBuf,
    },
}

fn sample_tokens(n: usize, vocab: i64) -> Result<TokenBatch> {
    let lengths = Tensor::randint_low(1, 11, [n as i64, 1], (Kind::Int64, Device::Cpu));
    let mask = Tensor::arange(10, (Kind::Int64, Device::Cpu)).unsqueeze(0).lt_tensor(&lengths).to_kind(Kind::Int64);
    let ids = Tensor::randint_low(1, vocab, [n as i64, 10], (Kind::Int64, Device::Cpu)) * &mask;
    Ok(TokenBatch::new(ids, mask)?)
}

#[allow(clippy::too_many_arguments)]
fn check(head: Option<String>, config: Option<PathBuf>, dim: usize, dropout: f64, queries: usize, group: usize, f32: bool) -> Result<bool> {
    let head_config = match (head, config) {
        (_, Some(path)) => serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("parsing {}", path.display()))?,
        (Some(name), None) => HeadConfig::named(&name, dim, dropout)?,
        (None, None) => anyhow::bail!("give --head NAME or --config FILE"),
    };
    let width = head_config.dim().unwrap_or(dim);
    tch::manual_seed(0);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let pooling = if head_config.reads_tokens() { Pooling::Tokens } else { Pooling::Mean };
    let encoder = TinyEncoderConfig { vocab_size: 100, max_len: 10, dim: width, dropout, pooling }.init(&(vs.root() / "encoder"))?;
    let head = head_config.for_checking().init(&(vs.root() / "head"))?;
    let tolerance = if f32 {
        Tolerance { abs: 1e-6, rel: 2e-6 }
    } else {
        vs.double();
        Tolerance { abs: 1e-13, rel: 1e-12 }
    };
    let (q, p) = (sample_tokens(queries, 100)?, sample_tokens(queries * group, 100)?);
    let targets = Targets::grouped(queries, queries * group, group)?;
    let loss = InfoNce { temperature: 1.0, symmetric: false };
    // A layout that cuts the sample into several uneven chunks and blocks.
    let cut = |n: usize| (n / 2 + 1).max(1);
    let layout = StepConfig {
        query_chunk_size: cut(queries),
        passage_chunk_size: cut(queries * group),
        head_block_queries: cut(queries),
        head_block_passages: cut(queries * group),
        ..StepConfig::default()
    };
    let gc = GradCache::tied(layout, &encoder, head.as_ref(), &loss)?;
    let report = check_head(&gc, &vs, &q, &p, &targets, tolerance)?;
    let mut out = std::io::stdout().lock();
    let printed = writeln!(out, "{}", serde_json::to_string(&head_config)?).and_then(|()| write!(out, "{report}"));
    match printed {
        // A closed pipe (`| head`) is the reader's choice, not an error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(report.passed())
}

fn main() -> Result<ExitCode> {
    gradcache::runtime::tune_allocator();
    match Cli::parse().command {
        Command::CheckHead { head, config, dim, dropout, queries, group, f32 } => {
            let passed = check(head, config, dim, dropout, queries, group, f32)?;
            Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::PrepareWordnet { wordnet, out } => {
            let data = WordSenseData::from_wordnet(&wordnet)
                .with_context(|| format!("reading WordNet from {} (apt-get install wordnet-base)", wordnet.display()))?;
            data.write(&out)?;
            // WordNet's license travels with the data: it is the header of each data file.
            let header = std::fs::read_to_string(wordnet.join("data.noun"))?;
            let license: String = header
                .lines()
                .take_while(|l| l.starts_with("  "))
                .map(|l| l.trim_start().split_once(' ').map_or("", |(_, rest)| rest).to_string() + "\n")
                .collect();
            std::fs::write(out.join("LICENSE-WordNet.txt"), license)?;
            for split in [Split::Train, Split::Dev, Split::Test] {
                println!("{split:?}: {} usage examples", data.examples(split).count());
            }
            println!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
