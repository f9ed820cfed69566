//! Evaluation: score every query against a corpus with the trained
//! encoders and head, dropout off, in chunks and blocks.

use std::collections::BTreeMap;

use tch::Tensor;

use crate::config::StepConfig;
use crate::data::wordnet::SenseEval;
use crate::encoder::Encoder;
use crate::error::Result;
use crate::metrics::{disambiguation_accuracy, retrieval_metrics};
use crate::replay::ReplaySeeds;
use crate::step::GradCache;

/// Scores every query against every corpus item in eval mode, reusing the
/// step's representation and score passes (no graph, chunked, blocked).
///
/// # Shapes
/// Returns `[Q, C]`.
///
/// # Errors
/// Encoder and head errors.
pub fn score_corpus<QE: Encoder + ?Sized, PE: Encoder + ?Sized>(
    gc: &GradCache<'_, QE, PE>,
    queries: &QE::Input,
    corpus: &PE::Input,
) -> Result<Tensor> {
    let eval = gc.with_config(StepConfig { train: false, check_replay: false, ..gc.config().clone() })?;
    let seeds = ReplaySeeds::from_base(0);
    tch::no_grad(|| {
        let reps = eval.representation_pass(queries, corpus, &seeds)?;
        eval.score_pass(&reps, &seeds)
    })
}

/// Disambiguation accuracy and retrieval metrics of a word-sense
/// evaluation, by name: `wsd_accuracy`, `top1`, `top5`, `top20`, `mrr10`,
/// `ndcg10`.
///
/// # Shapes
/// `scores`: `[Q, C]` over `eval`'s queries and corpus.
///
/// # Errors
/// [`crate::GradCacheError::Shape`] when the scores do not fit `eval`.
pub fn sense_metrics(scores: &Tensor, eval: &SenseEval) -> Result<BTreeMap<String, f64>> {
    let doc_index: std::collections::HashMap<&str, usize> =
        eval.set.corpus.iter().enumerate().map(|(i, (id, _))| (id.as_str(), i)).collect();
    let relevance: Vec<Vec<(usize, u32)>> = eval
        .set
        .queries
        .iter()
        .map(|(qid, _)| {
            eval.set.qrels.get(qid).map_or_else(Vec::new, |r| r.iter().map(|(d, &g)| (doc_index[d.as_str()], g)).collect())
        })
        .collect();
    let r = retrieval_metrics(scores, &relevance)?;
    Ok(BTreeMap::from([
        ("wsd_accuracy".to_string(), disambiguation_accuracy(scores, &eval.candidates, &eval.gold)?),
        ("top1".to_string(), r.top1),
        ("top5".to_string(), r.top5),
        ("top20".to_string(), r.top20),
        ("mrr10".to_string(), r.mrr10),
        ("ndcg10".to_string(), r.ndcg10),
    ]))
}
