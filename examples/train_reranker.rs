//! Trains a reranker-style model on the embedded WordNet task: MiniLM query
//! and passage encoders (tied by default) and a learned cross-interaction
//! head, with the two-cache step at a batch several times the encoder
//! chunk. Reports dev metrics before and after training, next to the
//! pretrained encoder's plain cosine similarity.
//!
//!     cargo run --release --example train_reranker -- [--config FILE] [--steps N] [--device cuda] ...
//!
//! Writes into `--output-dir`: `config.json` (resolved), `train_config.json`,
//! `metrics.jsonl`, `checkpoints/`, `results.json`, and the trained model as
//! a bundle, `model/` (read by `gradcache eval` and `gradcache rerank`; see
//! docs/inference.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use gradcache::data::jsonl::read_training_records;
use gradcache::data::wordnet::{Split, WordSenseData};
use gradcache::data::{grouped_batch, Malformed, TrainingRecord};
use gradcache::encoders::BertEncoderConfig;
use gradcache::eval::{sense_metrics, ReferenceResults};
use gradcache::encoders::Pooling;
use gradcache::heads::{CosineHeadConfig, HeadConfig, MlpHeadConfig};
use gradcache::pretrained::ModelDir;
use gradcache::runtime::{parse_device, tune_allocator};
use gradcache::text::TextTokenizer;
use gradcache::train::{sample_indices, TrainConfig, Trainer};
use gradcache::scorer::{ModelConfig, ScoringLayout};
use gradcache::weights::write_bytes_atomically;
use gradcache::{GradCache, InfoNce, Scorer, StepConfig, Targets, TokenBatch};
use serde::{Deserialize, Serialize};
use tch::Device;

/// Everything the run needs; JSON with these fields, all optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RerankerConfig {
    model_dir: PathBuf,
    /// The prepared WordNet task (dev metrics always come from it).
    data_dir: PathBuf,
    /// Train on these JSONL records instead of the WordNet training split.
    train_jsonl: Option<PathBuf>,
    skip_malformed: bool,
    output_dir: PathBuf,
    device: String,
    /// Longest tokenized text.
    max_len: usize,
    /// Queries per batch.
    batch_size: usize,
    /// Passages per query: one positive and `group_size - 1` hard negatives.
    group_size: usize,
    /// Queries evaluated before and after training.
    dev_queries: usize,
    /// The WordNet split evaluated: `dev` (choosing configurations) or `test`.
    eval_split: Split,
    /// After training, also evaluate this many test-split queries (0: none),
    /// into `results.json` as `test_after` (and `test_pretrained_cosine`).
    test_queries: usize,
    /// Fine-tuned baselines measured at the default budget
    /// (`benchmarks/heads_compare.sh`), printed beside the run when its
    /// budget is the same; `null`: none.
    baselines: Option<PathBuf>,
    /// One encoder for queries and passages.
    tied: bool,
    encoder: BertEncoderConfig,
    /// Any built-in head: `{"kind": "mlp", …}`, `{"kind": "interaction", …}`.
    head: HeadConfig,
    loss: InfoNce,
    step: StepConfig,
    train: TrainConfig,
}

impl Default for RerankerConfig {
    fn default() -> Self {
        RerankerConfig {
            model_dir: ".models/all-MiniLM-L6-v2".into(),
            data_dir: "examples/data/wordnet".into(),
            train_jsonl: None,
            skip_malformed: false,
            output_dir: "runs/train_reranker".into(),
            device: "auto".into(),
            max_len: 48,
            batch_size: 64,
            group_size: 2,
            dev_queries: 300,
            eval_split: Split::Dev,
            test_queries: 0,
            baselines: Some("docs/results/heads/baselines.json".into()),
            tied: true,
            encoder: BertEncoderConfig::default(),
            head: HeadConfig::Mlp(MlpHeadConfig { dim: 384, hidden: 256, dropout: 0.1, ..MlpHeadConfig::default() }),
            loss: InfoNce { temperature: 1.0, symmetric: false },
            step: StepConfig { query_chunk_size: 16, passage_chunk_size: 16, head_block_queries: 16, head_block_passages: 64, ..StepConfig::default() },
            train: TrainConfig {
                steps: 100,
                learning_rate: 3e-5,
                // The residual gate is one scalar that Adam moves by about
                // one learning rate per step: at the head's ×30 it reached
                // only -0.04 in 100 steps, leaving Φ no say
                // (docs/heads-results.md).
                lr_multipliers: BTreeMap::from([("head".to_string(), 30.0), ("head.residual.gate".to_string(), 300.0)]),
                warmup_steps: 10,
                checkpoint_every: 40,
                ..TrainConfig::default()
            },
        }
    }
}

