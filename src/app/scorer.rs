//! A trained model as one object: encoders, head and tokenizer, with the
//! loss-free scoring a reranker needs, and its on-disk form (the model
//! bundle).
//!
//! A bundle is a folder:
//!
//! ```text
//! gradcache.json          format version, encoder config, max_len, tied, head config, scoring layout
//! query_encoder/          Hugging Face model folder: config.json, tokenizer files, model.safetensors
//!                         (+ projection.safetensors when the encoder projects)
//! passage_encoder/        the same, only when the encoders are not tied
//! head.safetensors        the head's weights (absent for heads without weights)
//! ```
//!
//! [`Scorer::save`] writes the folder under a temporary name and renames it
//! into place, with `gradcache.json` written last, so a bundle that is there
//! is complete. [`Scorer::load`] reads it back; scores are bit for bit those
//! of the model that was saved (on the same device).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::app::error::{AppError, Result};
use crate::core::batch::TokenBatch;
use crate::core::head::ScoringHead;
use crate::core::layout::{Layout, Side};
use crate::core::representation::Representation;
use crate::core::scoring::score_for_ranking;
use crate::error::GradCacheError;
use crate::models::encoders::{TextEncoder, TextEncoderConfig};
use crate::models::heads::HeadConfig;
use crate::models::pretrained::ModelDir;
use crate::models::text::TextTokenizer;
use crate::models::weights::{load_safetensors, save_safetensors, write_bytes_atomically};

/// The bundle format this version writes and reads.
pub const BUNDLE_FORMAT: u32 = 1;

/// The file that makes a folder a bundle.
pub const BUNDLE_FILE: &str = "gradcache.json";

/// Everything that describes a model apart from its weights: the content
/// of `gradcache.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Bundle format version ([`BUNDLE_FORMAT`]).
    pub format: u32,
    /// Both encoders' configuration (pooling, projection, normalisation,
    /// implementation).
    pub encoder: TextEncoderConfig,
    /// Longest tokenized text; longer texts are truncated.
    pub max_len: usize,
    /// One encoder for queries and passages.
    pub tied: bool,
    /// The scoring head.
    pub head: HeadConfig,
    /// Chunk and block sizes for scoring (a training run records its
    /// step's layout).
    #[serde(default)]
    pub layout: Layout,
}

impl ModelConfig {
    /// A configuration of the current format.
    pub fn new(encoder: TextEncoderConfig, max_len: usize, tied: bool, head: HeadConfig, layout: Layout) -> Self {
        ModelConfig { format: BUNDLE_FORMAT, encoder, max_len, tied, head, layout }
    }

    /// Checks every part.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        self.encoder.validate()?;
        if self.max_len < 2 {
            return Err(GradCacheError::InvalidConfig { field: "max_len", reason: "must be at least 2 (the special tokens)" }.into());
        }
        self.layout.validate()?;
        if self.head.reads_tokens() != (self.encoder.pooling() == crate::models::encoders::Pooling::Tokens) {
            return Err(GradCacheError::InvalidConfig {
                field: "head",
                reason: "a token head needs \"pooling\": \"tokens\", a vector head a pooled encoder",
            }
            .into());
        }
        Ok(())
    }
}

/// Encoders, head and tokenizer of a model, for scoring in eval mode (no
/// dropout, no graph), chunk by chunk and block by block.
///
/// Training borrows the same parts ([`Scorer::query_encoder`],
/// [`Scorer::head`], [`Scorer::var_store`]) so that what is trained is what
/// is scored and saved.
pub struct Scorer {
    vs: nn::VarStore,
    query: TextEncoder,
    passage: Option<TextEncoder>,
    head: Box<dyn ScoringHead>,
    tokenizer: TextTokenizer,
    config: ModelConfig,
    /// Where `config.json` and `vocab.txt` come from when saving.
    model: ModelDir,
    /// The forward passes' precision (not part of the bundle).
    precision: crate::runtime::precision::Precision,
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer").field("config", &self.config).field("model", &self.model.root()).finish_non_exhaustive()
    }
}

