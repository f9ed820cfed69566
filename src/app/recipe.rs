//! The training recipe behind `gradcache train` and
//! `examples/train_reranker` (the README's main job): a BERT folder's
//! encoder (tied by default) and a learned head, trained with the two-cache
//! step on the embedded WordNet task or the user's JSONL records, evaluated
//! on WordNet's dev (or test) split before and after, and saved as a model
//! bundle ([`crate::app::scorer`]).
//!
//! A run writes into its output folder: `config.json` (the resolved
//! config), `train_config.json`, `metrics.jsonl`, `checkpoints/`,
//! `results.json` and the bundle `model/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::app::data::wordnet::{Split, WordSenseData};
use crate::app::data::{grouped_batch, GroupedBatch, Malformed, TrainingRecord};
use crate::app::error::{AppError, Result};
use crate::app::eval::{sense_metrics, ReferenceResults};
use crate::app::scorer::{ModelConfig, Scorer};
use crate::app::train::{sample_indices, TrainConfig, Trainer};
use crate::core::batch::{Chunk, TokenBatch};
use crate::core::config::StepConfig;
use crate::core::distributed::Collective;
use crate::core::layout::{ChunkRule, Layout, Side};
use crate::core::loss::InfoNce;
use crate::core::step::GradCache;
use crate::core::targets::Targets;
use crate::error::GradCacheError;
use crate::models::encoders::{Pooling, TextEncoderConfig};
use crate::models::heads::{CosineHeadConfig, HeadConfig};
use crate::models::pretrained::ModelDir;
use crate::models::text::TextTokenizer;
use crate::models::weights::write_bytes_atomically;
use crate::runtime::parse_device;
use crate::runtime::precision::Precision;

/// The recipe's layout: blocks of 16 × 64 pairs, half the library's
/// ([`Layout::default`]), what the main job's memory figures and committed
/// baselines were measured at; and chunks of 16 texts, which apply only
/// where the token budgets ([`RECIPE_CHUNK_TOKENS`]) are unset (e.g.
/// `--chunk-size`).
pub const RECIPE_LAYOUT: Layout = Layout { query_chunk_size: 16, passage_chunk_size: 16, head_block_queries: 16, head_block_passages: 64 };

/// The recipe's encoder chunks: each side sorted by length and cut into
/// chunks of at most 512 padded tokens (items × the chunk's longest), where
/// the library cuts fixed counts of items in batch order: about 10 texts of
/// the recipe's `max_len` of 48 at worst, more of the short ones. Token
/// chunks first cut the main job's step from 3.12 to 2.37 s at 768
/// (docs/benchmarks.md); once an encoder chunk no longer paid for a whole
/// embedding table's gradient, smaller ones won in both precisions (f32
/// 1.49–1.53 s at 512 vs 1.59–1.60 at 768, bf16 0.62–0.66 vs 0.64–0.68;
/// docs/benchmarks.md has the sweep). A longer `max_len` wants a larger
/// budget (about 16 × `max_len` keeps chunks of 16 full-length texts), or
/// `--chunk-size` for item chunks.
pub const RECIPE_CHUNK_TOKENS: usize = 512;

/// The recipe's InfoNCE temperature: 1, where the library's default is
/// 0.05 ([`InfoNce::default`]). The recipe's heads start from the residual
/// cosine, which carries a learned scale of its own (20 at the start, the
/// library's 1/0.05), so the loss adds none.
pub const RECIPE_TEMPERATURE: f64 = 1.0;

/// The recipe's learning-rate multipliers: a freshly initialised head on a
/// pretrained encoder learns at 30× the encoder's rate. The residual gate
/// is one scalar that Adam moves by about one learning rate per step: at
/// the head's ×30 it reached only -0.04 in 100 steps, leaving Φ no say
/// (docs/heads-results.md), so it gets ×300.
pub fn recipe_lr_multipliers() -> BTreeMap<String, f64> {
    BTreeMap::from([("head".to_string(), 30.0), ("head.residual.gate".to_string(), 300.0)])
}

/// The recipe's peak learning rate, 3e-5 (the library's 2e-5,
/// [`TrainConfig::default`], is sentence-transformers' default for full
/// fine-tuning; the main job's 100 steps with a fresh head measured better
/// at 3e-5 in docs/heads-results.md's runs).
pub const RECIPE_LEARNING_RATE: f64 = 3e-5;

/// The recipe's precision: `auto`, bf16 where the device multiplies it in
/// hardware and f32 elsewhere ([`Precision::resolve`]), where the library
/// stays f32 (its exactness tests compare in f32/f64). On this project's
/// CPUs (AVX-512 BF16) the main job's step runs in 0.42× its f32 time with dev and
/// test metrics within the f32 seeds' spread (docs/benchmarks.md,
/// "bf16 on the CPU").
pub const RECIPE_PRECISION: Precision = Precision::Auto;

