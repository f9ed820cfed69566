//! The command line's layer: the arguments of `gradcache train` (and of
//! `examples/train_reranker`, the main job), resolved into the recipe's
//! config; the arguments shared by the commands that run a bundle; the
//! sample model `gradcache check-head` checks a head on. The binary (`src/bin/gradcache.rs`) and the example are thin
//! over it.

pub mod console;

use std::path::PathBuf;

use crate::app::data::wordnet::Split;
use crate::app::error::Result;
use crate::app::recipe::{RerankerConfig, Start};
use crate::app::scorer::Scorer;
use crate::check::{check_head, HeadCheckReport, Tolerance};
use crate::core::batch::TokenBatch;
use crate::core::config::{MemoryConfig, StepConfig};
use crate::core::layout::Layout;
use crate::core::loss::InfoNce;
use crate::core::step::GradCache;
use crate::core::targets::Targets;
use crate::error::GradCacheError;
use crate::models::encoders::{Pooling, TinyEncoderConfig};
use crate::models::heads::HeadConfig;
use crate::runtime::precision::Precision;

/// Command-line settings of a run: a config file and flags over it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TrainArgs {
    /// JSON config (any subset of the fields; flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Training steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Queries per batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Encoder chunks of this many items (queries and passages, in batch
    /// order unless --sort-by-length) instead of the recipe's token budget;
    /// head blocks of that many queries × 4× as many passages
    /// ([`Layout::from_chunk_size`]).
    #[arg(long)]
    pub chunk_size: Option<usize>,
    /// What the step keeps instead of recomputing: `all` (recompute all,
    /// the default), `none` (keep everything), `auto` (half the available
    /// memory), a budget in MB (e.g. `2000`), or `StepConfig.memory`'s JSON.
    #[arg(long, value_parser = parse_memory)]
    pub memory: Option<MemoryConfig>,
    /// Cut encoder chunks from the texts sorted by length (less padding).
    #[arg(long)]
    pub sort_by_length: bool,
    /// Cut both sides' encoder chunks by a budget of padded tokens (items ×
    /// the chunk's longest) instead of by items: short texts go in large
    /// chunks, long ones in small (sorts by length; replaces the chunk
    /// sizes; the recipe's default is 512).
    #[arg(long)]
    pub chunk_tokens: Option<usize>,
    /// The same for query chunks only (over --chunk-tokens).
    #[arg(long)]
    pub query_chunk_tokens: Option<usize>,
    /// The same for passage chunks only (over --chunk-tokens).
    #[arg(long)]
    pub passage_chunk_tokens: Option<usize>,
    /// Size head blocks by cost: as many passage columns per block as keep
    /// its scoring FLOPs within this many (the head's own count; replaces
    /// the layout's block columns).
    #[arg(long)]
    pub head_block_flops: Option<f64>,
    /// Choose chunk and block sizes for each batch from the memory budget
    /// (needs `--memory` with a budget; `--chunk-size` is then ignored).
    #[arg(long)]
    pub auto_sizes: bool,
    /// Forward passes under autocast: `auto` (the recipe's default: bf16
    /// where the CPU or GPU has bfloat16 units, f32 elsewhere; the run's
    /// header and config.json say which), `f32` or `bf16` (`f16` is
    /// refused: no loss scaling).
    #[arg(long, value_parser = parse_precision)]
    pub precision: Option<Precision>,
    /// Peak learning rate.
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Queries evaluated before and after training.
    #[arg(long)]
    pub dev_queries: Option<usize>,
    /// After training, also evaluate this many test-split queries.
    #[arg(long)]
    pub test_queries: Option<usize>,
    /// Also evaluate every N steps (into metrics.jsonl; 0: only before and after).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// dev or test.
    #[arg(long, value_parser = parse_split)]
    pub eval_split: Option<Split>,
    /// Seed of initialisation, data order and dropout.
    #[arg(long)]
    pub seed: Option<u64>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long)]
    pub device: Option<String>,
    /// The run folder.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Train on these records instead of the WordNet training split: JSONL
    /// ({"query", "positive", "negatives"}) or a .parquet table with
    /// sentence-transformers' columns (anchor/positive/negative_n, or
    /// query/positive(s)/negatives).
    #[arg(long, visible_alias = "train-data")]
    pub train_jsonl: Option<PathBuf>,
    /// The pretrained model: a Hugging Face folder (BERT, RoBERTa,
    /// XLM-RoBERTa, ModernBERT with `tokenizer.json` or a BERT
    /// `vocab.txt`), or a sentence-transformers folder around one
    /// (docs/models.md). Default: the embedded all-MiniLM-L6-v2.
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Longest tokenized text (default 48).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Your dev set, a BEIR folder (corpus.jsonl, queries.jsonl,
    /// qrels/SPLIT.tsv with SPLIT from --eval-split): evaluated before,
    /// every --eval-every steps and after training, as `gradcache eval`
    /// does (first stage and the head's rerank of the top
    /// --eval-retrieve-k).
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Candidates per query the head reranks in the --eval-data evaluation
    /// (default 100).
    #[arg(long)]
    pub eval_retrieve_k: Option<usize>,
    /// Also evaluate on WordNet's split (the default only when training on
    /// WordNet).
    #[arg(long)]
    pub wordnet_eval: bool,
    /// Keep the model of the best evaluation by this metric in
    /// OUTPUT/model (the last one in OUTPUT/last): e.g. mrr10 (the
    /// reranked stage's with --eval-data), first_stage.ndcg10,
    /// wsd_accuracy.
    #[arg(long)]
    pub select_best: Option<String>,
    /// Continue from the newest intact checkpoint in the output folder
    /// (refused when any setting that shapes training differs).
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Start over in an output folder that holds another run (its
    /// checkpoints and metrics are kept one generation back, as
    /// checkpoints.previous/ and metrics.previous.jsonl).
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl TrainArgs {
    /// The start the flags ask for.
    pub fn start(&self) -> Start {
        match (self.resume, self.overwrite) {
            (true, _) => Start::Resume,
            (false, true) => Start::Overwrite,
            (false, false) => Start::New,
        }
    }
}

fn parse_memory(s: &str) -> std::result::Result<MemoryConfig, String> {
    s.parse().map_err(|e: GradCacheError| e.to_string())
}

fn parse_precision(s: &str) -> std::result::Result<Precision, String> {
    s.parse().map_err(|e: GradCacheError| e.to_string())
}

fn parse_split(s: &str) -> std::result::Result<Split, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| format!("unknown split `{s}`: dev, test or train"))
}

