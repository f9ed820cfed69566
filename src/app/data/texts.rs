//! Texts to encode as JSONL: one a line, either a JSON string or an object
//! with `text` and an optional id (`id` or BEIR's `_id`; a BEIR
//! `corpus.jsonl` with `title` is read as `title: text`).

use std::path::Path;

use serde::Deserialize;

use super::{read_lines, Malformed, Read};
use crate::app::error::{DataLineError, Result};

#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Text(String),
    Item {
        #[serde(default, alias = "_id")]
        id: Option<serde_json::Value>,
        #[serde(default)]
        title: String,
        text: String,
    },
}

/// One text and its id, if the line gave one (as written: a string id as
/// the string, any other JSON value as its JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdText {
    /// The line's id.
    pub id: Option<String>,
    /// The text.
    pub text: String,
}

fn parse(line: &str) -> std::result::Result<IdText, DataLineError> {
    let (id, text) = match serde_json::from_str(line)? {
        Line::Text(text) => (None, text),
        Line::Item { id, title, text } => {
            let id = id.map(|v| match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            });
            (id, if title.is_empty() { text } else { format!("{title}: {text}") })
        }
    };
    if text.trim().is_empty() {
        return Err(DataLineError::EmptyField("text"));
    }
    Ok(IdText { id, text })
}

/// Reads texts to encode.
///
/// # Errors
/// [`crate::GradCacheError::Io`]; [`crate::AppError::DataLine`] with
/// file and line for a line that is neither form or has an empty text
/// (with [`Malformed::Fail`]).
pub fn read_texts(path: &Path, malformed: Malformed) -> Result<Read<IdText>> {
    read_lines(path, malformed, |_, line| parse(line).map(Some))
}
