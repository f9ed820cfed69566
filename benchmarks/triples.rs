//! The benchmarks' shared batch: the first `batch` WordNet training
//! examples that have a hard negative, as (query, positive, negative).
//! Included by `peer_cmnrl.rs` and `distributed_bench.rs`.

use anyhow::{bail, Result};
use gradcache::app::data::wordnet::WordSenseData;

/// The first `batch` (query, positive, hard negative) triples of the
/// prepared task in `data`.
pub fn wordnet_triples(data: &std::path::Path, batch: usize) -> Result<Vec<(String, String, String)>> {
    let task = WordSenseData::read(data)?;
    let triples: Vec<(String, String, String)> = task
        .training_records()
        .into_iter()
        .filter(|r| !r.negatives.is_empty())
        .take(batch)
        .map(|r| (r.query, r.positives[0].clone(), r.negatives[0].clone()))
        .collect();
    if triples.len() < batch {
        bail!("only {} training examples with a hard negative", triples.len());
    }
    Ok(triples)
}
