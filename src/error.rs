//! The error of the layers below the application: the runtime, the
//! algorithm (`core`), the models and the checker. The application's own
//! errors (runs, bundles, data files) are [`crate::app::error::AppError`],
//! which wraps this one.

use std::fmt;

/// Which side of a batch an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The queries (rows of the score matrix).
    Queries,
    /// The passages (columns of the score matrix).
    Passages,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Queries => "queries",
            Side::Passages => "passages",
        })
    }
}

/// The recomputation that disagreed with the cached value in a
/// [`GradCacheError::ReplayMismatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayStage {
    /// The encoder pass re-encoded a query chunk.
    QueryChunk,
    /// The encoder pass re-encoded a passage chunk.
    PassageChunk,
    /// The head pass re-scored a block of pairs.
    HeadBlock,
}

impl fmt::Display for ReplayStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplayStage::QueryChunk => "query chunk",
            ReplayStage::PassageChunk => "passage chunk",
            ReplayStage::HeadBlock => "head block",
        })
    }
}

/// Everything that can go wrong below the application: in the step, its
/// configuration, the models and their files.
///
/// No public function panics on bad input; each failure is one of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GradCacheError {
    /// A batch has no queries or no passages.
    #[error("the batch has no {side}")]
    EmptyBatch {
        /// The empty side.
        side: Side,
    },

    /// A call that needs at least one item got none (texts to tokenize,
    /// pairs to score).
    #[error("no {what} given")]
    EmptyInput {
        /// What was empty.
        what: &'static str,
    },

    /// Teacher scores for distillation hold NaN or infinity.
    #[error("teacher scores hold a non-finite value (first at query {query})")]
    NonFiniteTeacherScores {
        /// The first query whose teacher row is not finite.
        query: usize,
    },

    /// The process's peak memory cannot be read on this system.
    #[error("peak memory unavailable: {reason}")]
    PeakMemoryUnavailable {
        /// Why.
        reason: &'static str,
    },

    /// A libtorch C++ call made through gradcache's shim (`src/shim/`)
    /// threw or refused.
    #[error("libtorch's {call} failed: {message}")]
    LibtorchCall {
        /// The call.
        call: &'static str,
        /// libtorch's message.
        message: String,
    },

    /// A collective operation across processes could not be done.
    #[error("distributed step: {reason}")]
    Distributed {
        /// What went wrong.
        reason: String,
    },

    /// A memory budget below what the step needs with every chunk and block
    /// recomputed, at the configured chunk and block sizes.
    #[error("memory budget of {budget_mb:.1} MB is below the {needed_mb:.1} MB the step needs with every chunk and block recomputed: raise the budget or use smaller chunks and blocks")]
    BudgetTooSmall {
        /// The budget.
        budget_mb: f64,
        /// The estimated need at these sizes.
        needed_mb: f64,
    },

    /// A configuration value is out of its allowed range.
    #[error("invalid config: `{field}` {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// What it must be.
        reason: &'static str,
    },

    /// The passage count is not `num_queries × group_size`.
    #[error(
        "{num_passages} passages do not fit {num_queries} queries in groups of {group_size} \
         (expected {expected})",
        expected = num_queries * group_size
    )]
    GroupMismatch {
        /// Queries in the batch.
        num_queries: usize,
        /// Passages in the batch.
        num_passages: usize,
        /// Passages per query.
        group_size: usize,
    },

    /// A target names a passage outside the batch.
    #[error("target of query {query} names passage {passage}, but the batch has {num_passages} passages")]
    TargetOutOfRange {
        /// The query whose target is wrong.
        query: usize,
        /// The passage index it names.
        passage: usize,
        /// Passages in the batch.
        num_passages: usize,
    },

    /// A query has no positive passage, so the contrastive loss is undefined.
    #[error("query {query} has no positive passage")]
    NoPositive {
        /// The query without a positive.
        query: usize,
    },

    /// The targets were built for another batch size.
    #[error("targets describe {expected} {side}, but the batch has {actual}")]
    TargetsMismatch {
        /// The side that disagrees.
        side: Side,
        /// The count the targets were built for.
        expected: usize,
        /// The count in the batch.
        actual: usize,
    },

    /// An operation needs a part of the targets that they do not have.
    #[error("{what} needs targets with {needs}")]
    TargetsIncomplete {
        /// The operation.
        what: &'static str,
        /// What the targets lack.
        needs: &'static str,
    },

    /// A scoring head returned a tensor of the wrong shape.
    #[error(
        "scoring head returned shape {got:?} for a block of {queries} queries × {passages} passages (expected [{queries}, {passages}])"
    )]
    HeadShape {
        /// Queries in the block.
        queries: usize,
        /// Passages in the block.
        passages: usize,
        /// The shape it returned.
        got: Vec<i64>,
    },

    /// A scoring head returned NaN or infinite scores.
    #[error("scoring head returned non-finite scores for queries {queries:?} × passages {passages:?}")]
    NonFiniteScores {
        /// Query rows of the block.
        queries: std::ops::Range<usize>,
        /// Passage columns of the block.
        passages: std::ops::Range<usize>,
    },

    /// The head pass backpropagated the scores and no gradient reached one
    /// side's representations: the head's scores do not depend on them
    /// (e.g. it reads only the other side), so training its encoder would
    /// silently do nothing.
    #[error("the head's scores do not depend on the {side}' representations: no gradient reached them (a disconnected graph)")]
    NoGradient {
        /// The side no gradient reached.
        side: Side,
    },

    /// An encoder returned a representation that does not match its chunk.
    #[error("encoder returned {got} representations for a chunk of {expected} {side}")]
    EncoderLength {
        /// Which encoder.
        side: Side,
        /// Inputs in the chunk.
        expected: usize,
        /// Rows it returned.
        got: usize,
    },

    /// A tensor argument has the wrong shape or kind.
    #[error("{what}: expected {expected}, got shape {got:?}")]
    Shape {
        /// The argument.
        what: &'static str,
        /// The expected shape, in words.
        expected: &'static str,
        /// The shape it has.
        got: Vec<i64>,
    },

    /// A head or an operation got single-vector representations where it needs
    /// token matrices, or the other way round, or two representations that
    /// cannot be joined.
    #[error("{what} needs {expected} representations, got {got}")]
    RepresentationKind {
        /// The head or operation.
        what: &'static str,
        /// The kind it needs.
        expected: &'static str,
        /// The kind it got.
        got: &'static str,
    },

    /// The loss is NaN or infinite. No gradient was written.
    #[error("loss is not finite ({value}); no gradient was written")]
    NonFiniteLoss {
        /// The loss value.
        value: f64,
    },

    /// The loss did not return a scalar.
    #[error("loss must be a scalar, got shape {got:?}")]
    LossShape {
        /// The shape it returned.
        got: Vec<i64>,
    },

    /// A recomputation in the second pass differs from the first pass: the
    /// gradients would be silently wrong. Usual causes: randomness the step
    /// does not replay (a private RNG, not torch's global one), state kept
    /// across calls, or inputs mutated between the passes.
    #[error(
        "replay mismatch in {stage} {index}: second pass differs from the first by {max_abs_diff:e} \
         (tolerance {tolerance:e}); randomness not replayed or state kept across calls?"
    )]
    ReplayMismatch {
        /// Which recomputation.
        stage: ReplayStage,
        /// The chunk or block index.
        index: usize,
        /// The largest absolute difference.
        max_abs_diff: f64,
        /// The tolerance it exceeded.
        tolerance: f64,
    },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file (config, checkpoint state) could not be parsed.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },

    /// A weights file lacks variables the model needs.
    #[error("{path}: missing {} weight(s), e.g. {}", missing.len(), missing.first().map(String::as_str).unwrap_or(""))]
    MissingWeights {
        /// The weights file.
        path: std::path::PathBuf,
        /// The model's variable names not found in the file.
        missing: Vec<String>,
    },

    /// A weight in a file has another shape than the model's variable.
    #[error("{path}: weight `{name}` has shape {got:?}, the model expects {expected:?}")]
    WeightShape {
        /// The weights file.
        path: std::path::PathBuf,
        /// The variable.
        name: String,
        /// The model's shape.
        expected: Vec<i64>,
        /// The file's shape.
        got: Vec<i64>,
    },

    /// A head's weights could not be copied from an encoder layer: a
    /// variable is missing on one side, or the shapes differ.
    #[error("initialising `{head}` from encoder layer `{layer}`: {reason}")]
    LayerInit {
        /// The head's variable prefix.
        head: String,
        /// The encoder layer's variable prefix.
        layer: String,
        /// What did not fit.
        reason: String,
    },

    /// The vocabulary could not be loaded or a text could not be tokenized.
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] rust_tokenizers::error::TokenizerError),

    /// A `tokenizer.json` could not be read, or a text could not be
    /// tokenized by it (Hugging Face `tokenizers`).
    #[error("{path}: {reason}")]
    TokenizerJson {
        /// The tokenizer file.
        path: std::path::PathBuf,
        /// What `tokenizers` said.
        reason: String,
    },

    /// A model folder's `config.json` names an architecture gradcache
    /// cannot run.
    #[error("{path}: model_type `{model_type}` is not supported (supported: {supported})")]
    UnsupportedModel {
        /// The `config.json`.
        path: std::path::PathBuf,
        /// Its `model_type`.
        model_type: String,
        /// The model types that are supported.
        supported: &'static str,
    },

    /// A sentence-transformers folder holds a module (or a module setting)
    /// gradcache cannot run, e.g. max pooling or a Dense layer with an
    /// activation.
    #[error("{path}: sentence-transformers module `{module}` cannot be run: {reason}")]
    UnsupportedModule {
        /// The file that describes the module.
        path: std::path::PathBuf,
        /// The module's type (or pooling mode).
        module: String,
        /// Why.
        reason: String,
    },

    /// An error from rust-bert.
    #[error(transparent)]
    RustBert(#[from] rust_bert::RustBertError),

    /// An error from libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Wraps an I/O error on `path`: `.map_err(io_error(path))`.
pub(crate) fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> GradCacheError + '_ {
    move |source| GradCacheError::Io { path: path.to_path_buf(), source }
}

/// The error for a required file that is not there.
pub(crate) fn not_found(path: &std::path::Path, why: &str) -> GradCacheError {
    GradCacheError::Io { path: path.to_path_buf(), source: std::io::Error::new(std::io::ErrorKind::NotFound, why.to_string()) }
}

/// Shorthand for results in this crate.
pub type Result<T, E = GradCacheError> = std::result::Result<T, E>;
