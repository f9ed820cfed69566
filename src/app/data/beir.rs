//! BEIR-style evaluation data: `corpus.jsonl` (`_id`, optional `title`,
//! `text`), `queries.jsonl` (`_id`, `text`) and a qrels TSV
//! (`query-id corpus-id score`, with a header line).

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::{read_lines, Malformed, RetrievalSet};
use crate::app::error::{AppError, DataLineError, Result};

#[derive(Deserialize)]
struct Doc {
    #[serde(rename = "_id")]
    id: String,
    #[serde(default)]
    title: String,
    text: String,
}

fn doc(line: &str) -> std::result::Result<(String, String), DataLineError> {
    let d: Doc = serde_json::from_str(line)?;
    if d.id.is_empty() {
        return Err(DataLineError::EmptyField("_id"));
    }
    let text = if d.title.is_empty() { d.text } else { format!("{}: {}", d.title, d.text) };
    if text.trim().is_empty() {
        return Err(DataLineError::EmptyField("text"));
    }
    Ok((d.id, text))
}

/// Reads a BEIR folder: `corpus.jsonl`, `queries.jsonl`, `qrels/{split}.tsv`.
/// Queries without any relevant document are dropped; a qrels line naming an
/// unknown query or document is an error. Returns the set and the number of
/// skipped malformed lines.
///
/// # Errors
/// [`crate::GradCacheError::Io`]; [`AppError::DataLine`] naming file and line.
pub fn read_beir(dir: &Path, split: &str, malformed: Malformed) -> Result<(RetrievalSet, usize)> {
    let corpus = read_lines(&dir.join("corpus.jsonl"), malformed, |_, l| doc(l).map(Some))?;
    let queries = read_lines(&dir.join("queries.jsonl"), malformed, |_, l| doc(l).map(Some))?;
    let doc_ids: std::collections::HashSet<&str> = corpus.items.iter().map(|(id, _)| id.as_str()).collect();
    let query_ids: std::collections::HashSet<&str> = queries.items.iter().map(|(id, _)| id.as_str()).collect();
    let qrels_path = dir.join("qrels").join(format!("{split}.tsv"));
    let rows = read_lines(&qrels_path, malformed, |number, line| {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != 3 {
            return Err(DataLineError::Columns { expected: 3, found: cols.len() });
        }
        if number == 1 && cols[2].parse::<u32>().is_err() {
            return Ok(None); // header
        }
        let score: u32 = cols[2].trim().parse().map_err(|_| DataLineError::Number(cols[2].to_string()))?;
        if !query_ids.contains(cols[0]) {
            return Err(DataLineError::UnknownId(cols[0].to_string()));
        }
        if !doc_ids.contains(cols[1]) {
            return Err(DataLineError::UnknownId(cols[1].to_string()));
        }
        Ok(Some((cols[0].to_string(), cols[1].to_string(), score)))
    })?;
    let mut qrels: HashMap<String, HashMap<String, u32>> = HashMap::new();
    for (q, d, s) in rows.items {
        qrels.entry(q).or_default().insert(d, s);
    }
    let queries_kept = queries.items.into_iter().filter(|(id, _)| qrels.get(id).is_some_and(|r| r.values().any(|&s| s > 0))).collect();
    if qrels.is_empty() {
        return Err(AppError::DataLine { path: qrels_path, line: 1, reason: DataLineError::Format("no relevance judgements") });
    }
    let skipped = corpus.skipped + queries.skipped + rows.skipped;
    Ok((RetrievalSet { queries: queries_kept, corpus: corpus.items, qrels }, skipped))
}

/// Writes a retrieval set as a BEIR folder that [`read_beir`] reads back:
/// `corpus.jsonl`, `queries.jsonl` and `qrels/{split}.tsv` (with a header),
/// each file atomically, in the set's order.
///
/// # Errors
/// [`crate::GradCacheError::Io`].
pub fn write_beir(set: &RetrievalSet, dir: &Path, split: &str) -> Result<()> {
    let line = |id: &str, text: &str| serde_json::json!({ "_id": id, "text": text }).to_string() + "\n";
    let corpus: String = set.corpus.iter().map(|(id, t)| line(id, t)).collect();
    let queries: String = set.queries.iter().map(|(id, t)| line(id, t)).collect();
    let mut qrels = String::from("query-id\tcorpus-id\tscore\n");
    for (qid, _) in &set.queries {
        let mut judged: Vec<(&String, &u32)> = set.qrels.get(qid).map(|r| r.iter().collect()).unwrap_or_default();
        judged.sort();
        for (d, g) in judged {
            qrels += &format!("{qid}\t{d}\t{g}\n");
        }
    }
    let qrels_dir = dir.join("qrels");
    std::fs::create_dir_all(&qrels_dir).map_err(crate::error::io_error(&qrels_dir))?;
    crate::models::weights::write_bytes_atomically(&dir.join("corpus.jsonl"), corpus.as_bytes())?;
    crate::models::weights::write_bytes_atomically(&dir.join("queries.jsonl"), queries.as_bytes())?;
    crate::models::weights::write_bytes_atomically(&qrels_dir.join(format!("{split}.tsv")), qrels.as_bytes()).map_err(Into::into)
}
