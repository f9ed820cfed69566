//! The application's errors: a run folder's (a run already there, a
//! resume that does not match, a damaged checkpoint), a model bundle's, and
//! a data file's (with its file and line). Every error of the layers below
//! comes through as [`AppError::Core`].

use crate::error::GradCacheError;

/// Everything that can go wrong in the application layer
/// ([`crate::app`]): training runs, model bundles, data files, and,
/// wrapped, any error of the step, the models or the runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// An error of the step, its configuration, the models or the runtime.
    #[error(transparent)]
    Core(#[from] GradCacheError),

    /// A relevance judgement names a document that is not in the corpus.
    #[error("query `{query}` is judged against document `{document}`, which is not in the corpus")]
    UnknownDocument {
        /// The query id.
        query: String,
        /// The missing document id.
        document: String,
    },

    /// A resume was refused: the run asked for differs from the one that
    /// wrote the checkpoint.
    #[error("{path}: made by another run; these settings differ: {}", fields.join(", "))]
    ResumeMismatch {
        /// The checkpoint.
        path: std::path::PathBuf,
        /// Each differing field, as `name: checkpoint value -> requested value`.
        fields: Vec<String>,
    },

    /// The output folder holds another run, and neither resuming it nor
    /// overwriting it was asked for.
    #[error("{path} already holds a run: pass --resume to continue it or --overwrite to start over (the old checkpoints are kept one generation back)")]
    RunExists {
        /// The output folder.
        path: std::path::PathBuf,
    },

    /// A data file holds no records at all.
    #[error("{path}: no {what} in the file")]
    NoRecords {
        /// The file.
        path: std::path::PathBuf,
        /// What was expected.
        what: &'static str,
    },

    /// A training record has some hard negatives but fewer than a group
    /// needs; reusing them would silently weight them twice.
    #[error("training record {record} has {has} hard negative(s) but group_size {group_size} needs {}", group_size - 1)]
    TooFewNegatives {
        /// The record's index.
        record: usize,
        /// Its negatives.
        has: usize,
        /// The configured group size.
        group_size: usize,
    },

    /// A model bundle of a format version this version cannot read.
    #[error("{path}: bundle format {found}, this version of gradcache reads format {supported}")]
    BundleFormat {
        /// The bundle's `gradcache.json`.
        path: std::path::PathBuf,
        /// The format it declares.
        found: u32,
        /// The format this version reads.
        supported: u32,
    },

    /// A folder that exists and is not a model bundle was given as where
    /// to save one: it is left as it is.
    #[error("{path} exists and is not a model bundle (no gradcache.json): not overwritten")]
    NotABundle {
        /// The folder.
        path: std::path::PathBuf,
    },

    /// A Parquet file lacks a column the records need.
    #[error("{path}: no {wanted} column; the table has: {}", found.join(", "))]
    MissingColumn {
        /// The file.
        path: std::path::PathBuf,
        /// The column (or the alternatives) looked for.
        wanted: &'static str,
        /// The table's columns.
        found: Vec<String>,
    },

    /// The Parquet reader refused a file.
    #[error("{path}: not a readable Parquet file: {reason}")]
    Parquet {
        /// The file.
        path: std::path::PathBuf,
        /// What the reader said.
        reason: String,
    },

    /// A metric was named that no evaluation of the run logs.
    #[error("no evaluation of this run logs a metric `{name}`; it logs: {}", known.join(", "))]
    UnknownMetric {
        /// The name given.
        name: String,
        /// The metrics the run logs.
        known: Vec<String>,
    },

    /// A chart could not be drawn (`gradcache plot`).
    #[error("{path}: could not draw the chart: {reason}")]
    Plot {
        /// The image being written.
        path: std::path::PathBuf,
        /// What the drawing library said.
        reason: String,
    },

    /// `gradcache serve`'s model thread died while serving (it panicked):
    /// the server stopped, and its process should be restarted.
    #[error("the model died while serving: {reason}")]
    ModelDied {
        /// What ended it.
        reason: String,
    },

    /// An export was asked to write into a folder that holds files.
    #[error("{path} exists and is not empty: export to a new folder")]
    ExportExists {
        /// The output folder.
        path: std::path::PathBuf,
    },

    /// An id the TREC run format cannot hold (its fields are separated by
    /// whitespace).
    #[error("{what} id {id:?} is empty or contains whitespace, which a TREC run file cannot hold: rename it (e.g. spaces to underscores)")]
    TrecId {
        /// "query" or "document".
        what: &'static str,
        /// The id.
        id: String,
    },

    /// A bundle cannot be written in the format asked for.
    #[error("cannot export as {format}: {reason}")]
    UnsupportedExport {
        /// The format.
        format: &'static str,
        /// Why not.
        reason: &'static str,
    },

    /// A line of a data file is malformed.
    #[error("{path}:{line}: {reason}")]
    DataLine {
        /// The data file.
        path: std::path::PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: DataLineError,
    },

    /// The gradient norm is NaN or infinite; the optimizer step was skipped.
    #[error("gradient norm is not finite at step {step}; no update was made")]
    NonFiniteGradient {
        /// The training step.
        step: usize,
    },

    /// A checkpoint is unusable: corrupt, or made by another model or config.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint folder or file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl From<tch::TchError> for AppError {
    fn from(e: tch::TchError) -> Self {
        AppError::Core(e.into())
    }
}

impl AppError {
    /// The error below the application that caused this one, if it is one.
    pub fn core(&self) -> Option<&GradCacheError> {
        match self {
            AppError::Core(e) => Some(e),
            _ => None,
        }
    }
}

/// What is wrong with a line of a data file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataLineError {
    /// The line's bytes are not UTF-8.
    #[error("not UTF-8 (from byte {byte} of the line)")]
    NotUtf8 {
        /// The first bad byte, counting from 1.
        byte: usize,
    },
    /// Not valid JSON, or not the expected record.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// A required field is empty.
    #[error("field `{0}` is empty")]
    EmptyField(&'static str),
    /// Wrong number of tab-separated columns.
    #[error("expected {expected} tab-separated columns, found {found}")]
    Columns {
        /// Columns expected.
        expected: usize,
        /// Columns found.
        found: usize,
    },
    /// A number could not be parsed.
    #[error("`{0}` is not a valid number")]
    Number(String),
    /// An id refers to nothing in the files read so far.
    #[error("unknown id `{0}`")]
    UnknownId(String),
    /// A structural rule of the format is broken.
    #[error("{0}")]
    Format(&'static str),
}

/// Shorthand for results in the application layer.
pub type Result<T, E = AppError> = std::result::Result<T, E>;