/// The recipe checkpoints every 40 steps (the library's default, 0, only at
/// the end): a killed main job loses at most 40 of its 100 steps.
pub const RECIPE_CHECKPOINT_EVERY: usize = 40;

/// The recipe's encoders do not normalise their vectors, stated here where
/// the library leaves it to the model folder ([`TextEncoderConfig`]): the
/// embedded all-MiniLM-L6-v2 is a sentence-transformers folder with a
/// Normalize module, and the main job's heads and committed results were
/// trained on unnormalised mean vectors (the residual start's cosine
/// normalises on its own). A config with `"encoder": {"normalize": null}`
/// takes a folder's Normalize module.
pub const RECIPE_NORMALIZE: Option<bool> = Some(false);

/// Where the recipe's defaults differ from the library's, field by field
/// (dotted paths of the config's JSON, a path covering the fields under
/// it), each with its constant: every other
/// field of the step, loss, head, encoder and training blocks is the
/// library's default (`tests/defaults.rs` checks both ways).
pub const RECIPE_OVERRIDES: [&str; 12] = [
    "encoder.normalize",
    "step.precision",
    "step.query_chunk_size",
    "step.passage_chunk_size",
    "step.query_chunk_tokens",
    "step.passage_chunk_tokens",
    "step.head_block_queries",
    "step.head_block_passages",
    "loss.temperature",
    "train.learning_rate",
    "train.lr_multipliers",
    "train.checkpoint_every",
];

/// Everything a run needs; JSON with these fields, all optional (nested
/// blocks merge over the defaults, see [`crate::app::settings::layered`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RerankerConfig {
    /// A model folder (docs/models.md): BERT, RoBERTa, XLM-RoBERTa or
    /// ModernBERT, or a sentence-transformers folder around one.
    pub model_dir: PathBuf,
    /// The prepared WordNet task (training data unless `train_jsonl`; its
    /// dev split evaluated when [`RerankerConfig::wordnet_eval`] says so).
    pub data_dir: PathBuf,
    /// Train on these records instead of the WordNet training split: JSONL,
    /// or a Parquet table (`.parquet`, sentence-transformers' columns:
    /// [`crate::app::data::parquet`]).
    pub train_jsonl: Option<PathBuf>,
    /// Skip (and count) malformed JSONL lines instead of stopping.
    pub skip_malformed: bool,
    /// The run folder.
    pub output_dir: PathBuf,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// Longest tokenized text.
    pub max_len: usize,
    /// Queries per batch.
    pub batch_size: usize,
    /// Passages per query: one positive and `group_size - 1` hard negatives.
    pub group_size: usize,
    /// Queries evaluated before and after training.
    pub dev_queries: usize,
    /// The split evaluated: `dev` (choosing configurations) or `test`, of
    /// WordNet and of `eval_data` (its `qrels/{split}.tsv`).
    pub eval_split: Split,
    /// A BEIR folder (`corpus.jsonl`, `queries.jsonl`, `qrels/`) evaluated
    /// before, every `train.eval_every` steps and after training, as
    /// `gradcache eval` does: the first stage over the whole corpus
    /// (streamed) and the head's rerank of each query's top
    /// `eval_retrieve_k`, logged as `first_stage.*` and `reranked.*`.
    pub eval_data: Option<PathBuf>,
    /// Candidates per query the head reranks in the `eval_data` evaluation.
    pub eval_retrieve_k: usize,
    /// Evaluate on WordNet's split too: unset, only when training on
    /// WordNet (no `train_jsonl`).
    pub wordnet_eval: Option<bool>,
    /// Keep the model of the best evaluation by this metric (higher is
    /// better; e.g. `reranked.mrr10`, or `mrr10` for it when `eval_data` is
    /// set, the WordNet `mrr10` otherwise) in `OUTPUT/model`, the last one
    /// in `OUTPUT/last`. Every evaluation counts, the one before training
    /// included.
    pub select_best: Option<String>,
    /// After training, also evaluate this many test-split queries (0: none),
    /// into `results.json` as `test_after` (and `test_pretrained_cosine`).
    pub test_queries: usize,
    /// Fine-tuned baselines measured at the default budget
    /// (`benchmarks/heads_compare.sh`), printed beside the run when its
    /// budget is the same; `null`: none.
    pub baselines: Option<PathBuf>,
    /// One encoder for queries and passages.
    pub tied: bool,
    /// Pooling, projection, normalisation, implementation.
    pub encoder: TextEncoderConfig,
    /// Any built-in head: `{"kind": "mlp", …}`, `{"kind": "interaction", …}`.
    pub head: HeadConfig,
    /// The contrastive loss.
    pub loss: InfoNce,
    /// Chunk and block sizes of the two-cache step.
    pub step: StepConfig,
    /// Steps, learning rate and its multipliers, warm-up, checkpoints, seed.
    pub train: TrainConfig,
    /// Under `mpirun`: compare a checksum of the weights across processes
    /// every so many steps and stop if they differ (0: never).
    pub check_weights_every: usize,
}