impl RerankerConfig {
    fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.group_size == 0 || self.dev_queries == 0 {
            bail!("batch_size, group_size and dev_queries must be at least 1");
        }
        // Encoder and head (their widths against the model's own config.json
        // too) are checked by Scorer::from_pretrained.
        model_config(self).validate()?;
        self.loss.validate()?;
        self.step.validate()?;
        self.train.validate()?;
        Ok(())
    }
}

#[derive(Parser, Debug)]
#[command(about = "Train MiniLM + a learned head with the two-cache step on the WordNet task")]
struct Args {
    /// JSON config (any subset of the fields; flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    /// Encoder chunk size (queries and passages).
    #[arg(long)]
    chunk_size: Option<usize>,
    #[arg(long)]
    learning_rate: Option<f64>,
    #[arg(long)]
    dev_queries: Option<usize>,
    /// After training, also evaluate this many test-split queries.
    #[arg(long)]
    test_queries: Option<usize>,
    /// Also evaluate every N steps (into metrics.jsonl; 0: only before and after).
    #[arg(long)]
    eval_every: Option<usize>,
    /// dev or test.
    #[arg(long, value_parser = parse_split)]
    eval_split: Option<Split>,
    #[arg(long)]
    seed: Option<u64>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long)]
    device: Option<String>,
    #[arg(long)]
    output_dir: Option<PathBuf>,
    #[arg(long)]
    train_jsonl: Option<PathBuf>,
    /// Continue from the newest checkpoint in the output folder.
    #[arg(long)]
    resume: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn parse_split(s: &str) -> Result<Split> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).with_context(|| format!("unknown split `{s}`: dev, test or train"))
}

/// The settings that make two runs' metrics comparable.
fn budget(c: &RerankerConfig) -> BTreeMap<String, serde_json::Value> {
    let data = c.train_jsonl.as_ref().map_or("wordnet".to_string(), |p| p.display().to_string());
    BTreeMap::from([
        ("steps".to_string(), c.train.steps.into()),
        ("batch_size".to_string(), c.batch_size.into()),
        ("group_size".to_string(), c.group_size.into()),
        ("learning_rate".to_string(), c.train.learning_rate.into()),
        ("max_len".to_string(), c.max_len.into()),
        ("train_data".to_string(), data.into()),
        ("eval_split".to_string(), serde_json::to_value(c.eval_split).unwrap_or_default()),
        ("eval_queries".to_string(), c.dev_queries.into()),
    ])
}

fn resolve(args: &Args) -> Result<RerankerConfig> {
    let mut c: RerankerConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let user: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            // Partial nested blocks keep the documented defaults of the fields they do not name.
            let merged = gradcache::config::layered(serde_json::to_value(RerankerConfig::default())?, user);
            serde_json::from_value(merged).with_context(|| format!("reading the settings in {}", path.display()))?
        }
        None => RerankerConfig::default(),
    };
    if let Some(v) = args.steps {
        c.train.steps = v;
    }
    if let Some(v) = args.batch_size {
        c.batch_size = v;
    }
    if let Some(v) = args.chunk_size {
        c.step.query_chunk_size = v;
        c.step.passage_chunk_size = v;
        c.step.head_block_queries = v;
        c.step.head_block_passages = 4 * v;
    }
    if let Some(v) = args.learning_rate {
        c.train.learning_rate = v;
    }
    if let Some(v) = args.dev_queries {
        c.dev_queries = v;
    }
    if let Some(v) = args.test_queries {
        c.test_queries = v;
    }
    if let Some(v) = args.eval_every {
        c.train.eval_every = v;
    }
    if let Some(v) = args.eval_split {
        c.eval_split = v;
    }
    if let Some(v) = args.seed {
        c.train.seed = v;
    }
    if let Some(v) = &args.device {
        c.device = v.clone();
    }
    if let Some(v) = &args.output_dir {
        c.output_dir = v.clone();
    }
    if let Some(v) = &args.train_jsonl {
        c.train_jsonl = Some(v.clone());
    }
    if args.quiet {
        c.train.progress = false;
    }
    c.validate()?;
    Ok(c)
}

