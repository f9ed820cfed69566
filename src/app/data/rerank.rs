//! Rerank requests as JSONL: one object a line,
//! `{"query": "…", "candidates": ["…", …]}`, a candidate being a text or
//! `{"id": …, "text": "…"}`; any other fields of the line are kept in the
//! answer.

use std::path::Path;

use serde::Deserialize;

use super::{read_lines, Malformed, Read};
use crate::app::error::{DataLineError, Result};

/// One candidate: its text and, when the request gave one, its id.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The request's id for it (any JSON value), if any.
    pub id: Option<serde_json::Value>,
    /// The passage.
    pub text: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CandidateLine {
    Text(String),
    Item {
        #[serde(default)]
        id: Option<serde_json::Value>,
        text: String,
    },
}

/// One line of a rerank file.
#[derive(Debug, Clone, PartialEq)]
pub struct RerankRequest {
    /// The query.
    pub query: String,
    /// Its candidates, in the request's order.
    pub candidates: Vec<Candidate>,
    /// The line's other fields, passed through.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl RerankRequest {
    /// The answer line: the request with `candidates` replaced by
    /// `{"id"?, "text", "score"}` objects in the given order.
    ///
    /// `ranked` holds `(index into candidates, score)`, as
    /// [`crate::Scorer::rerank`] returns it.
    pub fn answer(&self, ranked: &[(usize, f64)]) -> serde_json::Value {
        let candidates: Vec<serde_json::Value> = ranked
            .iter()
            .map(|&(i, score)| {
                let c = &self.candidates[i];
                let mut o = serde_json::Map::new();
                if let Some(id) = &c.id {
                    o.insert("id".into(), id.clone());
                }
                o.insert("text".into(), c.text.clone().into());
                o.insert("score".into(), score.into());
                serde_json::Value::Object(o)
            })
            .collect();
        let mut line = self.extra.clone();
        line.insert("query".into(), self.query.clone().into());
        line.insert("candidates".into(), candidates.into());
        serde_json::Value::Object(line)
    }
}

#[derive(Deserialize)]
struct Line {
    query: String,
    candidates: Vec<CandidateLine>,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

fn parse(line: &str) -> std::result::Result<RerankRequest, DataLineError> {
    let l: Line = serde_json::from_str(line)?;
    if l.query.trim().is_empty() {
        return Err(DataLineError::EmptyField("query"));
    }
    let candidates: Vec<Candidate> = l
        .candidates
        .into_iter()
        .map(|c| match c {
            CandidateLine::Text(text) => Candidate { id: None, text },
            CandidateLine::Item { id, text } => Candidate { id, text },
        })
        .collect();
    if candidates.iter().any(|c| c.text.trim().is_empty()) {
        return Err(DataLineError::EmptyField("candidates"));
    }
    Ok(RerankRequest { query: l.query, candidates, extra: l.extra })
}

/// Reads rerank requests.
///
/// # Errors
/// [`crate::GradCacheError::Io`]; [`crate::AppError::DataLine`] with
/// file and line for a line that is not such an object, lacks `query` or
/// `candidates`, or has an empty text (with [`Malformed::Fail`]).
pub fn read_rerank_requests(path: &Path, malformed: Malformed) -> Result<Read<RerankRequest>> {
    read_lines(path, malformed, |_, line| parse(line).map(Some))
}