impl Default for RerankerConfig {
    fn default() -> Self {
        RerankerConfig {
            model_dir: crate::models::pretrained::EMBEDDED_MODEL_DIR.into(),
            data_dir: crate::app::data::wordnet::EMBEDDED_TASK_DIR.into(),
            train_jsonl: None,
            skip_malformed: false,
            output_dir: "runs/train_reranker".into(),
            device: "auto".into(),
            max_len: 48,
            batch_size: 64,
            group_size: 2,
            dev_queries: 300,
            eval_split: Split::Dev,
            eval_data: None,
            eval_retrieve_k: 100,
            wordnet_eval: None,
            select_best: None,
            test_queries: 0,
            baselines: Some("docs/results/heads/baselines.json".into()),
            tied: true,
            encoder: TextEncoderConfig { normalize: RECIPE_NORMALIZE, ..TextEncoderConfig::default() },
            head: HeadConfig::default(),
            loss: InfoNce { temperature: RECIPE_TEMPERATURE, ..InfoNce::default() },
            step: StepConfig {
                layout: RECIPE_LAYOUT,
                query_chunk_tokens: Some(RECIPE_CHUNK_TOKENS),
                passage_chunk_tokens: Some(RECIPE_CHUNK_TOKENS),
                precision: RECIPE_PRECISION,
                ..StepConfig::default()
            },
            train: TrainConfig {
                learning_rate: RECIPE_LEARNING_RATE,
                lr_multipliers: recipe_lr_multipliers(),
                checkpoint_every: RECIPE_CHECKPOINT_EVERY,
                ..TrainConfig::default()
            },
            check_weights_every: 0,
        }
    }
}

/// A note for a token budget that holds fewer than 4 texts of `max_len`
/// tokens (e.g. the recipe's 768 after raising `--max-len` to 256): such
/// chunks are small and slow, and the budget is easy to miss. `None` for
/// item chunks, sizes from a budget, or a budget of 4 such texts or more.
pub fn chunk_note(step: &StepConfig, max_len: usize) -> Option<String> {
    let smallest = [Side::Queries, Side::Passages]
        .into_iter()
        .filter_map(|side| match step.chunk_rule(side) {
            ChunkRule::Tokens(t) => Some(t),
            ChunkRule::Items(_) => None,
        })
        .min()?;
    (!step.auto_sizes && smallest < 4 * max_len).then(|| {
        format!(
            "note: a chunk of at most {smallest} padded tokens holds {} text(s) of max_len {max_len}; --chunk-tokens {} keeps 16 (more memory per chunk), --chunk-size N cuts N texts",
            (smallest / max_len.max(1)).max(1),
            16 * max_len
        )
    })
}

impl RerankerConfig {
    /// Checks every part (the head's width against the model's own
    /// `hidden_size` is checked when the model is built).
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.group_size == 0 || self.dev_queries == 0 {
            return Err(GradCacheError::InvalidConfig {
                field: "batch_size",
                reason: "batch_size, group_size and dev_queries must be at least 1",
            }
            .into());
        }
        self.model_config().validate()?;
        if self.eval_retrieve_k == 0 {
            return Err(GradCacheError::InvalidConfig { field: "eval_retrieve_k", reason: "must be at least 1" }.into());
        }
        self.selected_metric()?;
        self.loss.validate()?;
        self.step.validate()?;
        self.train.validate()?;
        Ok(())
    }

    /// Whether WordNet's split is evaluated ([`RerankerConfig::wordnet_eval`]).
    pub fn evaluates_wordnet(&self) -> bool {
        self.wordnet_eval.unwrap_or(self.train_jsonl.is_none())
    }

    /// The metrics each evaluation logs, by name.
    pub fn metric_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        if self.evaluates_wordnet() {
            names.extend(crate::app::eval::SENSE_METRICS.iter().map(|m| m.to_string()));
        }
        if self.eval_data.is_some() {
            for stage in ["first_stage", "reranked"] {
                names.extend(crate::app::metrics::RETRIEVAL_METRICS.iter().map(|m| format!("{stage}.{m}")));
            }
        }
        names
    }

    /// The metric [`RerankerConfig::select_best`] names, resolved (a bare
    /// retrieval metric means the reranked stage's when `eval_data` is set).
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] for a metric no evaluation of this
    /// run logs.
    pub fn selected_metric(&self) -> Result<Option<String>> {
        let Some(name) = &self.select_best else { return Ok(None) };
        let names = self.metric_names();
        let resolved = if self.eval_data.is_some() && !name.contains('.') && names.contains(&format!("reranked.{name}")) {
            format!("reranked.{name}")
        } else {
            name.clone()
        };
        if !names.contains(&resolved) {
            return Err(AppError::UnknownMetric { name: name.clone(), known: names });
        }
        Ok(Some(resolved))
    }

    /// The model part (what the run's bundle records).
    pub fn model_config(&self) -> ModelConfig {
        ModelConfig::new(self.encoder.clone(), self.max_len, self.tied, self.head.clone(), self.step.layout)
    }

    /// Reads a JSON config file: any subset of the fields, nested blocks
    /// merged over the defaults.
    ///
    /// # Errors
    /// [`GradCacheError::Io`]; [`GradCacheError::Json`] naming the file for
    /// bad JSON, an unknown field or a wrong type.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io_error(path))?;
        let json = |source| GradCacheError::Json { path: path.to_path_buf(), source };
        let user: serde_json::Value = serde_json::from_str(&text).map_err(json)?;
        let defaults = serde_json::to_value(RerankerConfig::default()).map_err(json)?;
        serde_json::from_value(crate::app::settings::layered(defaults, user)).map_err(json).map_err(Into::into)
    }

    /// The settings that make two runs' metrics comparable.
    pub fn budget(&self) -> BTreeMap<String, serde_json::Value> {
        let data = self.train_jsonl.as_ref().map_or("wordnet".to_string(), |p| p.display().to_string());
        let mut budget = BTreeMap::from([
            ("steps".to_string(), self.train.steps.into()),
            ("batch_size".to_string(), self.batch_size.into()),
            ("group_size".to_string(), self.group_size.into()),
            ("learning_rate".to_string(), self.train.learning_rate.into()),
            ("max_len".to_string(), self.max_len.into()),
            ("train_data".to_string(), data.into()),
            ("eval_split".to_string(), serde_json::to_value(self.eval_split).unwrap_or_default()),
            ("eval_queries".to_string(), self.dev_queries.into()),
        ]);
        // Only when set: budgets recorded before the field existed (the
        // committed baselines) stay comparable with runs that leave it unset.
        if let Some(dir) = &self.eval_data {
            budget.insert("eval_data".to_string(), dir.display().to_string().into());
        }
        budget
    }
}