impl TrainArgs {
    /// The run's configuration: the config file (or the defaults) with the
    /// flags over it, validated.
    ///
    /// # Errors
    /// As [`RerankerConfig::read`] and [`RerankerConfig::validate`].
    pub fn resolve(&self) -> Result<RerankerConfig> {
        let mut c = match &self.config {
            Some(path) => RerankerConfig::read(path)?,
            None => RerankerConfig::default(),
        };
        if let Some(v) = self.steps {
            c.train.steps = v;
        }
        if let Some(v) = self.batch_size {
            c.batch_size = v;
        }
        if let Some(v) = self.memory {
            c.step.memory = v;
        }
        if self.sort_by_length {
            c.step.sort_by_length = true;
        }
        if self.auto_sizes {
            c.step.auto_sizes = true;
        }
        if let Some(p) = self.precision {
            c.step.precision = p;
        }
        if let Some(v) = self.chunk_size {
            // Item chunks asked for: the token budgets (the recipe has
            // them by default) would override them.
            c.step.layout = Layout::from_chunk_size(v);
            c.step.query_chunk_tokens = None;
            c.step.passage_chunk_tokens = None;
        }
        if let Some(v) = self.query_chunk_tokens.or(self.chunk_tokens) {
            c.step.query_chunk_tokens = Some(v);
        }
        if let Some(v) = self.passage_chunk_tokens.or(self.chunk_tokens) {
            c.step.passage_chunk_tokens = Some(v);
        }
        if let Some(v) = self.head_block_flops {
            c.step.head_block_flops = Some(v);
        }
        if let Some(v) = self.learning_rate {
            c.train.learning_rate = v;
        }
        if let Some(v) = self.dev_queries {
            c.dev_queries = v;
        }
        if let Some(v) = self.test_queries {
            c.test_queries = v;
        }
        if let Some(v) = self.eval_every {
            c.train.eval_every = v;
        }
        if let Some(v) = self.eval_split {
            c.eval_split = v;
        }
        if let Some(v) = self.seed {
            c.train.seed = v;
        }
        if let Some(v) = &self.device {
            c.device = v.clone();
        }
        if let Some(v) = &self.output_dir {
            c.output_dir = v.clone();
        }
        if let Some(v) = &self.train_jsonl {
            c.train_jsonl = Some(v.clone());
        }
        if let Some(v) = &self.model_dir {
            c.model_dir = v.clone();
        }
        if let Some(v) = self.max_len {
            c.max_len = v;
        }
        if let Some(v) = &self.eval_data {
            c.eval_data = Some(v.clone());
        }
        if let Some(v) = self.eval_retrieve_k {
            c.eval_retrieve_k = v;
        }
        if self.wordnet_eval {
            c.wordnet_eval = Some(true);
        }
        if let Some(v) = &self.select_best {
            c.select_best = Some(v.clone());
        }
        if self.quiet {
            c.train.progress = false;
        }
        c.validate()?;
        Ok(c)
    }
}

