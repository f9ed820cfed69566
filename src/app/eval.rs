//! Evaluation: score every query against a corpus with the trained
//! encoders and head, dropout off, in chunks and blocks.

use std::collections::BTreeMap;

use tch::Tensor;

use crate::app::data::wordnet::SenseEval;
use crate::app::error::Result;
use crate::app::metrics::{disambiguation_accuracy, retrieval_metrics};
use crate::core::encoder::Encoder;
use crate::core::head::ScoringHead;
use crate::core::layout::{Layout, Side};
use crate::core::scoring::{encode_chunks, score_for_ranking};
use crate::runtime::precision::Precision;

/// Scores every query against every corpus item in eval mode (no dropout,
/// no graph): each side encoded chunk by chunk and the pair grid scored
/// block by block as `layout` cuts them, by the same routine as
/// [`crate::Scorer::score`] and the step's score pass.
///
/// # Shapes
/// Returns `[Q, C]`.
///
/// # Errors
/// Encoder and head errors.
#[allow(clippy::too_many_arguments)]
pub fn score_corpus<QE: Encoder + ?Sized, PE: Encoder + ?Sized>(
    query_encoder: &QE,
    passage_encoder: &PE,
    head: &dyn ScoringHead,
    layout: &Layout,
    precision: Precision,
    queries: &QE::Input,
    corpus: &PE::Input,
) -> Result<Tensor> {
    tch::no_grad(|| {
        let u = encode_chunks(query_encoder, queries, layout.query_chunk_size, Side::Queries, precision)?;
        let v = encode_chunks(passage_encoder, corpus, layout.passage_chunk_size, Side::Passages, precision)?;
        Ok(score_for_ranking(head, &u, &v, &layout.grid(u.len(), v.len()))?)
    })
}

/// The names [`sense_metrics`] gives its metrics.
pub const SENSE_METRICS: [&str; 6] = ["wsd_accuracy", "top1", "top5", "top20", "mrr10", "ndcg10"];

/// Disambiguation accuracy and retrieval metrics of a word-sense
/// evaluation, by name: `wsd_accuracy`, `top1`, `top5`, `top20`, `mrr10`,
/// `ndcg10`.
///
/// # Shapes
/// `scores`: `[Q, C]` over `eval`'s queries and corpus.
///
/// # Errors
/// [`crate::error::GradCacheError::Shape`] when the scores do not fit `eval`;
/// [`crate::app::error::AppError::UnknownDocument`] for a judgement outside the
/// corpus.
pub fn sense_metrics(scores: &Tensor, eval: &SenseEval) -> Result<BTreeMap<String, f64>> {
    let relevance = eval.set.relevance()?;
    let r = retrieval_metrics(scores, &relevance)?;
    let values = [disambiguation_accuracy(scores, &eval.candidates, &eval.gold)?, r.top1, r.top5, r.top20, r.mrr10, r.ndcg10];
    Ok(SENSE_METRICS.iter().map(|k| k.to_string()).zip(values).collect())
}

/// Metrics of runs made elsewhere, for printing beside a new run: e.g. the
/// fine-tuned baselines committed in `docs/results/heads/baselines.json`
/// (written by `benchmarks/heads/compare_report.py`), so that a short run can show
/// them without training them again.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceResults {
    /// The settings the rows were measured at; rows are comparable with a
    /// run only when its own budget is equal.
    pub budget: BTreeMap<String, serde_json::Value>,
    /// The command that produced the rows.
    pub command: String,
    /// One row per configuration.
    pub rows: Vec<ReferenceRow>,
}

/// One configuration's metrics over several seeds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceRow {
    /// What was trained.
    pub name: String,
    /// Runs averaged.
    pub seeds: usize,
    /// Mean of each metric over the seeds.
    pub mean: BTreeMap<String, f64>,
    /// Sample standard deviation of each metric over the seeds.
    pub sd: BTreeMap<String, f64>,
}

impl ReferenceResults {
    /// Reads a results file.
    ///
    /// # Errors
    /// [`crate::error::GradCacheError::Io`] or [`crate::GradCacheError::Json`]
    /// naming the file.
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io_error(path))?;
        serde_json::from_str(&text)
            .map_err(|source| crate::error::GradCacheError::Json { path: path.to_path_buf(), source })
            .map_err(Into::into)
    }

    /// The budget fields whose values differ from `budget` (or that one side
    /// lacks); empty when the rows are comparable with a run at `budget`.
    pub fn differences(&self, budget: &BTreeMap<String, serde_json::Value>) -> Vec<String> {
        let mut keys: Vec<&String> = self.budget.keys().chain(budget.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter().filter(|k| self.budget.get(*k) != budget.get(*k)).cloned().collect()
    }
}