/// How a run treats its output folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new run: refused when the folder already holds one.
    New,
    /// Continue the run in the folder from its newest intact checkpoint.
    Resume,
    /// A new run in a folder that holds another (set one generation back).
    Overwrite,
}

/// Settings of a run that do not shape what is trained: they may change
/// between a run and its resume. (The training block's own rule is
/// [`crate::app::train::checkpoint::MAY_CHANGE_ON_RESUME`].)
const NOT_IN_FINGERPRINT: [&str; 11] = [
    "model_dir",
    "data_dir",
    "train_jsonl",
    "output_dir",
    "device",
    "dev_queries",
    "eval_split",
    "test_queries",
    "baselines",
    "train",
    "check_weights_every",
];

/// The run's identity beyond its training block: every other setting that
/// shapes training, and SHA-256 checksums of the model weights and of the
/// training data (so a moved folder is the same run, a changed file is
/// not).
fn fingerprint(c: &RerankerConfig, model: &ModelDir) -> Result<crate::app::train::checkpoint::RunFingerprint> {
    use crate::app::train::checkpoint::sha256_file;
    let json = serde_json::to_value(c).map_err(|source| GradCacheError::Json { path: c.output_dir.join("config.json"), source })?;
    let mut run = crate::app::settings::flatten(&json);
    run.retain(|k, _| !NOT_IN_FINGERPRINT.iter().any(|i| k == i || k.starts_with(&format!("{i}."))));
    run.insert("model.sha256".into(), sha256_file(&model.root().join("model.safetensors"))?.into());
    let data = match &c.train_jsonl {
        Some(path) => sha256_file(path)?,
        None => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&c.data_dir)
                .map_err(crate::error::io_error(&c.data_dir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            files.iter().map(|f| sha256_file(f)).collect::<Result<Vec<_>>>()?.join("+")
        }
    };
    run.insert("data.sha256".into(), data.into());
    Ok(run)
}

/// Whether a folder holds a run (its config or checkpoints).
fn holds_run(dir: &Path) -> bool {
    dir.join("config.json").exists() || dir.join("checkpoints").exists() || dir.join("metrics.jsonl").exists()
}

/// The records a run on `c` trains on: `c.train_jsonl` (JSONL or Parquet),
/// else `task`'s training split.
///
/// # Errors
/// [`AppError::NoRecords`] when there are none; reading errors of
/// [`crate::app::data::parquet::read_training_file`].
pub fn training_records(c: &RerankerConfig, task: &WordSenseData) -> Result<Vec<TrainingRecord>> {
    let records = match &c.train_jsonl {
        Some(path) => {
            let malformed = if c.skip_malformed { Malformed::Skip } else { Malformed::Fail };
            let read = crate::app::data::parquet::read_training_file(path, malformed)?;
            if read.skipped > 0 {
                eprintln!("skipped {} malformed lines of {}", read.skipped, path.display());
            }
            read.items
        }
        None => task.training_records(),
    };
    if records.is_empty() {
        let path = c.train_jsonl.clone().unwrap_or_else(|| c.data_dir.clone());
        return Err(AppError::NoRecords { path, what: "training records" });
    }
    Ok(records)
}