/// How a command runs a model bundle (`gradcache eval`, `encode`,
/// `rerank`): the device and the forward passes' precision.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Forward passes under autocast: auto (bf16 where the CPU or GPU has
    /// bfloat16 units, as this project's CPUs do; f32 elsewhere), f32
    /// or bf16 (scores move by its rounding: docs/inference.md).
    #[arg(long, default_value = "auto", value_parser = parse_precision)]
    pub precision: Precision,
}

impl RunArgs {
    /// The bundle at `model` on the device, at the precision.
    ///
    /// # Errors
    /// As [`crate::runtime::parse_device`], [`Scorer::load`] and
    /// [`Scorer::with_precision`].
    pub fn load(&self, model: &std::path::Path) -> Result<Scorer> {
        Scorer::load(model, crate::runtime::parse_device(&self.device)?)?.with_precision(self.precision)
    }
}

/// `gradcache check-head`: checks `head` (made for checking: see
/// [`HeadConfig::for_checking`]) on a tiny random encoder of width `dim`
/// with `dropout`, over `queries` queries with `group` passages each, cut
/// into several uneven chunks and blocks; in f64 at [`Tolerance::F64`], or
/// in f32 at [`Tolerance::F32`].
///
/// # Errors
/// As [`check_head`].
pub fn check_sample_head(head: &HeadConfig, dim: usize, dropout: f64, queries: usize, group: usize, f32: bool) -> Result<HeadCheckReport> {
    let width = head.dim().unwrap_or(dim);
    tch::manual_seed(0);
    let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let pooling = if head.reads_tokens() { Pooling::Tokens } else { Pooling::Mean };
    let encoder = TinyEncoderConfig { vocab_size: 100, max_len: 10, dim: width, dropout, pooling }.init(&(vs.root() / "encoder"))?;
    let scoring = head.for_checking().init(&(vs.root() / "head"))?;
    let tolerance = if f32 {
        Tolerance::F32
    } else {
        vs.double();
        Tolerance::F64
    };
    let (q, p) = (TokenBatch::random(queries, 1..=10, 1..100)?, TokenBatch::random(queries * group, 1..=10, 1..100)?);
    let targets = Targets::grouped(queries, queries * group, group)?;
    let loss = InfoNce { temperature: 1.0, symmetric: false };
    // A layout that cuts the sample into several uneven chunks and blocks.
    let cut = |n: usize| (n / 2 + 1).max(1);
    let layout = Layout {
        query_chunk_size: cut(queries),
        passage_chunk_size: cut(queries * group),
        head_block_queries: cut(queries),
        head_block_passages: cut(queries * group),
    };
    let gc = GradCache::tied(StepConfig { layout, ..StepConfig::default() }, &encoder, scoring.as_ref(), &loss)?;
    check_head(&gc, &vs, &q, &p, &targets, tolerance).map_err(Into::into)
}

/// The metrics a run's table shows, in its columns' order.
const TABLE_METRICS: [&str; 6] = ["wsd_accuracy", "top1", "top5", "top20", "mrr10", "ndcg10"];

/// Prints a finished run's comparison (what `gradcache train` and the main
/// job print at the end): the test split when evaluated, then the split's
/// metrics of the pretrained cosine, the untrained model, the committed
/// baselines (when measured at the run's budget) and the run, the loss, and
/// where the bundle is. Nothing for a process that is not rank 0.
pub fn print_report(report: &crate::app::recipe::TrainReport) {
    let stdout = std::io::stdout();
    // A closed pipe (`| head`) is the reader's choice, not an error.
    let _ = write_report(report, &mut stdout.lock());
}

