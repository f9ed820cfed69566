//! Data: training records, retrieval sets, and the readers that make them.
//!
//! - [`jsonl`]: training records, one JSON object a line;
//! - [`beir`]: BEIR-style `corpus.jsonl`, `queries.jsonl` and qrels TSV;
//! - [`wordnet`]: the built-in task, usage example → word sense.
//!
//! Every reader fails on the first malformed line with
//! [`crate::GradCacheError::DataLine`] naming file and line, unless told to
//! skip malformed lines, in which case it counts them.

pub mod beir;
pub mod jsonl;
pub mod wordnet;

use std::collections::HashMap;
use std::path::Path;

use crate::error::{DataLineError, GradCacheError, Result};

/// One training example: a query, its positive passages, and hard negatives.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrainingRecord {
    /// The query text.
    pub query: String,
    /// At least one positive passage.
    pub positives: Vec<String>,
    /// Hard negatives (may be empty).
    pub negatives: Vec<String>,
}

/// An evaluation set: queries, a corpus, and graded relevance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetrievalSet {
    /// `(id, text)` of each query.
    pub queries: Vec<(String, String)>,
    /// `(id, text)` of each document.
    pub corpus: Vec<(String, String)>,
    /// Query id → document id → relevance (> 0 is relevant).
    pub qrels: HashMap<String, HashMap<String, u32>>,
}

/// Whether to stop at a malformed line or to skip and count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Malformed {
    /// Fail with the file and line (the default).
    #[default]
    Fail,
    /// Skip the line and count it.
    Skip,
}

/// What a reader read.
#[derive(Debug, Clone, PartialEq)]
pub struct Read<T> {
    /// The items.
    pub items: Vec<T>,
    /// Malformed lines skipped (always 0 with [`Malformed::Fail`]).
    pub skipped: usize,
}

/// Reads a text file's lines, turning each non-blank one into an item with
/// `parse`; `(line number, text)` are passed on. Blank lines are ignored.
pub(crate) fn read_lines<T>(
    path: &Path,
    malformed: Malformed,
    mut parse: impl FnMut(usize, &str) -> std::result::Result<Option<T>, DataLineError>,
) -> Result<Read<T>> {
    let text = std::fs::read_to_string(path).map_err(crate::error::io_error(path))?;
    let mut items = Vec::new();
    let mut skipped = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse(i + 1, line) {
            Ok(Some(item)) => items.push(item),
            Ok(None) => {}
            Err(reason) => match malformed {
                Malformed::Fail => return Err(GradCacheError::DataLine { path: path.to_path_buf(), line: i + 1, reason }),
                Malformed::Skip => skipped += 1,
            },
        }
    }
    Ok(Read { items, skipped })
}