/// The texts of batch `step` of a run on `c`: `batch_size` records drawn
/// by the seed, each with its positive and `group_size - 1` hard negatives
/// ([`grouped_batch`]). The one source of a run's batch order, also for
/// peers trained on the same examples (`benchmarks/write_batches.rs`).
///
/// # Errors
/// As [`grouped_batch`].
pub fn batch_texts<'a>(records: &'a [TrainingRecord], c: &RerankerConfig, step: usize) -> Result<GroupedBatch<'a>> {
    let picks = sample_indices(records.len(), c.batch_size, step, c.train.seed);
    grouped_batch(records, &picks, c.group_size, step)
}

/// Batch `step` ([`batch_texts`]), tokenized.
fn batch(
    records: &[TrainingRecord],
    c: &RerankerConfig,
    tok: &TextTokenizer,
    step: usize,
    device: Device,
) -> Result<(TokenBatch, TokenBatch, Targets)> {
    let b = batch_texts(records, c, step)?;
    let targets = Targets::from_positives(b.passages.len(), b.positives)?;
    Ok((tok.encode(&b.queries)?.to_device(device)?, tok.encode(&b.passages)?.to_device(device)?, targets))
}

/// What a finished run left.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The content of `results.json` (`null` on the processes of a
    /// distributed run other than rank 0).
    pub results: serde_json::Value,
    /// The model bundle: the last model, or with `select_best` the best
    /// one (the last is then in `OUTPUT/last`).
    pub bundle: PathBuf,
    /// What the run measured, for its report (`None` on the processes of
    /// a distributed run other than rank 0); `cli::print_report` prints it.
    pub summary: Option<RunSummary>,
}

/// The measurements of a finished run, beside the baselines to show with
/// them.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run folder.
    pub output_dir: PathBuf,
    /// The pretrained model's name in the report (`MiniLM` for the embedded
    /// one, else its folder's name).
    pub model_name: String,
    /// The `eval_data` folder evaluated: its name, queries, documents and
    /// the candidates the head reranked per query.
    pub eval_data: Option<(String, usize, usize, usize)>,
    /// The evaluation `select_best` kept: metric, step and value (its
    /// bundle is [`TrainReport::bundle`]; the last model is `OUTPUT/last`).
    pub best: Option<(String, usize, f64)>,
    /// The split evaluated (`dev` or `test`) and its queries.
    pub split: String,
    /// Queries evaluated.
    pub eval_queries: usize,
    /// The pretrained encoder's cosine (vector encoders only).
    pub pretrained_cosine: Option<BTreeMap<String, f64>>,
    /// The model before training (a fresh run only).
    pub before: Option<BTreeMap<String, f64>>,
    /// The trained model.
    pub after: BTreeMap<String, f64>,
    /// Test-split queries and the trained model's metrics on them, when
    /// `test_queries` asked for them.
    pub test: Option<(usize, BTreeMap<String, f64>)>,
    /// The committed fine-tuned baselines and where they were read.
    pub baselines: Option<(PathBuf, ReferenceResults)>,
    /// The run's budget ([`RerankerConfig::budget`]): baselines are shown
    /// only when theirs is equal.
    pub budget: BTreeMap<String, serde_json::Value>,
    /// Training steps and the seed.
    pub steps: usize,
    /// The run's seed.
    pub seed: u64,
    /// Every step's loss.
    pub losses: Vec<f64>,
    /// Per pass, the median GFLOP/s over the steps
    /// ([`crate::app::train::TrainSummary::median_rates`]), and this
    /// machine's matmul rate in the run's precision, measured before
    /// training ([`crate::runtime::matmul_gflops`] at
    /// [`crate::runtime::MATMUL_PROBE_SHAPE`]).
    pub rates: (crate::core::output::PassFlops, Option<crate::runtime::MatmulRate>),
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| GradCacheError::Json { path: path.to_path_buf(), source })?;
    write_bytes_atomically(path, &bytes).map_err(Into::into)
}

/// Runs the recipe: trains, evaluates, saves the bundle, prints progress,
/// and returns the results with what the comparison table needs
/// (`cli::print_report` prints it, with the committed baselines when the
/// budget matches).
///
/// Launched by `mpirun -np R` (and built with the `mpi` feature), the R
/// processes train one model together ([`crate::core::distributed::launched`]):
/// each takes its share of every global batch of `batch_size` queries,
/// rank 0 alone prints, evaluates and writes the run folder.
///
/// # Errors
/// Any configuration, data, model, training or file error, typed.
pub fn run(c: &RerankerConfig, start: Start) -> Result<TrainReport> {
    let world = crate::core::distributed::launched()?;
    run_with(c, start, world.as_ref())
}