/// [`print_report`] into `out`.
///
/// # Errors
/// `out`'s write errors.
pub fn write_report(report: &crate::app::recipe::TrainReport, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let Some(s) = &report.summary else { return Ok(()) };
    if let Some((queries, metrics)) = &s.test {
        writeln!(out, "test split ({queries} queries): {metrics:?}")?;
    }
    let this_run = format!("this run: {} two-cache steps, seed {}", s.steps, s.seed);
    let pretrained = format!("pretrained {}, cosine", s.model_name);
    if s.after.contains_key(TABLE_METRICS[0]) {
        let header: Vec<String> = ["WSD acc", "Top-1", "Top-5", "Top-20", "MRR@10", "nDCG@10"].iter().map(|h| format!("{h:>13}")).collect();
        writeln!(out, "\n{:<48}{}", format!("{} metrics ({} queries)", s.split, s.eval_queries), header.join(" "))?;
        let row = |out: &mut dyn std::io::Write, name: &str, m: &std::collections::BTreeMap<String, f64>| -> std::io::Result<()> {
            let cells: Vec<String> = TABLE_METRICS.iter().map(|k| format!("{:>13.3}", m.get(*k).copied().unwrap_or(f64::NAN))).collect();
            writeln!(out, "{name:<48}{}", cells.join(" "))
        };
        if let Some(cosine) = &s.pretrained_cosine {
            row(out, &pretrained, cosine)?;
        }
        if let Some(before) = &s.before {
            row(out, "encoder + untrained head", before)?;
        }
        if let Some((path, reference)) = &s.baselines {
            let differs = reference.differences(&s.budget);
            if differs.is_empty() {
                for r in &reference.rows {
                    let cells: Vec<String> = TABLE_METRICS
                        .iter()
                        .map(|k| {
                            format!(
                                "{:>13}",
                                format!(
                                    "{:.3}±{:.3}",
                                    r.mean.get(*k).copied().unwrap_or(f64::NAN),
                                    r.sd.get(*k).copied().unwrap_or(f64::NAN)
                                )
                            )
                        })
                        .collect();
                    writeln!(out, "{:<48}{}", format!("{} ({} seeds)", r.name, r.seeds), cells.join(" "))?;
                }
            } else {
                writeln!(out, "(baselines in {} were measured at another budget: {} differ)", path.display(), differs.join(", "))?;
            }
        }
        row(out, &this_run, &s.after)?;
    }
    if let Some((name, queries, documents, k)) = &s.eval_data {
        let header: Vec<String> =
            ["Top-1", "Top-5", "Top-20", "MRR@10", "nDCG@10", "Recall@100"].iter().map(|h| format!("{h:>11}")).collect();
        writeln!(out, "\n{:<60}{}", format!("{name} {} ({queries} queries, {documents} documents)", s.split), header.join(" "))?;
        let row =
            |out: &mut dyn std::io::Write, name: &str, stage: &str, m: &std::collections::BTreeMap<String, f64>| -> std::io::Result<()> {
                let cells: Vec<String> = crate::app::metrics::RETRIEVAL_METRICS
                    .iter()
                    .map(|k| format!("{:>11.3}", m.get(&format!("{stage}.{k}")).copied().unwrap_or(f64::NAN)))
                    .collect();
                writeln!(out, "{name:<60}{}", cells.join(" "))
            };
        if let Some(cosine) = &s.pretrained_cosine {
            row(out, &format!("{pretrained} (first stage)"), "first_stage", cosine)?;
        }
        if let Some(before) = &s.before {
            row(out, &format!("encoder + untrained head, reranking the top {k}"), "reranked", before)?;
        }
        row(out, &format!("{this_run}: first stage"), "first_stage", &s.after)?;
        row(out, &format!("{this_run}: reranking the top {k}"), "reranked", &s.after)?;
    }
    if s.pretrained_cosine.is_none() && s.before.is_none() && s.after.is_empty() {
        writeln!(out, "\n(no evaluation: --eval-data or --wordnet-eval)")?;
    }
    if let Some(first) = s.losses.first() {
        writeln!(out, "loss {:.4} -> {:.4}", first, s.losses.last().copied().unwrap_or(*first))?;
        writeln!(out, "step passes, median over steps: {}", crate::core::output::describe_rates(&s.rates.0, s.rates.1))?;
    }
    if let Some((metric, step, value)) = &s.best {
        writeln!(
            out,
            "best by {metric}: step {step} ({value:.4}), kept in {}; the last model is in {}",
            report.bundle.display(),
            s.output_dir.join("last").display()
        )?;
    }
    writeln!(out, "model bundle in {} (gradcache eval / rerank --model {})", report.bundle.display(), report.bundle.display())?;
    writeln!(out, "outputs in {}", s.output_dir.display())?;
    Ok(())
}