fn encoder_names(tied: bool) -> (&'static str, &'static str) {
    if tied {
        ("encoder", "encoder")
    } else {
        ("query", "passage")
    }
}

impl Scorer {
    /// A new model from a pretrained model folder ([`ModelDir`]): both
    /// encoders from its weights, the encoder settings it leaves unset taken
    /// from the folder ([`TextEncoderConfig::resolved`]; [`Scorer::config`]
    /// holds the resolved ones), the head initialised by its config (from the seed of
    /// `tch::manual_seed`; an interaction block may copy the encoder's top
    /// layer). Variables are named `encoder.*` (tied) or `query.*` and
    /// `passage.*`, and `head.*`.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] from [`ModelConfig::validate`], a
    /// format other than [`BUNDLE_FORMAT`], or a head whose `dim` is not the
    /// encoder's output width (the projection's, or the model's
    /// `hidden_size`); model-folder and weight errors.
    pub fn from_pretrained(mut config: ModelConfig, model: &ModelDir, device: Device) -> Result<Self> {
        if config.format != BUNDLE_FORMAT {
            return Err(GradCacheError::InvalidConfig { field: "format", reason: "only format 1 exists" }.into());
        }
        config.encoder = config.encoder.resolved(model)?;
        config.validate()?;
        let width = config.encoder.projection.unwrap_or_else(|| model.hidden_size());
        if config.head.dim().is_some_and(|dim| dim != width) {
            return Err(GradCacheError::InvalidConfig {
                field: "head.dim",
                reason: "must equal the encoder's output width: its projection, or the model's hidden_size",
            }
            .into());
        }
        let vs = nn::VarStore::new(device);
        let (q_name, p_name) = encoder_names(config.tied);
        let (query, _) = config.encoder.init_pretrained(&vs, q_name, model)?;
        let passage = if config.tied { None } else { Some(config.encoder.init_pretrained(&vs, p_name, model)?.0) };
        let head = config.head.init_with_encoder(&vs, "head", &query)?;
        let tokenizer = model.tokenizer(config.max_len)?;
        Ok(Scorer {
            vs,
            query,
            passage,
            head,
            tokenizer,
            config,
            model: model.clone(),
            precision: crate::runtime::precision::Precision::F32,
        })
    }