/// [`run`] over the processes of `world` ([`crate::core::distributed::SingleProcess`]
/// for one).
///
/// # Errors
/// As [`run`]; [`GradCacheError::InvalidConfig`] when `batch_size` is
/// smaller than the number of processes.
pub fn run_with(c: &RerankerConfig, start: Start, world: &dyn Collective) -> Result<TrainReport> {
    // Everything is checked before anything is written: a run that fails
    // here leaves an existing run folder as it was.
    c.validate()?;
    let device = parse_device(&c.device)?;
    // `auto` is decided here, once, for the device: config.json, the
    // resume fingerprint and the bundle record what ran.
    let precision = c.step.precision.resolve(device);
    let c = &RerankerConfig { step: StepConfig { precision: precision.chosen, ..c.step.clone() }, ..c.clone() };
    let (rank, ranks) = (world.rank(), world.world_size());
    let lead = rank == 0;
    if c.batch_size < ranks {
        return Err(GradCacheError::InvalidConfig { field: "batch_size", reason: "must be at least the number of processes" }.into());
    }
    if start == Start::New && holds_run(&c.output_dir) {
        return Err(AppError::RunExists { path: c.output_dir.clone() });
    }
    // Every process has looked at the folder before rank 0 writes to it.
    world.barrier();
    if !c.model_dir.is_dir() {
        let why = if c.model_dir == RerankerConfig::default().model_dir {
            "model folder missing: run scripts/gradcache.sh setup"
        } else {
            "model folder missing (a BERT folder: config.json, vocab.txt, model.safetensors)"
        };
        return Err(crate::error::not_found(&c.model_dir, why).into());
    }
    let model = ModelDir::open(&c.model_dir)?;
    // From here on the config is the resolved one (what config.json, the
    // resume fingerprint and the bundle record): the encoder's unset fields
    // from the model folder, and the head's width following the encoder's
    // vectors (the default head is sized for MiniLM's 384).
    let encoder = c.encoder.resolved(&model)?;
    let width = encoder.projection.unwrap_or_else(|| model.hidden_size());
    let head = match c.head.dim() {
        Some(dim) if dim != width => {
            if lead {
                println!("head.dim {dim} -> {width}: the width of {}'s vectors", model.architecture().family());
            }
            c.head.clone().with_dim(width)
        }
        _ => c.head.clone(),
    };
    let resolved = RerankerConfig { encoder, head, ..c.clone() };
    let c = &resolved;
    let tok = model.tokenizer(c.max_len)?;
    let task = WordSenseData::read(&c.data_dir)?;
    let records = training_records(c, &task)?;
    crate::app::data::check_negatives(&records, c.group_size)?;
    let dev = task.sense_eval(c.eval_split, c.dev_queries);
    let dev_queries: Vec<&str> = dev.set.queries.iter().map(|(_, t)| t.as_str()).collect();
    let dev_corpus: Vec<&str> = dev.set.corpus.iter().map(|(_, t)| t.as_str()).collect();
    let wordnet = c.evaluates_wordnet();
    let selected = c.selected_metric()?;
    let split = match c.eval_split {
        Split::Train => "train",
        Split::Dev => "dev",
        Split::Test => "test",
    };
    let eval_set = match &c.eval_data {
        Some(dir) => {
            let malformed = if c.skip_malformed { Malformed::Skip } else { Malformed::Fail };
            let (set, skipped) = crate::app::data::beir::read_beir(dir, split, malformed)?;
            if skipped > 0 && lead {
                eprintln!("skipped {skipped} malformed lines of {}", dir.display());
            }
            Some(set)
        }
        None => None,
    };
    if lead && !wordnet && eval_set.is_none() {
        println!("no evaluation during training: give --eval-data BEIR_DIR (your dev set) or --wordnet-eval");
    }
    // One evaluation: WordNet's split and/or the eval-data folder, each as
    // `gradcache eval` measures it.
    let evaluate = |scorer: &Scorer| -> Result<BTreeMap<String, f64>> {
        let mut metrics = BTreeMap::new();
        if wordnet {
            metrics.extend(sense_metrics(&scorer.score(&dev_queries, &dev_corpus)?, &dev)?);
        }
        if let Some(set) = &eval_set {
            let k = c.eval_retrieve_k.min(set.corpus.len());
            // Progress as `gradcache eval` shows it: a large dev set takes a while.
            let quiet = !(c.train.progress && lead);
            let run = crate::app::retrieval::evaluate_two_stage(scorer, set, k, &mut crate::app::retrieval::stderr_progress(quiet))?;
            metrics.extend(run.first_stage_metrics.named("first_stage"));
            metrics.extend(run.reranked_metrics.named("reranked"));
        }
        Ok(metrics)
    };

    // Initialisation (the head, a projection) is reproducible from the seed too.
    tch::manual_seed(c.train.seed as i64);
    let scorer = Scorer::from_pretrained(c.model_config(), &model, device)?;
    let mut gc = GradCache::new(c.step.clone(), scorer.query_encoder(), scorer.passage_encoder(), scorer.head(), &c.loss)?;

    // Each process's share of a global batch: contiguous, in rank order,
    // the first ones one query fewer when it does not divide evenly.
    let shares: Vec<usize> = (0..ranks).map(|r| c.batch_size / ranks + usize::from(r >= ranks - c.batch_size % ranks)).collect();
    let own_start: usize = shares[..rank].iter().sum();
    if lead {
        let mut evaluated = Vec::new();
        if wordnet {
            evaluated.push(format!("WordNet {split} {} queries x {} senses", dev.set.queries.len(), dev.set.corpus.len()));
        }
        if let (Some(dir), Some(set)) = (&c.eval_data, &eval_set) {
            evaluated.push(format!("{} {split} {} queries x {} documents", dir.display(), set.queries.len(), set.corpus.len()));
        }
        let evaluated =
            if evaluated.is_empty() { "no evaluation".to_string() } else { format!("evaluated on {}", evaluated.join(" and ")) };
        println!("train_reranker: {} training records, {evaluated}, device {device:?}, precision {precision}", records.len());
        if let (Some(metric), 0) = (&selected, c.train.eval_every) {
            println!(
                "--select-best {metric} chooses between the evaluations before and after training: --eval-every N evaluates in between"
            );
        }
        let sizes = if c.step.auto_sizes {
            "chunk and block sizes from the memory budget".to_string()
        } else {
            let l = &c.step.layout;
            let chunk = |side| match c.step.chunk_rule(side) {
                ChunkRule::Items(items) => format!("{items}"),
                ChunkRule::Tokens(tokens) => format!("{tokens} tokens"),
            };
            let chunks = match (chunk(Side::Queries), chunk(Side::Passages)) {
                (q, p) if q == p => format!("encoder chunk {q}"),
                (q, p) => format!("encoder chunks {q} (queries), {p} (passages)"),
            };
            format!("{chunks}, head block {}x{}", l.head_block_queries, l.head_block_passages)
        };
        println!(
            "batch {} queries x {} passages each ({} passages), {sizes}, {} steps",
            c.batch_size,
            c.group_size,
            c.batch_size * c.group_size,
            c.train.steps
        );
        if let Some(note) = chunk_note(&c.step, c.max_len) {
            println!("{note}");
        }
        if ranks > 1 {
            println!("{ranks} processes (MPI), queries per process {shares:?}: one global batch per step");
        }
    }
    // The pretrained encoder's cosine of mean-pooled vectors; token
    // encoders have no such baseline.
    let pretrained = if scorer.config().encoder.pooling() == Pooling::Tokens {
        None
    } else {
        let cosine = ModelConfig { head: HeadConfig::Cosine(CosineHeadConfig::default()), ..c.model_config() };
        Some(Scorer::from_pretrained(cosine, &model, device)?)
    };
    let cosine = match &pretrained {
        Some(p) if lead => Some(evaluate(p)?),
        _ => None,
    };

    let run = fingerprint(c, &model)?;
    let resume = start == Start::Resume;
    let mut trainer = if lead {
        Trainer::for_run(c.train.clone(), scorer.var_store(), &c.output_dir, resume, run)?
    } else {
        Trainer::follower(c.train.clone(), scorer.var_store(), &c.output_dir, resume, run)?
    };
    if lead {
        // Only a run that may use this folder records its config there.
        write_json(&c.output_dir.join("config.json"), c)?;
        for (path, why) in trainer.skipped_checkpoints() {
            eprintln!("resume: skipped damaged checkpoint {}: {why}", path.display());
        }
        match trainer.resumed_from() {
            Some(path) => println!("resuming from {} (step {} of {})", path.display(), trainer.first_step(), c.train.steps),
            None if resume => println!("nothing to resume in {}: starting at step 0", c.output_dir.display()),
            None => {}
        }
    }
    // With select_best, OUTPUT/model is the best evaluation's model. A
    // resumed run starts from the best its log holds up to its checkpoint,
    // as the uninterrupted run had it then; the evaluations it repeats are
    // the same (training is bit for bit), so it ends with the same choice.
    let bundle = c.output_dir.join("model");
    let mut best: Option<(usize, f64)> = None;
    if let Some(key) = &selected {
        for (step, metrics) in trainer.logged_evals() {
            let value = metrics.get(key).copied().unwrap_or(f64::NAN);
            if best.as_ref().is_none_or(|&(_, b)| value > b) {
                best = Some((step, value));
            }
        }
        if let (Some((step, _)), true) = (best, lead) {
            if !bundle.join(crate::app::scorer::BUNDLE_FILE).is_file() {
                return Err(crate::error::not_found(
                    &bundle,
                    &format!("the best model so far (step {step}) is missing: resume needs it, or start over with --overwrite"),
                )
                .into());
            }
        }
    }
    // What the machine's matrix multiply reaches in the step's precision
    // (bf16 runs several times faster on bf16 units), for the steps' rates to be
    // read against (a third of a second, before training).
    let matmul = if lead {
        crate::runtime::matmul_gflops(device, crate::runtime::MATMUL_PROBE_SHAPE, c.step.precision.matmul_kind(), 0.3).ok()
    } else {
        None
    };
    let summary = trainer.run(
        |i| -> Result<crate::core::output::StepOutput> {
            let (q, p, t) = batch(&records, c, &tok, i, device)?;
            if ranks == 1 {
                return Ok(gc.step(&q, &p, &t)?);
            }
            if c.check_weights_every > 0 && i % c.check_weights_every == 0 {
                crate::core::distributed::check_same_weights(scorer.var_store(), world, i)?;
            }
            let g = c.group_size;
            let (q, p) = (q.chunk(own_start, shares[rank])?, p.chunk(own_start * g, shares[rank] * g)?);
            Ok(gc.distributed_step(&q, &p, &t, scorer.var_store(), world)?)
        },
        // Rank 0 evaluates (and keeps the best model); the others wait for
        // it at the next step.
        |step| {
            if !lead {
                return Ok(BTreeMap::new());
            }
            let metrics = evaluate(&scorer)?;
            if let Some(key) = &selected {
                let value = metrics.get(key).copied().unwrap_or(f64::NAN);
                if best.as_ref().is_none_or(|&(_, b)| value > b) {
                    scorer.save(&bundle)?;
                    best = Some((step, value));
                }
            }
            Ok::<_, AppError>(metrics)
        },
    )?;

    if !lead {
        return Ok(TrainReport { results: serde_json::Value::Null, bundle, summary: None });
    }
    if selected.is_some() {
        scorer.save(&c.output_dir.join("last"))?;
    } else {
        scorer.save(&bundle)?;
    }
    let mut results = BTreeMap::from([("after".to_string(), summary.after.clone())]);
    let mut test_report = None;
    if c.test_queries > 0 {
        let test = task.sense_eval(Split::Test, c.test_queries);
        let test_q: Vec<&str> = test.set.queries.iter().map(|(_, t)| t.as_str()).collect();
        let test_c: Vec<&str> = test.set.corpus.iter().map(|(_, t)| t.as_str()).collect();
        results.insert("test_after".to_string(), sense_metrics(&scorer.score(&test_q, &test_c)?, &test)?);
        if let Some(p) = &pretrained {
            results.insert("test_pretrained_cosine".to_string(), sense_metrics(&p.score(&test_q, &test_c)?, &test)?);
        }
        test_report = Some((test.set.queries.len(), results["test_after"].clone()));
    }
    if let Some(cosine) = &cosine {
        results.insert("pretrained_cosine".to_string(), cosine.clone());
    }
    if let Some(before) = &summary.before {
        results.insert("before".to_string(), before.clone());
    }
    let mut results = serde_json::json!(results);
    results["split"] = split.into();
    if let (Some(key), Some((step, value))) = (&selected, best) {
        results["best"] =
            serde_json::json!({"metric": key, "step": step, "value": value, "bundle": bundle, "last": c.output_dir.join("last")});
    }
    results["budget"] = serde_json::json!(c.budget());
    write_json(&c.output_dir.join("results.json"), &results)?;
    // Fine-tuned baselines from the committed results file, shown beside
    // the run when they were measured at its budget.
    let baselines = match &c.baselines {
        Some(path) if path.exists() => Some((path.clone(), ReferenceResults::read(path)?)),
        _ => None,
    };
    let model_name = if c.model_dir == RerankerConfig::default().model_dir {
        "MiniLM".to_string()
    } else {
        c.model_dir.file_name().map_or_else(|| c.model_dir.display().to_string(), |n| n.to_string_lossy().into_owned())
    };
    let run_summary = RunSummary {
        output_dir: c.output_dir.clone(),
        model_name,
        eval_data: c.eval_data.as_ref().zip(eval_set.as_ref()).map(|(dir, set)| {
            let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
            (name, set.queries.len(), set.corpus.len(), c.eval_retrieve_k.min(set.corpus.len()))
        }),
        best: selected.clone().zip(best).map(|(k, (step, v))| (k, step, v)),
        split: split.to_string(),
        eval_queries: dev.set.queries.len(),
        pretrained_cosine: cosine,
        before: summary.before,
        after: summary.after,
        test: test_report,
        baselines,
        budget: c.budget(),
        steps: summary.steps,
        seed: c.train.seed,
        losses: summary.losses,
        rates: (summary.median_rates, matmul),
    };
    Ok(TrainReport { results, bundle, summary: Some(run_summary) })
}
