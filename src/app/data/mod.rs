//! Data: training records, retrieval sets, and the readers that make them.
//!
//! - [`jsonl`]: training records, one JSON object a line;
//! - [`beir`]: BEIR-style `corpus.jsonl`, `queries.jsonl` and qrels TSV;
//! - [`wordnet`]: the built-in task, usage example → word sense.
//!
//! Every reader fails on the first malformed line with
//! [`crate::AppError::DataLine`] naming file and line, unless told to
//! skip malformed lines, in which case it counts them.

pub mod beir;
pub mod jsonl;
pub mod parquet;
pub mod rerank;
pub mod texts;
pub mod wordnet;

use std::collections::HashMap;
use std::path::Path;

use crate::app::error::{AppError, DataLineError, Result};
use crate::error::GradCacheError;

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

/// The texts of one training batch built from [`TrainingRecord`]s, grouped
/// per query, and which passages are each query's positives.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupedBatch<'a> {
    /// One text per picked record.
    pub queries: Vec<&'a str>,
    /// `group_size` texts per query, in query order: its positive first,
    /// then `group_size - 1` negatives.
    pub passages: Vec<&'a str>,
    /// Per query, the indices into `passages` whose text equals its
    /// positive (its own, and any identical text elsewhere in the batch).
    pub positives: Vec<Vec<usize>>,
}

/// Builds a batch from `records[picks[k]]`: each query with one positive
/// (rotating through its positives with `rotation`) and `group_size - 1`
/// hard negatives (rotating the same way); a record without negatives
/// borrows the positives of the records after it in the batch.
///
/// # Errors
/// [`GradCacheError::InvalidConfig`] for `group_size = 0`, an empty `picks`,
/// an index past `records`, or a record without positives.
pub fn grouped_batch<'a>(records: &'a [TrainingRecord], picks: &[usize], group_size: usize, rotation: usize) -> Result<GroupedBatch<'a>> {
    if group_size == 0 {
        return Err(GradCacheError::InvalidConfig { field: "group_size", reason: "must be at least 1" }.into());
    }
    if picks.is_empty() {
        return Err(GradCacheError::InvalidConfig { field: "picks", reason: "must name at least one record" }.into());
    }
    let picked: Vec<&TrainingRecord> = picks
        .iter()
        .map(|&r| records.get(r).ok_or(AppError::from(GradCacheError::InvalidConfig { field: "picks", reason: "index past the records" })))
        .collect::<Result<_>>()?;
    if picked.iter().any(|r| r.positives.is_empty()) {
        return Err(GradCacheError::InvalidConfig { field: "records", reason: "every training record needs a positive" }.into());
    }
    if let Some(k) = picked.iter().position(|r| !r.negatives.is_empty() && r.negatives.len() < group_size - 1) {
        return Err(AppError::TooFewNegatives { record: picks[k], has: picked[k].negatives.len(), group_size });
    }
    let mut queries = Vec::with_capacity(picked.len());
    let mut passages = Vec::with_capacity(picked.len() * group_size);
    for (k, rec) in picked.iter().enumerate() {
        queries.push(rec.query.as_str());
        passages.push(rec.positives[rotation % rec.positives.len()].as_str());
        for n in 0..group_size - 1 {
            let negative = if rec.negatives.is_empty() {
                picked[(k + 1 + n) % picked.len()].positives[0].as_str()
            } else {
                rec.negatives[(rotation + n) % rec.negatives.len()].as_str()
            };
            passages.push(negative);
        }
    }
    let positives = (0..queries.len())
        .map(|i| {
            let gold = passages[i * group_size];
            passages.iter().enumerate().filter(|(_, p)| **p == gold).map(|(j, _)| j).collect()
        })
        .collect();
    Ok(GroupedBatch { queries, passages, positives })
}

/// Checks that every record with hard negatives has enough for a group of
/// `group_size` passages (its positive and `group_size - 1` negatives).
/// Records without negatives are fine: they take other queries' positives.
///
/// # Errors
/// [`AppError::TooFewNegatives`] naming the first record short of
/// negatives.
pub fn check_negatives(records: &[TrainingRecord], group_size: usize) -> Result<()> {
    let needs = group_size.saturating_sub(1);
    match records.iter().position(|r| !r.negatives.is_empty() && r.negatives.len() < needs) {
        Some(record) => Err(AppError::TooFewNegatives { record, has: records[record].negatives.len(), group_size }),
        None => Ok(()),
    }
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

impl RetrievalSet {
    /// Each query's judged documents as `(index into corpus, grade)`, in
    /// query order (empty for a query without judgements).
    ///
    /// # Errors
    /// [`AppError::UnknownDocument`] for a judgement naming a document
    /// that is not in the corpus.
    pub fn relevance(&self) -> Result<Vec<Vec<(usize, u32)>>> {
        let index: HashMap<&str, usize> = self.corpus.iter().enumerate().map(|(i, (id, _))| (id.as_str(), i)).collect();
        self.queries
            .iter()
            .map(|(qid, _)| {
                let Some(judged) = self.qrels.get(qid) else { return Ok(Vec::new()) };
                let mut row = judged
                    .iter()
                    .map(|(d, &g)| {
                        index
                            .get(d.as_str())
                            .map(|&i| (i, g))
                            .ok_or_else(|| AppError::UnknownDocument { query: qid.clone(), document: d.clone() })
                    })
                    .collect::<Result<Vec<_>>>()?;
                row.sort_unstable();
                Ok(row)
            })
            .collect()
    }
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
    // Bytes, not a string: a line that is not UTF-8 is a malformed line
    // with its number (skippable), not a failure of the whole file.
    let bytes = std::fs::read(path).map_err(crate::error::io_error(path))?;
    let mut items = Vec::new();
    let mut skipped = 0;
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let parsed = match std::str::from_utf8(raw) {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => parse(i + 1, line.strip_suffix('\r').unwrap_or(line)),
            Err(e) => Err(DataLineError::NotUtf8 { byte: e.valid_up_to() + 1 }),
        };
        match parsed {
            Ok(Some(item)) => items.push(item),
            Ok(None) => {}
            Err(reason) => match malformed {
                Malformed::Fail => return Err(AppError::DataLine { path: path.to_path_buf(), line: i + 1, reason }),
                Malformed::Skip => skipped += 1,
            },
        }
    }
    Ok(Read { items, skipped })
}
