//! Hard-negative mining (`gradcache mine`): for each (query, positive) pair
//! the first stage retrieves candidates from a corpus, and the ones that
//! rank in a window and score clearly below the positive become the
//! record's hard negatives.
//!
//! The false-negative guard follows sentence-transformers'
//! `mine_hard_negatives`: a candidate is kept only when its score is at
//! most `positive score - absolute_margin` and at most `positive score ×
//! (1 - relative_margin)`. A corpus often holds near-copies of a positive
//! (or other passages that answer the query): they score about as high as
//! the positive, and training against them as negatives teaches the model
//! the wrong thing. Texts equal to one of the query's positives are never
//! negatives.

use std::collections::HashSet;

use crate::app::data::TrainingRecord;
use crate::app::error::Result;
use crate::app::retrieval::{first_stage_block, first_stage_streamed, first_stage_vectors, ProgressFn};
use crate::app::scorer::Scorer;
use crate::error::GradCacheError;

/// How negatives are chosen.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MineConfig {
    /// Negatives per record.
    pub negatives: usize,
    /// Candidates ranked before this (0-based, counting after the query's
    /// positives are removed) are skipped: the very top of a ranking holds
    /// the most unlabelled positives.
    pub range_min: usize,
    /// Candidates ranked from this on are not considered.
    pub range_max: usize,
    /// A negative scores at most the positive's score minus this.
    pub absolute_margin: f64,
    /// A negative scores at most the positive's score times `1 - this`.
    pub relative_margin: f64,
}

impl Default for MineConfig {
    fn default() -> Self {
        // sentence-transformers' defaults for the window (range_min 0) and
        // a 5 % relative margin (NV-Retriever's positive-aware mining).
        MineConfig { negatives: 3, range_min: 0, range_max: 50, absolute_margin: 0.0, relative_margin: 0.05 }
    }
}

impl MineConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason| Err(GradCacheError::InvalidConfig { field, reason }.into());
        if self.negatives == 0 {
            return bad("negatives", "must be at least 1");
        }
        if self.range_max <= self.range_min {
            return bad("range_max", "must be above range_min");
        }
        if !(self.absolute_margin.is_finite() && self.relative_margin.is_finite() && (0.0..1.0).contains(&self.relative_margin)) {
            return bad("relative_margin", "margins must be finite, the relative one in [0, 1)");
        }
        Ok(())
    }
}

/// What mining found, beside the records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MineReport {
    /// Records with fewer negatives than asked for.
    pub short: usize,
    /// Candidates inside the window dropped by the margins.
    pub dropped_by_margin: usize,
    /// Candidates dropped for being one of the query's positives.
    pub dropped_positives: usize,
}

/// Mines negatives for every pair of `pairs` (their `negatives` are
/// replaced) from `corpus`, streaming the corpus through the first stage.
/// Each record's positive score is the first stage's score of its first
/// positive.
///
/// # Errors
/// [`GradCacheError::InvalidConfig`] from [`MineConfig::validate`];
/// [`GradCacheError::EmptyBatch`] for no pairs or an empty corpus; encoder
/// errors.
pub fn mine_negatives<D: AsRef<str> + Sync>(
    scorer: &Scorer,
    pairs: &[TrainingRecord],
    corpus: &[D],
    config: &MineConfig,
    progress: ProgressFn,
) -> Result<(Vec<TrainingRecord>, MineReport)> {
    config.validate()?;
    if pairs.is_empty() {
        return Err(GradCacheError::EmptyBatch { side: crate::error::Side::Queries }.into());
    }
    let queries: Vec<&str> = pairs.iter().map(|r| r.query.as_str()).collect();
    let positives: Vec<&str> = pairs.iter().map(|r| r.positives[0].as_str()).collect();
    // The window, plus room for the positives that will be removed from it.
    let most_positives = pairs.iter().map(|r| r.positives.len()).max().unwrap_or(1);
    let k = (config.range_max + most_positives).min(corpus.len());
    let blocks = corpus.chunks(first_stage_block(scorer)).map(Ok);
    let ranked = first_stage_streamed(scorer, &queries, blocks, corpus.len(), k, progress)?;
    let q = first_stage_vectors(&scorer.encode_queries(&queries)?)?;
    let p = first_stage_vectors(&scorer.encode_passages(&positives)?)?;
    let positive_scores = Vec::<f64>::try_from(tch::no_grad(|| q.f_mul(&p)?.f_sum_dim_intlist(1, false, tch::Kind::Double))?)
        .map_err(GradCacheError::from)?;
    let mut report = MineReport::default();
    let mut out = Vec::with_capacity(pairs.len());
    for ((record, candidates), positive_score) in pairs.iter().zip(&ranked).zip(positive_scores) {
        let own: HashSet<&str> = record.positives.iter().map(String::as_str).collect();
        let ceiling = (positive_score - config.absolute_margin).min(positive_score * (1.0 - config.relative_margin));
        let mut negatives = Vec::new();
        let mut seen = HashSet::new();
        let mut rank = 0;
        for &(doc, score) in candidates {
            let text = corpus[doc].as_ref();
            if own.contains(text) {
                report.dropped_positives += 1;
                continue;
            }
            let position = rank;
            rank += 1;
            if position < config.range_min || !seen.insert(text) {
                continue;
            }
            if position >= config.range_max || negatives.len() == config.negatives {
                break;
            }
            if score > ceiling {
                report.dropped_by_margin += 1;
                continue;
            }
            negatives.push(text.to_string());
        }
        if negatives.len() < config.negatives {
            report.short += 1;
        }
        out.push(TrainingRecord { query: record.query.clone(), positives: record.positives.clone(), negatives });
    }
    Ok((out, report))
}
