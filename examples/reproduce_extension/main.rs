//! Reproduces the extension of Gradient Cache to a deep distance function
//! (the paper's Section 5) in three parts, writing into `docs/results/`:
//!
//! 1. **gradients**: for every built-in head, the largest relative
//!    difference between the two-cache and the full-batch gradients, per
//!    parameter group, in f32 and f64 (dropout on);
//! 2. **memory**: peak memory against batch size for the full batch,
//!    gradient accumulation, the representation cache only and the
//!    two-cache step, each configuration in a process of its own (CSV and a
//!    PNG plot);
//! 3. **table**: an analogue of the paper's Table 1 for a deep head: MiniLM
//!    with the interaction-block head (from MiniLM's top layer, residual
//!    start) on the WordNet task, trained on the same examples in the same
//!    order from the same seed by a small batch, gradient accumulation to a
//!    large batch, the two-cache step at that large batch, and the full
//!    large batch; beside them the bi-encoder baselines at the same budget
//!    (pretrained cosine; cosine head and MaxSim fine-tuned with the
//!    two-cache step); Top-1/5/20, MRR@10 and WSD accuracy on test queries,
//!    mean and spread over seeds.
//!
//!     cargo run --release --example reproduce_extension -- [--quick] [--seeds N] [--parts gradients,memory,table] [--table-head interaction|mlp] [--skip-baselines]
//!
//! The default run (one seed) took 91 minutes on 2 cores with other work
//! beside it (docs/reproduction.md); `--quick` runs fewer examples and test
//! queries (its results go to `docs/results/reproduce_extension_quick/`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use gradcache::app::data::grouped_batch;
use gradcache::app::data::wordnet::{Split, WordSenseData};
use gradcache::app::eval::sense_metrics;
use gradcache::app::train::{sample_indices, TrainConfig, Trainer};
use gradcache::check::{zero_grads, GradientSnapshot};
use gradcache::models::encoders::{BertImplementation, Pooling, TextEncoderConfig};
use gradcache::models::heads::{CosineHeadConfig, HeadConfig, InteractionConfig, InteractionInit, MlpHeadConfig};
use gradcache::models::pretrained::ModelDir;
use gradcache::models::text::TextTokenizer;
use gradcache::models::weights::write_bytes_atomically;
use gradcache::{GradCache, InfoNce, StepConfig, Targets, TokenBatch};
use tch::{nn, Device, Kind};

mod probe;

#[derive(Parser, Debug)]
#[command(about = "Reproduce the two-cache extension (Gradient Cache, Section 5): gradients, memory, a Table 1 analogue")]
struct Args {
    #[command(subcommand)]
    probe: Option<Probe>,
    /// Fewer examples and test queries, smaller memory sweep.
    #[arg(long)]
    quick: bool,
    /// Seeds for the table (default 1 for the interaction head, whose runs
    /// take about an hour per seed on 2 cores, 3 for the MLP; 1 with --quick).
    #[arg(long)]
    seeds: Option<u64>,
    /// Comma-separated: gradients, memory, table.
    #[arg(long, default_value = "gradients,memory,table")]
    parts: String,
    /// The table's learned head: `interaction` (the MORES-style block over
    /// MiniLM's token states, initialised from its top layer, residual start)
    /// or `mlp` (the main job's residual MLP over mean-pooled vectors).
    #[arg(long, default_value = "interaction", value_parser = ["interaction", "mlp"])]
    table_head: String,
    /// Leave out the baseline rows (pretrained cosine, fine-tuned cosine and
    /// MaxSim), e.g. for a second table with the other head.
    #[arg(long)]
    skip_baselines: bool,
    /// Results folder (default docs/results/reproduce_extension[_quick]).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Training runs' checkpoints and metrics.
    #[arg(long, default_value = "runs/reproduce_extension")]
    runs_dir: PathBuf,
    #[arg(long, default_value = gradcache::models::pretrained::EMBEDDED_MODEL_DIR)]
    model: PathBuf,
    #[arg(long, default_value = gradcache::app::data::wordnet::EMBEDDED_TASK_DIR)]
    data: PathBuf,
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Probe {
    /// One step configuration measured in this process (median seconds,
    /// peak memory) as a JSON line: run in a fresh process per
    /// configuration by the memory part and by benchmarks/step/ and
    /// benchmarks/budget/.
    Probe(probe::ProbeArgs),
}

/// Sizes of the run, by mode.
struct Plan {
    seeds: u64,
    grad_heads: Vec<&'static str>,
    memory_head: &'static str,
    memory_batches: Vec<usize>,
    /// Largest batch for the methods that hold the whole batch's graph.
    memory_full_max: usize,
    small_batch: usize,
    large_batch: usize,
    /// Training examples seen by every method.
    examples: usize,
    test_queries: usize,
}

impl Plan {
    fn new(args: &Args) -> Plan {
        let full = Plan {
            seeds: args.seeds.unwrap_or(if args.table_head == "interaction" { 1 } else { 3 }),
            grad_heads: HeadConfig::KINDS.to_vec(),
            memory_head: "interaction",
            memory_batches: vec![16, 32, 64, 128, 256, 512],
            memory_full_max: 128,
            small_batch: 8,
            large_batch: 64,
            examples: 64 * 60,
            test_queries: 300,
        };
        if !args.quick {
            return full;
        }
        Plan {
            seeds: args.seeds.unwrap_or(1),
            memory_batches: vec![16, 32, 64, 128],
            memory_full_max: 64,
            examples: 64 * 16,
            test_queries: 100,
            ..full
        }
    }
}

/// The parameter group of a `VarStore` path, for the gradient report.
fn group_of(name: &str) -> &'static str {
    if name.starts_with("head") {
        "head"
    } else if name.contains("projection") {
        "encoder projection"
    } else if name.contains("embeddings") {
        "encoder embeddings"
    } else {
        "encoder layers"
    }
}

