//! Training records as JSONL: one object a line,
//! `{"query": "…", "positive": "…" | "positives": ["…"], "negatives": ["…"]}`.

use std::path::Path;

use serde::Deserialize;

use super::{read_lines, Malformed, Read, TrainingRecord};
use crate::app::error::{DataLineError, Result};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    query: String,
    #[serde(default)]
    positive: Option<String>,
    #[serde(default)]
    positives: Vec<String>,
    #[serde(default)]
    negatives: Vec<String>,
}

fn parse(line: &str) -> std::result::Result<TrainingRecord, DataLineError> {
    let l: Line = serde_json::from_str(line)?;
    if l.query.trim().is_empty() {
        return Err(DataLineError::EmptyField("query"));
    }
    let mut positives = l.positives;
    positives.extend(l.positive);
    if positives.is_empty() || positives.iter().any(|p| p.trim().is_empty()) {
        return Err(DataLineError::EmptyField("positive"));
    }
    if l.negatives.iter().any(|n| n.trim().is_empty()) {
        return Err(DataLineError::EmptyField("negatives"));
    }
    Ok(TrainingRecord { query: l.query, positives, negatives: l.negatives })
}

/// Reads training records.
///
/// # Errors
/// [`crate::GradCacheError::Io`]; [`crate::AppError::DataLine`] for a
/// line that is not such an object, has an unknown field, or an empty
/// query/positive/negative (with [`Malformed::Fail`]).
pub fn read_training_records(path: &Path, malformed: Malformed) -> Result<Read<TrainingRecord>> {
    read_lines(path, malformed, |_, line| parse(line).map(Some))
}
