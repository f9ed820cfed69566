//! Ranking metrics over a score matrix.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::app::error::Result;
use crate::error::GradCacheError;

/// Retrieval quality over a set of queries (each in `[0, 1]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetrievalMetrics {
    /// Share of queries with a relevant document ranked first.
    pub top1: f64,
    /// … within the first 5.
    pub top5: f64,
    /// … within the first 20.
    pub top20: f64,
    /// Mean reciprocal rank of the first relevant document, 0 beyond rank 10.
    pub mrr10: f64,
    /// nDCG over the first 10, gain `2^rel − 1`, discount `log2(rank + 1)`.
    pub ndcg10: f64,
    /// Share of each query's relevant documents within the first 100,
    /// averaged over queries.
    pub recall100: f64,
}

/// The names of [`RetrievalMetrics`]' fields, in order.
pub const RETRIEVAL_METRICS: [&str; 6] = ["top1", "top5", "top20", "mrr10", "ndcg10", "recall100"];

impl RetrievalMetrics {
    /// Each metric under `{prefix}.{name}` ([`RETRIEVAL_METRICS`]).
    pub fn named(&self, prefix: &str) -> Vec<(String, f64)> {
        let values = [self.top1, self.top5, self.top20, self.mrr10, self.ndcg10, self.recall100];
        RETRIEVAL_METRICS.iter().zip(values).map(|(k, v)| (format!("{prefix}.{k}"), v)).collect()
    }
}

fn rows(scores: &Tensor) -> Result<Vec<Vec<f64>>> {
    if scores.dim() != 2 {
        return Err(GradCacheError::Shape { what: "score matrix", expected: "[queries, documents]", got: scores.size() }.into());
    }
    let cols = scores.size()[1] as usize;
    let flat = crate::util::to_f64_vec(scores)?;
    Ok(flat.chunks(cols.max(1)).map(<[f64]>::to_vec).collect())
}

/// Document indices by descending score (ties: lower index first).
fn ranking(row: &[f64]) -> Vec<usize> {
    sorted_by_score(row).into_iter().map(|(i, _)| i).collect()
}

/// `(index, score)` by descending score (ties: lower index first).
pub fn sorted_by_score(scores: &[f64]) -> Vec<(usize, f64)> {
    let mut order: Vec<(usize, f64)> = scores.iter().copied().enumerate().collect();
    order.sort_by(by_descending_score);
    order
}

/// The order of `(index, score)` pairs by descending score, ties by
/// ascending index: every ranking of the crate sorts with it.
pub fn by_descending_score(a: &(usize, f64), b: &(usize, f64)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Retrieval metrics.
///
/// # Shapes
/// `scores`: `[Q, C]`; `relevance[q]` lists `(document index, grade)` pairs
/// of query `q` (grade > 0 is relevant).
///
/// # Errors
/// [`GradCacheError::Shape`] when `relevance` has not one entry per query
/// or names a document outside `C`.
pub fn retrieval_metrics(scores: &Tensor, relevance: &[Vec<(usize, u32)>]) -> Result<RetrievalMetrics> {
    let rows = rows(scores)?;
    if rows.len() != relevance.len() || rows.is_empty() {
        return Err(GradCacheError::Shape { what: "relevance", expected: "one non-empty list per query", got: scores.size() }.into());
    }
    let cols = scores.size()[1] as usize;
    if relevance.iter().flatten().any(|&(d, _)| d >= cols) {
        return Err(GradCacheError::Shape { what: "relevance", expected: "document indices below C", got: scores.size() }.into());
    }
    let orders: Vec<Vec<usize>> = rows.iter().map(|r| ranking(r)).collect();
    ranked_metrics(&orders, relevance)
}

/// Retrieval metrics of rankings (each query's documents, best first; a
/// ranking may be cut short, e.g. a first stage's top k: documents it
/// lacks count as not retrieved).
///
/// # Errors
/// [`GradCacheError::Shape`] when there is not one ranking per query.
pub fn ranked_metrics(rankings: &[Vec<usize>], relevance: &[Vec<(usize, u32)>]) -> Result<RetrievalMetrics> {
    if rankings.len() != relevance.len() || rankings.is_empty() {
        return Err(GradCacheError::Shape {
            what: "rankings",
            expected: "one ranking per query, at least one query",
            got: vec![rankings.len() as i64, relevance.len() as i64],
        }
        .into());
    }
    let (mut top1, mut top5, mut top20, mut mrr, mut ndcg, mut recall) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (order, rel) in rankings.iter().zip(relevance) {
        let grade = |d: usize| rel.iter().find(|&&(i, _)| i == d).map_or(0, |&(_, g)| g);
        let first = order.iter().position(|&d| grade(d) > 0);
        if let Some(r) = first {
            top1 += f64::from(u8::from(r < 1));
            top5 += f64::from(u8::from(r < 5));
            top20 += f64::from(u8::from(r < 20));
            if r < 10 {
                mrr += 1.0 / (r + 1) as f64;
            }
        }
        let gain = |g: u32| 2f64.powi(g as i32) - 1.0;
        let dcg: f64 = order.iter().take(10).enumerate().map(|(i, &d)| gain(grade(d)) / ((i + 2) as f64).log2()).sum();
        let mut ideal: Vec<u32> = rel.iter().map(|&(_, g)| g).collect();
        ideal.sort_unstable_by(|a, b| b.cmp(a));
        let idcg: f64 = ideal.iter().take(10).enumerate().map(|(i, &g)| gain(g) / ((i + 2) as f64).log2()).sum();
        if idcg > 0.0 {
            ndcg += dcg / idcg;
        }
        let relevant = rel.iter().filter(|&&(_, g)| g > 0).count();
        if relevant > 0 {
            recall += order.iter().take(100).filter(|&&d| grade(d) > 0).count() as f64 / relevant as f64;
        }
    }
    let n = rankings.len() as f64;
    Ok(RetrievalMetrics { top1: top1 / n, top5: top5 / n, top20: top20 / n, mrr10: mrr / n, ndcg10: ndcg / n, recall100: recall / n })
}

/// Share of queries whose gold candidate scores highest among its
/// candidates (ties count as errors unless the gold is the lowest index).
///
/// # Shapes
/// `scores`: `[Q, C]`; `candidates[q]` and `gold[q]` are column indices.
///
/// # Errors
/// [`GradCacheError::Shape`] for mismatched lengths or indices outside `C`,
/// or a gold index that is not among its candidates.
pub fn disambiguation_accuracy(scores: &Tensor, candidates: &[Vec<usize>], gold: &[usize]) -> Result<f64> {
    let rows = rows(scores)?;
    if rows.len() != candidates.len() || rows.len() != gold.len() || rows.is_empty() {
        return Err(GradCacheError::Shape { what: "candidates", expected: "one list and one gold per query", got: scores.size() }.into());
    }
    let mut hits = 0usize;
    for ((row, cands), &g) in rows.iter().zip(candidates).zip(gold) {
        if !cands.contains(&g) || cands.iter().any(|&c| c >= row.len()) {
            return Err(
                GradCacheError::Shape { what: "candidates", expected: "indices below C including the gold", got: scores.size() }.into()
            );
        }
        let best = cands.iter().copied().max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)));
        hits += usize::from(best == Some(g));
    }
    Ok(hits as f64 / rows.len() as f64)
}