/// Part 1: two-cache vs full-batch gradients, same dropout masks, per head,
/// precision and parameter group.
fn gradients(plan: &Plan) -> Result<Vec<serde_json::Value>> {
    let mut rows = Vec::new();
    for head_name in &plan.grad_heads {
        for kind in [Kind::Float, Kind::Double] {
            let group_rows = gradient_groups(head_name, kind, 1)?;
            let worst = group_rows.iter().map(|r| r["max_rel_diff"].as_f64().unwrap_or(f64::NAN)).fold(0.0, f64::max);
            println!("[gradients] {head_name:<17} {:<4} largest relative difference {worst:.2e}", precision_name(kind));
            rows.extend(group_rows);
        }
    }
    Ok(rows)
}

fn precision_name(kind: Kind) -> &'static str {
    if kind == Kind::Double {
        "f64"
    } else {
        "f32"
    }
}

/// One head and precision: the two-cache step with the generator at seed 1,
/// the full-batch step at `full_seed` (1 for the comparison; another seed
/// gives other dropout masks, the control that shows the measure can fail).
fn gradient_groups(head_name: &str, kind: Kind, full_seed: i64) -> Result<Vec<serde_json::Value>> {
    tch::manual_seed(0);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let (encoder, head) = probe::small_model(&vs, head_name)?;
    if kind == Kind::Double {
        vs.double();
    }
    let (n, group) = (24, 2);
    let (q, p) = (probe::tokens(n, 16)?, probe::tokens(n * group, 16)?);
    let targets = Targets::grouped(n, n * group, group)?;
    // Temperature 1: fresh weights give large scores, and a lower
    // temperature would saturate the softmax and leave no gradient.
    let loss = InfoNce { temperature: 1.0, symmetric: false };
    // Uneven on purpose: 24 queries in chunks of 10, 48 passages in 7s.
    let config = StepConfig {
        layout: gradcache::Layout { query_chunk_size: 10, passage_chunk_size: 7, head_block_queries: 5, head_block_passages: 13 },
        ..StepConfig::default()
    };
    let mut gc = GradCache::tied(config, &encoder, head.as_ref(), &loss)?;
    zero_grads(&vs);
    tch::manual_seed(1);
    gc.step(&q, &p, &targets)?;
    let cached = GradientSnapshot::take(&vs)?;
    zero_grads(&vs);
    tch::manual_seed(full_seed);
    gc.full_batch_step(&q, &p, &targets)?;
    let full = GradientSnapshot::take(&vs)?;
    let comparison = cached.compare(&full)?;
    // Relative to the group's largest gradient: some parameters (the
    // attention key biases) have a gradient that is zero in exact
    // arithmetic, so their own ratio compares rounding with rounding.
    let mut groups: BTreeMap<&str, (usize, f64, f64)> = BTreeMap::new();
    for d in &comparison.parameters {
        let g = groups.entry(group_of(&d.name)).or_insert((0, 0.0, 0.0));
        g.0 += 1;
        g.1 = g.1.max(d.max_abs_diff);
        g.2 = g.2.max(d.reference_max_abs);
    }
    Ok(groups
        .into_iter()
        .map(|(group, (params, abs, reference))| {
            serde_json::json!({
                "head": head_name, "precision": precision_name(kind), "group": group, "parameters": params,
                "max_rel_diff": if abs == 0.0 { 0.0 } else { abs / reference }, "max_abs_diff": abs, "max_abs_grad": reference,
            })
        })
        .collect())
}