/// `gradcache serve`'s flags (TEI's names and defaults).
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// A model bundle (e.g. runs/train_reranker/model).
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Port (0: any free one; the address is printed).
    #[arg(long, default_value_t = 3000)]
    pub port: u16,
    /// The device and precision.
    #[command(flatten)]
    pub run: RunArgs,
    /// Which encoder /embed, /embed_all and /v1/embeddings run: passages
    /// (what an index holds) or queries; the same one when tied.
    #[arg(long, default_value = "passages", value_parser = ["passages", "queries"])]
    pub embed_side: String,
    /// The model name /info and /v1/embeddings report (default: the bundle
    /// folder's name, never its full path).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on every route but /health,
    /// /ping, GET / and /metrics (as TEI).
    #[arg(long, env = "API_KEY")]
    pub api_key: Option<String>,
    /// Inputs in flight at once (a rerank request counts its texts); over it, 429.
    #[arg(long, default_value_t = crate::app::serve::Limits::default().max_concurrent_requests)]
    pub max_concurrent_requests: usize,
    /// Padded tokens per batch.
    #[arg(long, default_value_t = crate::app::serve::Limits::default().max_batch_tokens)]
    pub max_batch_tokens: usize,
    /// Entries per batch at most.
    #[arg(long)]
    pub max_batch_requests: Option<usize>,
    /// Texts per request; over it, 422.
    #[arg(long, default_value_t = crate::app::serve::Limits::default().max_client_batch_size)]
    pub max_client_batch_size: usize,
    /// Bytes per request body; over it, 413.
    #[arg(long, default_value_t = crate::app::serve::Limits::default().payload_limit)]
    pub payload_limit: usize,
    /// Cut texts over the model's length (`--auto-truncate false`: refuse
    /// them with 422 unless a request says `truncate: true`).
    #[arg(long, default_value_t = crate::app::serve::Limits::default().auto_truncate, action = clap::ArgAction::Set)]
    pub auto_truncate: bool,
    /// Threads that tokenize (default: the cores).
    #[arg(long, default_value_t = crate::app::serve::Limits::default().tokenization_workers)]
    pub tokenization_workers: usize,
    /// Open connections at most; past it, new ones wait to be accepted.
    #[arg(long, default_value_t = crate::app::serve::Limits::default().max_connections)]
    pub max_connections: usize,
    /// Seconds for a request's head, counted from when the connection waits
    /// for one (so also a kept-alive connection's idle time).
    #[arg(long, default_value_t = crate::app::serve::Timeouts::default().header_read)]
    pub header_read_timeout: u64,
    /// Seconds between two pieces of a request body (then 408).
    #[arg(long, default_value_t = crate::app::serve::Timeouts::default().body_read)]
    pub body_read_timeout: u64,
    /// Seconds for a whole request, head to answer (then 408).
    #[arg(long, default_value_t = crate::app::serve::Timeouts::default().request)]
    pub request_timeout: u64,
    /// Seconds the model thread has to answer /health (between batches)
    /// before the server reports itself unhealthy (503).
    #[arg(long, default_value_t = crate::app::serve::Timeouts::default().health)]
    pub health_timeout: u64,
    /// Seconds after SIGTERM for requests in flight; then open connections
    /// are cut and the process exits.
    #[arg(long, default_value_t = crate::app::serve::Timeouts::default().shutdown)]
    pub shutdown_timeout: u64,
}

impl ServeArgs {
    /// The server's configuration.
    pub fn config(&self) -> crate::app::serve::ServeConfig {
        crate::app::serve::ServeConfig {
            model: self.model.clone(),
            address: std::net::SocketAddr::new(self.host, self.port),
            device: self.run.device.clone(),
            precision: self.run.precision,
            embed_side: if self.embed_side == "queries" { crate::core::layout::Side::Queries } else { crate::core::layout::Side::Passages },
            served_model_name: self.served_model_name.clone(),
            api_key: self.api_key.clone(),
            limits: crate::app::serve::Limits {
                max_concurrent_requests: self.max_concurrent_requests,
                max_batch_tokens: self.max_batch_tokens,
                max_batch_requests: self.max_batch_requests,
                max_client_batch_size: self.max_client_batch_size,
                payload_limit: self.payload_limit,
                auto_truncate: self.auto_truncate,
                tokenization_workers: self.tokenization_workers,
                max_connections: self.max_connections,
            },
            timeouts: crate::app::serve::Timeouts {
                header_read: self.header_read_timeout,
                body_read: self.body_read_timeout,
                request: self.request_timeout,
                health: self.health_timeout,
                shutdown: self.shutdown_timeout,
            },
        }
    }
}
