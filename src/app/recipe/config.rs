//! The recipe's settings: [`RerankerConfig`], its defaults where they
//! differ from the library's (each a named constant), and its checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::app::data::wordnet::Split;
use crate::app::error::{AppError, Result};
use crate::app::scorer::ModelConfig;
use crate::app::train::TrainConfig;
use crate::core::config::StepConfig;
use crate::core::layout::{ChunkRule, Layout, Side};
use crate::core::loss::InfoNce;
use crate::error::GradCacheError;
use crate::models::encoders::TextEncoderConfig;
use crate::models::heads::HeadConfig;
use crate::models::weights::write_bytes_atomically;
use crate::runtime::precision::Precision;

/// The committed fine-tuned baselines the recipe shows beside a run,
/// relative to the checkout.
pub const RECIPE_BASELINES: &str = "docs/results/heads/baselines.json";

/// The checkout this binary was built from: where the embedded model, data
/// and baselines are when the working directory does not hold them.
const BUILT_FROM: &str = env!("CARGO_MANIFEST_DIR");

/// A default path of the gradcache checkout (the embedded model, the
/// WordNet task, the baselines): as written when the working directory
/// holds it (the runs on record name it so), else in the checkout the
/// binary was built from, so that `gradcache train` runs from any folder.
/// As written when neither holds it, and the error names that path.
pub fn checkout_path(relative: &str) -> PathBuf {
    let here = PathBuf::from(relative);
    let built = Path::new(BUILT_FROM).join(relative);
    if !here.exists() && built.exists() {
        built
    } else {
        here
    }
}

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
    /// (`benchmarks/heads/compare.sh`), printed beside the run when its
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
            model_dir: checkout_path(crate::models::pretrained::EMBEDDED_MODEL_DIR),
            data_dir: checkout_path(crate::app::data::wordnet::EMBEDDED_TASK_DIR),
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
            baselines: Some(checkout_path(RECIPE_BASELINES)),
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

/// Writes one of the run's JSON files (`config.json`, `results.json`),
/// pretty-printed and atomically.
///
/// # Errors
/// [`GradCacheError::Json`]; file errors.
pub(super) fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| GradCacheError::Json { path: path.to_path_buf(), source })?;
    write_bytes_atomically(path, &bytes).map_err(Into::into)
}