/// Part 2: peak memory per method and batch, each in a fresh process.
fn memory(plan: &Plan, threads: i32) -> Result<Vec<serde_json::Value>> {
    let exe = std::env::current_exe().context("finding this executable to run the memory probes")?;
    let mut rows = Vec::new();
    for &batch in &plan.memory_batches {
        for method in ["full", "accumulation", "rep-cache", "two-cache"] {
            if method != "two-cache" && batch > plan.memory_full_max {
                continue;
            }
            let started = Instant::now();
            let out = std::process::Command::new(&exe)
                .args(["probe", "--method", method, "--batch", &batch.to_string(), "--head", plan.memory_head])
                .args(["--steps", "1", "--threads", &threads.to_string()])
                .output()
                .with_context(|| format!("running {}", exe.display()))?;
            if !out.status.success() {
                bail!("memory probe {method} at batch {batch} failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let row: serde_json::Value = serde_json::from_slice(&out.stdout).context("reading a memory probe's JSON line")?;
            println!(
                "[memory] {method:<12} batch {batch:>4}: peak {:>7.0} MB, step {:.2} s ({:.0} s with start-up)",
                row["peak_mb"].as_f64().unwrap_or(f64::NAN),
                row["median_s"].as_f64().unwrap_or(f64::NAN),
                started.elapsed().as_secs_f64()
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Method {
    SmallBatch,
    Accumulation,
    TwoCache,
    FullBatch,
}

impl Method {
    const ALL: [Method; 4] = [Method::SmallBatch, Method::Accumulation, Method::TwoCache, Method::FullBatch];

    fn name(self) -> &'static str {
        match self {
            Method::SmallBatch => "small batch",
            Method::Accumulation => "gradient accumulation",
            Method::TwoCache => "two-cache",
            Method::FullBatch => "full batch",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Method::SmallBatch => "small_batch",
            Method::Accumulation => "accumulation",
            Method::TwoCache => "two_cache",
            Method::FullBatch => "full_batch",
        }
    }
}

/// What a table row trains: the learned head under study, or one of the
/// bi-encoder baselines at the same budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    /// The table's learned head (`--table-head`).
    Head,
    /// The encoder's cosine with one learned temperature.
    Cosine,
    /// ColBERT-style MaxSim over L2-normalised token states, no head weights.
    MaxSim,
}

impl Model {
    fn slug(self, table_head: &str) -> &str {
        match self {
            Model::Head => table_head,
            Model::Cosine => "cosine",
            Model::MaxSim => "max_sim",
        }
    }
}

/// The heads of the rows, with the learning-rate multipliers the main job
/// uses (the residual gate is one scalar that needs a larger step).
fn lr_multipliers() -> BTreeMap<String, f64> {
    BTreeMap::from([("head".to_string(), 30.0), ("head.residual.gate".to_string(), 300.0), ("encoder.projection".to_string(), 30.0)])
}

/// A row's encoder, head and InfoNCE temperature. `interaction`: MiniLM's
/// token states into an interaction block initialised from MiniLM's top
/// layer, with the residual start (MaxSim + gated block), the best
/// interaction configuration measured in docs/heads-results.md; `mlp`: the
/// main job's residual MLP. The baselines are those of docs/heads-results.md:
/// cosine head from temperature 0.05; MaxSim over normalised tokens at
/// InfoNCE temperature 0.2.
fn table_model(head: &str, model: Model) -> (TextEncoderConfig, HeadConfig, f64) {
    match model {
        Model::Cosine => (TextEncoderConfig::default(), HeadConfig::Cosine(CosineHeadConfig { initial_temperature: 0.05 }), 1.0),
        Model::MaxSim => {
            (TextEncoderConfig { pooling: Some(Pooling::Tokens), normalize: Some(true), ..Default::default() }, HeadConfig::MaxSim, 0.2)
        }
        Model::Head if head == "interaction" => (
            TextEncoderConfig { pooling: Some(Pooling::Tokens), ..Default::default() },
            HeadConfig::Interaction(InteractionConfig {
                dim: 384,
                heads: 12,
                ffn: 1536,
                dropout: 0.1,
                init: InteractionInit::EncoderTopLayer,
                ..InteractionConfig::default()
            }),
            1.0,
        ),
        Model::Head => (TextEncoderConfig::default(), HeadConfig::Mlp(MlpHeadConfig::default()), 1.0),
    }
}

/// Everything the table's training runs share.
struct TableData {
    head: String,
    model: ModelDir,
    tok: TextTokenizer,
    records: Vec<gradcache::app::data::TrainingRecord>,
    test: gradcache::app::data::wordnet::SenseEval,
    /// The test queries and corpus, tokenized once for every run.
    test_q: TokenBatch,
    test_c: TokenBatch,
}

/// One training run of the table: returns its JSON row.
fn train_one(
    plan: &Plan,
    data: &TableData,
    model: Model,
    method: Method,
    seed: u64,
    runs_dir: &Path,
    quiet: bool,
) -> Result<serde_json::Value> {
    let started = Instant::now();
    let batch = if method == Method::SmallBatch { plan.small_batch } else { plan.large_batch };
    let steps = plan.examples / batch;
    let tok = &data.tok;
    tch::manual_seed(seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let (encoder_config, head_config, temperature) = table_model(&data.head, model);
    let (encoder, _) = encoder_config.init_pretrained(&vs, "encoder", &data.model)?;
    let head = head_config.init_with_encoder(&vs, "head", &encoder)?;
    let loss = InfoNce { temperature, symmetric: false };
    let mut gc = GradCache::tied(table_step_config(), &encoder, head.as_ref(), &loss)?;
    let train = TrainConfig {
        steps,
        learning_rate: 3e-5,
        lr_multipliers: lr_multipliers(),
        warmup_steps: steps / 10,
        checkpoint_every: 0,
        keep_checkpoints: 1,
        seed,
        progress: !quiet,
        ..TrainConfig::default()
    };
    let out = runs_dir.join(format!("{}_{}_seed{seed}", model.slug(&data.head), method.slug()));
    let mut trainer = Trainer::new(train, &vs, &out, false)?;
    let evaluator = gc.with_config(gc.config().clone())?;
    let summary = trainer.run(
        |i| -> Result<gradcache::StepOutput, gradcache::AppError> {
            // The same example stream for every batch size: small-batch steps
            // 8j..8j+7 see exactly large-batch step j's examples.
            let picks = sample_indices(data.records.len(), batch, i, seed);
            let b = grouped_batch(&data.records, &picks, 2, i * batch / plan.large_batch)?;
            // Own positive only, for every method: gradient accumulation can
            // only split a grouped layout.
            let targets = Targets::grouped(b.queries.len(), b.passages.len(), 2)?;
            let (q, p) = (tok.encode(&b.queries)?, tok.encode(&b.passages)?);
            Ok(match method {
                Method::SmallBatch | Method::TwoCache => gc.step(&q, &p, &targets),
                Method::FullBatch => gc.full_batch_step(&q, &p, &targets),
                Method::Accumulation => gc.accumulation_step(&q, &p, &targets, plan.small_batch),
            }?)
        },
        // Only the trained model is evaluated (step 0 is skipped to save time).
        |i| if i == 0 { Ok(BTreeMap::new()) } else { sense_metrics(&score_with(&evaluator, &data.test_q, &data.test_c)?, &data.test) },
        &gradcache::cli::console::Console::new(),
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let label = row_label(model, method, &data.head);
    println!(
        "[table] {label:<40} seed {seed}: {steps} steps of {batch}, Top-1 {:.3}, Top-20 {:.3}, MRR@10 {:.3} ({seconds:.0} s)",
        summary.after["top1"], summary.after["top20"], summary.after["mrr10"]
    );
    Ok(serde_json::json!({
        "row": label, "model": model.slug(&data.head), "method": method.name(), "seed": seed, "batch": batch, "steps": steps, "examples": steps * batch,
        "final_loss": summary.losses.last(), "metrics": summary.after, "seconds": seconds,
    }))
}

/// Chunks and blocks of every table run (and of its evaluation).
fn table_step_config() -> StepConfig {
    StepConfig {
        layout: gradcache::Layout { query_chunk_size: 16, passage_chunk_size: 16, head_block_queries: 16, head_block_passages: 64 },
        ..StepConfig::default()
    }
}

/// A table row's name.
fn row_label(model: Model, method: Method, head: &str) -> String {
    match model {
        Model::Head => format!("{head} head, {}", method.name()),
        Model::Cosine => format!("bi-encoder fine-tuned, cosine, {}", method.name()),
        Model::MaxSim => format!("bi-encoder fine-tuned, MaxSim, {}", method.name()),
    }
}

const PRETRAINED_ROW: &str = "pretrained MiniLM, cosine, no training";

/// The pretrained encoder's cosine on the test queries (no training, so no
/// seed).
fn pretrained_row(data: &TableData) -> Result<serde_json::Value> {
    let started = Instant::now();
    let vs = nn::VarStore::new(Device::Cpu);
    let (encoder_config, head_config, temperature) = table_model(&data.head, Model::Cosine);
    let (encoder, _) = encoder_config.init_pretrained(&vs, "encoder", &data.model)?;
    let head = head_config.init(&(vs.root() / "head"))?;
    let loss = InfoNce { temperature, symmetric: false };
    let gc = GradCache::tied(table_step_config(), &encoder, head.as_ref(), &loss)?;
    let metrics = sense_metrics(&score_with(&gc, &data.test_q, &data.test_c)?, &data.test)?;
    println!("[table] {PRETRAINED_ROW:<40} Top-1 {:.3}, Top-20 {:.3}, MRR@10 {:.3}", metrics["top1"], metrics["top20"], metrics["mrr10"]);
    Ok(serde_json::json!({
        "row": PRETRAINED_ROW, "model": "pretrained", "method": "none", "seed": null, "batch": 0, "steps": 0, "examples": 0,
        "final_loss": null, "metrics": metrics, "seconds": started.elapsed().as_secs_f64(),
    }))
}

/// The trained rows of one seed, baselines first: the bi-encoders with the
/// two-cache step at the large batch, then the learned head by each method.
fn trained_rows(baselines: bool) -> Vec<(Model, Method)> {
    let base = [(Model::Cosine, Method::TwoCache), (Model::MaxSim, Method::TwoCache)];
    let head = Method::ALL.map(|m| (Model::Head, m));
    if baselines {
        base.iter().chain(head.iter()).copied().collect()
    } else {
        head.to_vec()
    }
}

fn table(plan: &Plan, args: &Args) -> Result<Vec<serde_json::Value>> {
    let model = ModelDir::open(&args.model).context("model folder missing: run scripts/gradcache.sh setup")?;
    let task = WordSenseData::read(&args.data)?;
    let tok = model.tokenizer(48)?;
    let test = task.sense_eval(Split::Test, plan.test_queries);
    let test_q: Vec<&str> = test.set.queries.iter().map(|(_, t)| t.as_str()).collect();
    let test_c: Vec<&str> = test.set.corpus.iter().map(|(_, t)| t.as_str()).collect();
    let (test_q, test_c) = (tok.encode(&test_q)?, tok.encode(&test_c)?);
    let data = TableData { head: args.table_head.clone(), records: task.training_records(), test, test_q, test_c, tok, model };
    println!(
        "[table] {} head, {} training examples per run, test {} queries x {} senses, {} seed(s)",
        data.head,
        plan.examples,
        data.test.set.queries.len(),
        data.test.set.corpus.len(),
        plan.seeds
    );
    let mut rows = Vec::new();
    if !args.skip_baselines {
        rows.push(pretrained_row(&data)?);
    }
    for seed in 0..plan.seeds {
        for (model, method) in trained_rows(!args.skip_baselines) {
            rows.push(train_one(plan, &data, model, method, seed, &args.runs_dir, args.quiet)?);
        }
    }
    Ok(rows)
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

fn write(path: &Path, text: &str) -> Result<()> {
    write_bytes_atomically(path, text.as_bytes())?;
    Ok(())
}

fn jsonl(rows: &[serde_json::Value]) -> String {
    rows.iter().map(|r| format!("{r}\n")).collect()
}

/// The markdown report of whichever parts ran.
fn report(
    plan: &Plan,
    args: &Args,
    command: &str,
    grads: &[serde_json::Value],
    mem: &[serde_json::Value],
    runs: &[serde_json::Value],
) -> String {
    let mut s = String::from("# Reproducing the two-cache extension (Gradient Cache, Section 5)\n\n");
    s += &format!(
        "Command: `{command}`. {} CPUs, {} threads, files written by that command.\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.threads
    );
    if !grads.is_empty() {
        s += "## 1. Gradient equality\n\nTwo-cache step against one full-batch graph with the same dropout masks: small BERT (2 layers, width 128), \
              24 queries x 2 passages, 16 tokens, query chunks of 10, passage chunks of 7, head blocks of 5 x 13 (uneven on purpose), \
              dropout 0.1 in encoder and head, InfoNCE at temperature 1. Per group: the largest `|g - g_full|` over its parameters' entries, divided by the largest `|g_full|` in the group (a per-parameter ratio would be meaningless for the attention key biases, whose gradient is zero in exact arithmetic and rounding noise in both steps).\n\n";
        s += "| head | precision | encoder embeddings | encoder layers | encoder projection | head |\n|---|---|---|---|---|---|\n";
        let mut keys: Vec<(String, String)> = Vec::new();
        for r in grads {
            let k = (r["head"].as_str().unwrap_or("").to_string(), r["precision"].as_str().unwrap_or("").to_string());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        for (head, precision) in keys {
            let cell = |group: &str| {
                grads
                    .iter()
                    .find(|r| r["head"] == head.as_str() && r["precision"] == precision.as_str() && r["group"] == group)
                    .map_or("–".to_string(), |r| format!("{:.1e}", r["max_rel_diff"].as_f64().unwrap_or(f64::NAN)))
            };
            s += &format!(
                "| {head} | {precision} | {} | {} | {} | {} |\n",
                cell("encoder embeddings"),
                cell("encoder layers"),
                cell("encoder projection"),
                cell("head")
            );
        }
        s += "\n";
    }
    if !mem.is_empty() {
        s += &format!(
            "## 2. Memory against batch size\n\n`{}` head on the small BERT, 2 passages per query, 16 tokens, encoder chunks of 16, head blocks \
             of 16 x 64; one process per cell, peak resident set (VmHWM, weights and libtorch included), one step after one warm-up. \
             Methods that hold the whole batch's graph stop at {} queries. Plot: `memory.png`.\n\n",
            plan.memory_head, plan.memory_full_max
        );
        s += "| queries | full batch MB | accumulation MB | rep. cache only MB | two-cache MB | two-cache s/step |\n|---|---|---|---|---|---|\n";
        for &b in &plan.memory_batches {
            let cell = |m: &str, k: &str| {
                mem.iter().find(|r| r["batch"].as_u64() == Some(b as u64) && r["method"] == m).map_or("–".to_string(), |r| {
                    format!("{:.0}", r[k].as_f64().unwrap_or(f64::NAN) * if k == "median_s" { 1000.0 } else { 1.0 })
                })
            };
            s += &format!(
                "| {b} | {} | {} | {} | {} | {} ms |\n",
                cell("Full", "peak_mb"),
                cell("Accumulation", "peak_mb"),
                cell("RepCache", "peak_mb"),
                cell("TwoCache", "peak_mb"),
                cell("TwoCache", "median_s")
            );
        }
        s += "\n";
    }
    if !runs.is_empty() {
        let head = if args.table_head == "interaction" {
            "the interaction block (cross-attention of the query's tokens to the passage's, self-attention, feed-forward; 12 heads, FFN 1536, \
             dropout 0.1) over MiniLM's token states, initialised from MiniLM's top layer, with the residual start (score = e^λ·MaxSim + α·block, \
             α = 0 at step 0), the best interaction configuration of docs/heads-results.md"
        } else {
            "the main job's MLP over [u; v; |u-v|; u*v] of mean-pooled vectors (hidden 256, dropout 0.1) with the residual start \
             (score = e^λ·cosine + α·MLP, α = 0 at step 0)"
        };
        s += &format!(
            "## 3. Table 1 analogue: a deep head on WordNet usage → sense\n\nMiniLM (pretrained, tied; {} BERT layers) with a learned head: {head}; \
             InfoNCE at temperature 1 over every passage in the batch (each query brings its positive and one hard negative: another \
             sense of the same word; only its own positive counts as positive); {} training examples per run in the same order; AdamW, \
             peak learning rate 3e-5 (x30 for the head, x300 for its residual gate), 10% warm-up then linear decay, clipping at 1. \
             Small batch = {} queries per update; accumulation = {} queries per update in sub-batches of {} (negatives only within a \
             sub-batch); two-cache and full batch = {} queries per update, all negatives shared. Baselines at the same budget (same \
             examples, order and updates, two-cache step at the large batch): the pretrained encoder's cosine; the encoder fine-tuned \
             with a cosine head (one learned temperature, from 0.05); ColBERT-style MaxSim over normalised token states, no head weights, \
             InfoNCE at temperature 0.2. Test split: {} queries against every sense of their words. Mean ± sample standard deviation \
             over {} seed(s) (seed = initialisation, data order and dropout; ± 0.000 with one seed is no spread measured).\n\n",
            match table_model(&args.table_head, Model::Head).0.implementation {
                BertImplementation::Fused => "gradcache's fused",
                BertImplementation::RustBert => "rust-bert's",
            },
            plan.examples, plan.small_batch, plan.large_batch, plan.small_batch, plan.large_batch, plan.test_queries, plan.seeds
        );
        s += "| row | queries/update | updates | Top-1 | Top-5 | Top-20 | MRR@10 | WSD acc. | minutes/run |\n|---|---|---|---|---|---|---|---|---|\n";
        let mut labels: Vec<&str> = Vec::new();
        for r in runs {
            let label = r["row"].as_str().unwrap_or("");
            if !labels.contains(&label) {
                labels.push(label);
            }
        }
        for label in labels {
            let rs: Vec<&serde_json::Value> = runs.iter().filter(|r| r["row"] == label).collect();
            let stat = |k: &str| {
                let xs: Vec<f64> = rs.iter().map(|r| r["metrics"][k].as_f64().unwrap_or(f64::NAN)).collect();
                let (mean, std) = mean_std(&xs);
                format!("{mean:.3} ± {std:.3}")
            };
            let minutes = rs.iter().map(|r| r["seconds"].as_f64().unwrap_or(0.0)).sum::<f64>() / 60.0 / rs.len() as f64;
            let per_update = if rs[0]["batch"] == 0 { "–".to_string() } else { rs[0]["batch"].to_string() };
            s += &format!(
                "| {label} | {per_update} | {} | {} | {} | {} | {} | {} | {minutes:.1} |\n",
                rs[0]["steps"],
                stat("top1"),
                stat("top5"),
                stat("top20"),
                stat("mrr10"),
                stat("wsd_accuracy")
            );
        }
        s += "\nPer-run rows: `runs.jsonl`.\n";
    }
    s
}

fn main() -> Result<()> {
    gradcache::runtime::tune_allocator();
    let args = Args::parse();
    if let Some(Probe::Probe(p)) = &args.probe {
        println!("{}", probe::probe(p)?);
        return Ok(());
    }
    tch::set_num_threads(args.threads);
    let plan = Plan::new(&args);
    let parts: Vec<&str> = args.parts.split(',').map(str::trim).collect();
    if let Some(bad) = parts.iter().find(|p| !["gradients", "memory", "table"].contains(p)) {
        bail!("unknown part {bad:?}: use gradients, memory and/or table");
    }
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(if args.quick { "docs/results/reproduce_extension_quick" } else { "docs/results/reproduce_extension" })
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let command = format!(
        "cargo run --release --example reproduce_extension --{}",
        std::env::args().skip(1).map(|a| format!(" {a}")).collect::<String>()
    );
    let started = Instant::now();
    let grads = if parts.contains(&"gradients") { gradients(&plan)? } else { Vec::new() };
    if !grads.is_empty() {
        write(&out.join("gradients.jsonl"), &jsonl(&grads))?;
    }
    let mem = if parts.contains(&"memory") { memory(&plan, args.threads)? } else { Vec::new() };
    if !mem.is_empty() {
        let mut csv = String::from("method,batch,passages,peak_mb,before_step_mb,median_s\n");
        for r in &mem {
            csv += &format!(
                "{},{},{},{},{},{}\n",
                r["method"].as_str().unwrap_or(""),
                r["batch"],
                r["passages"],
                r["peak_mb"],
                r["before_step_mb"],
                r["median_s"]
            );
        }
        write(&out.join("memory.csv"), &csv)?;
        let plotted = std::process::Command::new("./.python")
            .args(["benchmarks/step/plot_memory.py", &out.join("memory.csv").to_string_lossy(), &out.join("memory.png").to_string_lossy()])
            .arg(format!("Peak memory per step, {} head (written by {command})", plan.memory_head))
            .status();
        if !matches!(plotted, Ok(s) if s.success()) {
            eprintln!("memory.png not written: the plot needs matplotlib (scripts/gradcache.sh setup-bench)");
        }
    }
    let runs = if parts.contains(&"table") { table(&plan, &args)? } else { Vec::new() };
    if !runs.is_empty() {
        write(&out.join("runs.jsonl"), &jsonl(&runs))?;
    }
    let mut text = report(&plan, &args, &command, &grads, &mem, &runs);
    text += &format!("\nWall time of the command: {:.1} min.\n", started.elapsed().as_secs_f64() / 60.0);
    write(&out.join("README.md"), &text)?;
    println!("\n{text}");
    println!("results in {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libtorch's generator is process-wide: steps on two test threads at
    /// once break each other's dropout replay (the replay check says so).
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn small_batch_steps_see_exactly_the_large_batch_examples() {
        // The table's comparison rests on this: with one seed, large-batch
        // step j and small-batch steps 8j..8j+7 hold the same records in the
        // same order, across an epoch boundary too.
        let (n, small, large, seed) = (100, 8, 64, 7);
        for j in 0..4 {
            let large_picks = sample_indices(n, large, j, seed);
            let small_picks: Vec<usize> =
                (0..large / small).flat_map(|k| sample_indices(n, small, j * (large / small) + k, seed)).collect();
            assert_eq!(small_picks, large_picks, "large step {j}");
        }
    }

    #[test]
    fn gradient_part_reports_two_cache_equal_to_full_batch() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let plan = Plan { grad_heads: vec!["mlp", "interaction"], ..Plan::new(&Args::parse_from(["reproduce_extension", "--quick"])) };
        let rows = gradients(&plan).unwrap();
        // Two heads × two precisions, each with embeddings, layers and head
        // (and a projection for the interaction block).
        assert_eq!(rows.len(), 2 * 3 + 2 * 4);
        for r in &rows {
            let rel = r["max_rel_diff"].as_f64().unwrap();
            let bound = if r["precision"] == "f64" { 1e-12 } else { 1e-5 };
            assert!(rel <= bound, "{r}");
            assert!(r["parameters"].as_u64().unwrap() > 0);
        }
    }

    #[test]
    fn gradient_part_catches_steps_that_saw_other_dropout_masks() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        // Control: the full-batch step from another generator state draws
        // other dropout masks; the measure must show it.
        for head in ["mlp", "interaction"] {
            let rows = gradient_groups(head, Kind::Double, 2).unwrap();
            let worst = rows.iter().map(|r| r["max_rel_diff"].as_f64().unwrap()).fold(0.0, f64::max);
            assert!(worst > 1e-2, "{head}: {worst}");
        }
    }

    #[test]
    fn table_statistics_are_mean_and_sample_spread() {
        let (mean, std) = mean_std(&[0.2, 0.4, 0.6]);
        assert!((mean - 0.4).abs() < 1e-12);
        assert!((std - 0.2).abs() < 1e-12); // sqrt(((0.2)^2 + 0 + (0.2)^2) / 2)
        assert_eq!(mean_std(&[0.5]), (0.5, 0.0));
        assert_eq!(group_of("head.cross.query.weight"), "head");
        assert_eq!(group_of("encoder.projection.weight"), "encoder projection");
        assert_eq!(group_of("encoder.bert.embeddings.word_embeddings.weight"), "encoder embeddings");
        assert_eq!(group_of("encoder.bert.encoder.layer.0.output.dense.weight"), "encoder layers");
    }
}

/// The step's model scoring every query against every item of a corpus in
/// eval mode, cut as the step's layout cuts a batch.
fn score_with<QE: gradcache::Encoder + ?Sized, PE: gradcache::Encoder + ?Sized>(
    gc: &GradCache<'_, QE, PE>,
    queries: &QE::Input,
    corpus: &PE::Input,
) -> Result<tch::Tensor, gradcache::AppError> {
    let (model, config) = (gc.parts(), gc.config());
    gradcache::app::eval::score_corpus(
        model.query_encoder,
        model.passage_encoder,
        model.head,
        &config.layout,
        config.precision,
        queries,
        corpus,
    )
}