/// Batch `step`: `batch_size` records, each with its positive and
/// `group_size - 1` hard negatives ([`grouped_batch`]).
fn batch(
    records: &[TrainingRecord],
    c: &RerankerConfig,
    tok: &TextTokenizer,
    step: usize,
    device: Device,
) -> gradcache::Result<(TokenBatch, TokenBatch, Targets)> {
    let picks = sample_indices(records.len(), c.batch_size, step, c.train.seed);
    let b = grouped_batch(records, &picks, c.group_size, step)?;
    let targets = Targets::from_positives(b.passages.len(), b.positives)?;
    Ok((tok.encode(&b.queries)?.to_device(device)?, tok.encode(&b.passages)?.to_device(device)?, targets))
}

/// The model part of the run's configuration (what its bundle records).
fn model_config(c: &RerankerConfig) -> ModelConfig {
    ModelConfig::new(c.encoder.clone(), c.max_len, c.tied, c.head.clone(), ScoringLayout::of(&c.step))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    write_bytes_atomically(path, &serde_json::to_vec_pretty(value)?)?;
    Ok(())
}

fn main() -> Result<()> {
    tune_allocator();
    let args = Args::parse();
    let c = resolve(&args)?;
    let device = parse_device(&c.device)?;
    std::fs::create_dir_all(&c.output_dir)?;
    write_json(&c.output_dir.join("config.json"), &c)?;

    let model = ModelDir::open(&c.model_dir).with_context(|| "model folder missing: run scripts/gradcache.sh setup")?;
    let tok = model.tokenizer(c.max_len)?;
    let task = WordSenseData::read(&c.data_dir)?;
    let records = match &c.train_jsonl {
        Some(path) => {
            let malformed = if c.skip_malformed { Malformed::Skip } else { Malformed::Fail };
            let read = read_training_records(path, malformed)?;
            if read.skipped > 0 {
                eprintln!("skipped {} malformed lines of {}", read.skipped, path.display());
            }
            read.items
        }
        None => task.training_records(),
    };
    if records.is_empty() {
        bail!("no training records");
    }
    let dev = task.sense_eval(c.eval_split, c.dev_queries);
    let dev_queries: Vec<&str> = dev.set.queries.iter().map(|(_, t)| t.as_str()).collect();
    let dev_corpus: Vec<&str> = dev.set.corpus.iter().map(|(_, t)| t.as_str()).collect();

    // Initialisation (the head, a projection) is reproducible from the seed too.
    tch::manual_seed(c.train.seed as i64);
    let scorer = Scorer::from_pretrained(model_config(&c), &model, device)?;
    let gc = GradCache::new(c.step.clone(), scorer.query_encoder(), scorer.passage_encoder(), scorer.head(), &c.loss)?;

    println!(
        "train_reranker: {} training records, dev {} queries x {} senses, device {device:?}",
        records.len(),
        dev.set.queries.len(),
        dev.set.corpus.len()
    );
    println!(
        "batch {} queries x {} passages each ({} passages), encoder chunk {}, head block {}x{}, {} steps",
        c.batch_size,
        c.group_size,
        c.batch_size * c.group_size,
        c.step.query_chunk_size,
        c.step.head_block_queries,
        c.step.head_block_passages,
        c.train.steps
    );
    // The pretrained encoder's cosine of mean-pooled vectors; token
    // encoders have no such baseline.
    let pretrained = if c.encoder.pooling == Pooling::Tokens {
        None
    } else {
        let cosine = ModelConfig { head: HeadConfig::Cosine(CosineHeadConfig::default()), ..model_config(&c) };
        Some(Scorer::from_pretrained(cosine, &model, device)?)
    };
    let cosine = pretrained.as_ref().map(|p| sense_metrics(&p.score(&dev_queries, &dev_corpus)?, &dev)).transpose()?;

    let mut trainer = Trainer::new(c.train.clone(), scorer.var_store(), &c.output_dir, args.resume)?;
    let summary = trainer.run(
        |i| {
            let (q, p, t) = batch(&records, &c, &tok, i, device)?;
            gc.step(&q, &p, &t)
        },
        |_| sense_metrics(&scorer.score(&dev_queries, &dev_corpus)?, &dev),
    )?;

    let bundle = c.output_dir.join("model");
    scorer.save(&bundle)?;
    let mut results = BTreeMap::from([("after".to_string(), summary.after.clone())]);
    if c.test_queries > 0 {
        let test = task.sense_eval(Split::Test, c.test_queries);
        let test_q: Vec<&str> = test.set.queries.iter().map(|(_, t)| t.as_str()).collect();
        let test_c: Vec<&str> = test.set.corpus.iter().map(|(_, t)| t.as_str()).collect();
        results.insert("test_after".to_string(), sense_metrics(&scorer.score(&test_q, &test_c)?, &test)?);
        if let Some(p) = &pretrained {
            results.insert("test_pretrained_cosine".to_string(), sense_metrics(&p.score(&test_q, &test_c)?, &test)?);
        }
        println!("test split ({} queries): {:?}", test.set.queries.len(), results["test_after"]);
    }
    if let Some(cosine) = &cosine {
        results.insert("pretrained_cosine".to_string(), cosine.clone());
    }
    if let Some(before) = &summary.before {
        results.insert("before".to_string(), before.clone());
    }
    let split = serde_json::to_value(c.eval_split)?.as_str().unwrap_or("dev").to_string();
    let mut results = serde_json::to_value(&results)?;
    results["split"] = split.clone().into();
    results["budget"] = serde_json::to_value(budget(&c))?;
    write_json(&c.output_dir.join("results.json"), &results)?;

    let header: Vec<String> = ["WSD acc", "Top-1", "Top-5", "Top-20", "MRR@10", "nDCG@10"].iter().map(|h| format!("{h:>13}")).collect();
    println!("\n{:<48}{}", format!("{split} metrics ({} queries)", dev.set.queries.len()), header.join(" "));
    const METRICS: [&str; 6] = ["wsd_accuracy", "top1", "top5", "top20", "mrr10", "ndcg10"];
    let row = |name: &str, m: &BTreeMap<String, f64>| {
        let cells: Vec<String> = METRICS.iter().map(|k| format!("{:>13.3}", m.get(*k).copied().unwrap_or(f64::NAN))).collect();
        println!("{name:<48}{}", cells.join(" "));
    };
    // Fine-tuned baselines from the committed results file, when they were
    // measured at this run's budget.
    let reference = match &c.baselines {
        Some(path) if path.exists() => Some((path, ReferenceResults::read(path)?)),
        _ => None,
    };
    if let Some(cosine) = &cosine {
        row("pretrained MiniLM, cosine", cosine);
    }
    if let Some(before) = &summary.before {
        row("encoder + untrained head", before);
    }
    if let Some((path, reference)) = &reference {
        let differs = reference.differences(&budget(&c));
        if differs.is_empty() {
            for r in &reference.rows {
                let cells: Vec<String> = METRICS
                    .iter()
                    .map(|k| format!("{:>13}", format!("{:.3}±{:.3}", r.mean.get(*k).copied().unwrap_or(f64::NAN), r.sd.get(*k).copied().unwrap_or(f64::NAN))))
                    .collect();
                println!("{:<48}{}", format!("{} ({} seeds)", r.name, r.seeds), cells.join(" "));
            }
        } else {
            println!("(baselines in {} were measured at another budget: {} differ)", path.display(), differs.join(", "));
        }
    }
    row(&format!("this run: {} two-cache steps, seed {}", summary.steps, c.train.seed), &summary.after);
    if let Some(first) = summary.losses.first() {
        println!("loss {:.4} -> {:.4}", first, summary.losses.last().copied().unwrap_or(*first));
    }
    println!("model bundle in {} (gradcache eval / rerank --model {})", bundle.display(), bundle.display());
    println!("outputs in {}", c.output_dir.display());
    Ok(())
}