    /// Reads a bundle written by [`Scorer::save`] onto `device`.
    ///
    /// # Errors
    /// [`GradCacheError::Io`] naming a missing file;
    /// [`GradCacheError::Json`] for an unreadable `gradcache.json`;
    /// [`AppError::BundleFormat`] for a format this version does not
    /// read; [`GradCacheError::MissingWeights`] / [`GradCacheError::WeightShape`]
    /// naming the weights file that does not fit the config.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let file = dir.join(BUNDLE_FILE);
        if !file.is_file() {
            return Err(crate::error::not_found(&file, "not a gradcache model bundle (no gradcache.json)").into());
        }
        let text = std::fs::read_to_string(&file).map_err(crate::error::io_error(&file))?;
        let version: FormatOnly = serde_json::from_str(&text).map_err(|source| GradCacheError::Json { path: file.clone(), source })?;
        if version.format != BUNDLE_FORMAT {
            return Err(AppError::BundleFormat { path: file, found: version.format, supported: BUNDLE_FORMAT });
        }
        let config: ModelConfig = serde_json::from_str(&text).map_err(|source| GradCacheError::Json { path: file.clone(), source })?;
        let model = ModelDir::open(dir.join("query_encoder"))?;
        let scorer = Scorer::from_pretrained(config, &model, device)?;
        let (q_name, p_name) = encoder_names(scorer.config.tied);
        scorer.load_projection(q_name, &dir.join("query_encoder"))?;
        if let Some(passage) = &scorer.passage {
            let passage_dir = dir.join("passage_encoder");
            ModelDir::open(&passage_dir)?.load_weights(&scorer.vs, passage.body_prefix())?;
            scorer.load_projection(p_name, &passage_dir)?;
        }
        if has_variables(&scorer.vs, "head") {
            load_safetensors(&scorer.vs, "head", &dir.join("head.safetensors"))?;
        }
        Ok(scorer)
    }

    fn load_projection(&self, encoder: &str, dir: &Path) -> Result<()> {
        if self.config.encoder.projection.is_some() {
            load_safetensors(&self.vs, &format!("{encoder}.projection"), &dir.join("projection.safetensors"))?;
        }
        Ok(())
    }

    /// Writes the model as a bundle at `dir` (see the module docs). The
    /// folder is assembled under a temporary name beside `dir` and renamed
    /// into place; an existing bundle at `dir` is replaced only once the new
    /// one is complete.
    ///
    /// # Errors
    /// [`GradCacheError::Io`] on any file error (the temporary folder is
    /// removed); [`AppError::NotABundle`] when `dir` exists and is not a
    /// bundle (it is left as it is).
    pub fn save(&self, dir: &Path) -> Result<()> {
        if dir.exists() && !dir.join(BUNDLE_FILE).is_file() {
            return Err(AppError::NotABundle { path: dir.to_path_buf() });
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "bundle".into());
        let staging = dir.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        let result = self.write_bundle(&staging).and_then(|()| replace_dir(&staging, dir));
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    fn write_bundle(&self, out: &Path) -> Result<()> {
        if out.exists() {
            std::fs::remove_dir_all(out).map_err(crate::error::io_error(out))?;
        }
        let (q_name, p_name) = encoder_names(self.config.tied);
        let query_dir = out.join("query_encoder");
        self.model.export(&self.vs, self.query.body_prefix(), &query_dir)?;
        self.save_projection(q_name, &query_dir)?;
        if let Some(passage) = &self.passage {
            let passage_dir = out.join("passage_encoder");
            self.model.export(&self.vs, passage.body_prefix(), &passage_dir)?;
            self.save_projection(p_name, &passage_dir)?;
        }
        if has_variables(&self.vs, "head") {
            save_safetensors(&self.vs, "head", &out.join("head.safetensors"))?;
        }
        let json =
            serde_json::to_string_pretty(&self.config).map_err(|source| GradCacheError::Json { path: out.join(BUNDLE_FILE), source })?;
        write_bytes_atomically(&out.join(BUNDLE_FILE), json.as_bytes()).map_err(Into::into)
    }

    fn save_projection(&self, encoder: &str, dir: &Path) -> Result<()> {
        if self.config.encoder.projection.is_some() {
            save_safetensors(&self.vs, &format!("{encoder}.projection"), &dir.join("projection.safetensors"))?;
        }
        Ok(())
    }

    /// The model folder the encoders' architecture and tokenizer come from
    /// (a bundle's `query_encoder/`).
    pub fn model_dir(&self) -> &ModelDir {
        &self.model
    }

    /// The configuration (what `gradcache.json` holds).
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Every weight, for training.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The query encoder.
    pub fn query_encoder(&self) -> &TextEncoder {
        &self.query
    }

    /// The passage encoder (the query encoder when tied).
    pub fn passage_encoder(&self) -> &TextEncoder {
        self.passage.as_ref().unwrap_or(&self.query)
    }

    /// The scoring head.
    pub fn head(&self) -> &dyn ScoringHead {
        self.head.as_ref()
    }

    /// The tokenizer (truncating to `max_len`).
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The same scorer with its encoders and head run under `precision`'s
    /// autocast (`bf16`: faster where the device has bfloat16 units; scores
    /// move by bfloat16's rounding; `auto`: bf16 where it has them, else
    /// f32, [`crate::runtime::precision::Precision::resolve`] for the
    /// scorer's device). A runtime setting: it is not saved in the bundle.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] for `f16`.
    pub fn with_precision(mut self, precision: crate::runtime::precision::Precision) -> Result<Self> {
        let chosen = precision.resolve(self.device()).chosen;
        chosen.require_resolved()?;
        self.precision = chosen;
        Ok(self)
    }

    /// The forward passes' precision.
    pub fn precision(&self) -> crate::runtime::precision::Precision {
        self.precision
    }

    /// Texts tokenized together, then encoded as [`Scorer::encode_tokens`]
    /// cuts them: each chunk is trimmed to its own longest text, so this is
    /// what tokenizing each chunk alone would give.
    fn encode<S: AsRef<str> + Sync>(&self, texts: &[S], side: Side) -> Result<Representation> {
        if texts.is_empty() {
            return Err(GradCacheError::EmptyBatch { side }.into());
        }
        self.encode_tokens(&self.tokenizer.encode(texts)?, side)
    }

    /// Representations of texts tokenized already (e.g. by a server's
    /// tokenization workers), chunk by chunk in eval mode: the same values
    /// as [`Scorer::encode_queries`] / [`Scorer::encode_passages`] give for
    /// the same texts, since a chunk cut from `tokens` is trimmed to its own
    /// longest row, as a chunk tokenized alone is padded to it.
    ///
    /// # Shapes
    /// `tokens`: `[n, L]`; returns `[n, d]` or `[n, L', d]` with its mask.
    ///
    /// # Errors
    /// Encoder errors.
    pub fn encode_tokens(&self, tokens: &TokenBatch, side: Side) -> Result<Representation> {
        let encoder = match side {
            Side::Queries => &self.query,
            Side::Passages => self.passage_encoder(),
        };
        let tokens = tokens.to_device(self.device())?;
        Ok(tch::no_grad(|| {
            crate::core::scoring::encode_chunks(encoder, &tokens, self.config.layout.chunk_size(side), side, self.precision)
        })?)
    }

    /// Query representations, chunk by chunk (texts tokenized per chunk).
    ///
    /// # Shapes
    /// `[n, d]` vectors or `[n, L, d]` tokens with mask `[n, L]`.
    ///
    /// # Errors
    /// [`GradCacheError::EmptyBatch`] for no texts; encoder errors.
    pub fn encode_queries<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Representation> {
        self.encode(texts, Side::Queries)
    }

    /// Representations of many texts for storage: encoded block by block
    /// (`progress` after each), moved to the CPU, concatenated.
    ///
    /// # Shapes
    /// As [`Scorer::encode_queries`].
    ///
    /// # Errors
    /// [`GradCacheError::EmptyBatch`] for no texts; encoder errors.
    pub fn encode_many<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        side: Side,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Representation> {
        if texts.is_empty() {
            return Err(GradCacheError::EmptyBatch { side }.into());
        }
        let block = self.block_size(side);
        let mut parts = Vec::new();
        for start in (0..texts.len()).step_by(block) {
            let end = (start + block).min(texts.len());
            let rep = self.encode(&texts[start..end], side)?;
            parts.push(rep.to_device(Device::Cpu)?);
            progress(end, texts.len());
        }
        Representation::cat(&parts).map_err(Into::into)
    }

    /// Texts per block when many are encoded in a stream (a corpus, a file):
    /// 16 encoder chunks of that side, so each block fills whole chunks and
    /// progress comes at a useful rate.
    pub fn block_size(&self, side: Side) -> usize {
        16 * self.config.layout.chunk_size(side)
    }

    /// Passage representations, as [`Scorer::encode_queries`].
    ///
    /// # Errors
    /// As [`Scorer::encode_queries`].
    pub fn encode_passages<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Representation> {
        self.encode(texts, Side::Passages)
    }

    /// The head over every pair of two sets of representations, block by
    /// block.
    ///
    /// # Shapes
    /// Returns `[n, m]` (on the model's device).
    ///
    /// # Errors
    /// Head errors; [`GradCacheError::HeadShape`].
    pub fn score_representations(&self, queries: &Representation, passages: &Representation) -> Result<Tensor> {
        let grid = self.config.layout.grid(queries.len(), passages.len());
        Ok(score_for_ranking(self.head.as_ref(), queries, passages, &grid)?)
    }

    /// Scores every query against every passage.
    ///
    /// # Shapes
    /// Returns `[n, m]`.
    ///
    /// # Errors
    /// [`GradCacheError::EmptyBatch`] for an empty side; encoder and head
    /// errors.
    pub fn score<Q: AsRef<str> + Sync, P: AsRef<str> + Sync>(&self, queries: &[Q], passages: &[P]) -> Result<Tensor> {
        self.score_representations(&self.encode_queries(queries)?, &self.encode_passages(passages)?)
    }

    /// Scores a list of (query, passage) pairs that need not form a grid:
    /// each distinct query is encoded once and scored against its own
    /// passages only.
    ///
    /// # Shapes
    /// Returns `[k]` for `k` pairs, in the pairs' order.
    ///
    /// # Errors
    /// [`GradCacheError::EmptyInput`] for no pairs; encoder and head errors.
    pub fn score_pairs<Q: AsRef<str> + Sync, P: AsRef<str> + Sync>(&self, pairs: &[(Q, P)]) -> Result<Tensor> {
        if pairs.is_empty() {
            return Err(GradCacheError::EmptyInput { what: "pairs to score" }.into());
        }
        let mut distinct: Vec<&str> = Vec::new();
        let mut index = std::collections::HashMap::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, (q, _)) in pairs.iter().enumerate() {
            let g = *index.entry(q.as_ref()).or_insert_with(|| {
                distinct.push(q.as_ref());
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
        }
        let queries = self.encode_queries(&distinct)?;
        let mut out = vec![0f64; pairs.len()];
        for (g, members) in groups.iter().enumerate() {
            let passages: Vec<&str> = members.iter().map(|&i| pairs[i].1.as_ref()).collect();
            let scores = self.score_representations(&queries.narrow(g, 1)?, &self.encode_passages(&passages)?)?;
            let values = crate::util::to_f64_vec(&scores)?;
            for (&i, v) in members.iter().zip(values) {
                out[i] = v;
            }
        }
        Ok(Tensor::f_from_slice(&out)?)
    }

    /// Candidates of one query by descending score (ties: earlier candidate
    /// first), as `(index into candidates, score)`.
    ///
    /// # Errors
    /// [`GradCacheError::EmptyBatch`] for no candidates; encoder and head
    /// errors.
    pub fn rerank<S: AsRef<str> + Sync>(&self, query: &str, candidates: &[S]) -> Result<Vec<(usize, f64)>> {
        let scores = self.score(&[query], candidates)?;
        Ok(crate::app::metrics::sorted_by_score(&crate::util::to_f64_vec(&scores)?))
    }
}

#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

fn has_variables(vs: &nn::VarStore, prefix: &str) -> bool {
    vs.variables().keys().any(|k| k.starts_with(&format!("{prefix}.")))
}

/// Moves a finished folder to `dest`, replacing a previous one only after
/// the new one is in place beside it.
fn replace_dir(staging: &Path, dest: &Path) -> Result<()> {
    if !dest.exists() {
        return std::fs::rename(staging, dest).map_err(crate::error::io_error(dest)).map_err(Into::into);
    }
    let old: PathBuf = dest.with_file_name(format!(
        ".{}.old-{}",
        dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    std::fs::rename(dest, &old).map_err(crate::error::io_error(dest))?;
    if let Err(e) = std::fs::rename(staging, dest) {
        // Put the previous bundle back.
        let _ = std::fs::rename(&old, dest);
        return Err(crate::error::io_error(dest)(e).into());
    }
    std::fs::remove_dir_all(&old).map_err(crate::error::io_error(&old)).map_err(Into::into)
}
