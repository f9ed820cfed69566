//! What the recipe evaluates (WordNet's split, the user's BEIR folder, or
//! both) and the one evaluation every point of a run uses: before, during
//! and after training, the pretrained baseline included.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::config::RerankerConfig;
use crate::app::data::wordnet::{SenseEval, WordSenseData};
use crate::app::data::{Malformed, RetrievalSet};
use crate::app::error::Result;
use crate::app::eval::sense_metrics;
use crate::app::reporter::Reporter;
use crate::app::scorer::Scorer;

/// A run's evaluation sets.
pub(super) struct Evaluation {
    /// `dev` or `test`: WordNet's split and the BEIR folder's qrels.
    pub split: &'static str,
    /// WordNet's split, scored when `wordnet` (its queries count in the
    /// report either way).
    pub dev: SenseEval,
    wordnet: bool,
    /// The `eval_data` folder and its set.
    pub eval_data: Option<(PathBuf, RetrievalSet)>,
    retrieve_k: usize,
    /// Whether the passes over `eval_data` report their progress.
    progress: bool,
}

impl Evaluation {
    /// Reads what `c` evaluates; warns of skipped malformed lines, and says
    /// when the run evaluates nothing.
    ///
    /// # Errors
    /// Reading errors of the BEIR folder.
    pub fn open(c: &RerankerConfig, task: &WordSenseData, say: &dyn Reporter) -> Result<Self> {
        let split = c.eval_split.name();
        let eval_data = match &c.eval_data {
            Some(dir) => {
                let malformed = if c.skip_malformed { Malformed::Skip } else { Malformed::Fail };
                let (set, skipped) = crate::app::data::beir::read_beir(dir, split, malformed)?;
                if skipped > 0 {
                    say.warn(&format!("skipped {skipped} malformed lines of {}", dir.display()));
                }
                Some((dir.clone(), set))
            }
            None => None,
        };
        let wordnet = c.evaluates_wordnet();
        if !wordnet && eval_data.is_none() {
            say.say("no evaluation during training: give --eval-data BEIR_DIR (your dev set) or --wordnet-eval");
        }
        Ok(Evaluation {
            split,
            dev: task.sense_eval(c.eval_split, c.dev_queries),
            wordnet,
            eval_data,
            retrieve_k: c.eval_retrieve_k,
            progress: c.train.progress,
        })
    }

    /// `scorer`'s metrics: WordNet's (`wsd_accuracy`, `mrr10`, …) and the
    /// BEIR folder's as `gradcache eval` measures it (`first_stage.*`,
    /// `reranked.*`), its passes' progress reported to `say`.
    ///
    /// # Errors
    /// Scoring errors.
    pub fn evaluate(&self, scorer: &Scorer, say: &dyn Reporter) -> Result<BTreeMap<String, f64>> {
        let mut metrics = BTreeMap::new();
        if self.wordnet {
            metrics.extend(sense_scores(scorer, &self.dev)?);
        }
        if let Some((_, set)) = &self.eval_data {
            let k = self.retrieve_k.min(set.corpus.len());
            let mut progress = |what: &str, done, total| {
                if self.progress {
                    say.work(what, done, total)
                }
            };
            let run = crate::app::retrieval::evaluate_two_stage(scorer, set, k, &mut progress)?;
            metrics.extend(run.first_stage_metrics.named("first_stage"));
            metrics.extend(run.reranked_metrics.named("reranked"));
        }
        Ok(metrics)
    }

    /// What is evaluated, for the run's header line.
    pub fn describe(&self) -> String {
        let mut evaluated = Vec::new();
        if self.wordnet {
            evaluated.push(format!("WordNet {} {} queries x {} senses", self.split, self.dev.set.queries.len(), self.dev.set.corpus.len()));
        }
        if let Some((dir, set)) = &self.eval_data {
            evaluated.push(format!("{} {} {} queries x {} documents", dir.display(), self.split, set.queries.len(), set.corpus.len()));
        }
        if evaluated.is_empty() {
            "no evaluation".to_string()
        } else {
            format!("evaluated on {}", evaluated.join(" and "))
        }
    }

    /// The report's line for the BEIR folder: its name, queries, documents
    /// and the candidates the head reranks per query.
    pub fn eval_data_summary(&self) -> Option<(String, usize, usize, usize)> {
        self.eval_data.as_ref().map(|(dir, set)| {
            let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
            (name, set.queries.len(), set.corpus.len(), self.retrieve_k.min(set.corpus.len()))
        })
    }
}

/// WordNet's metrics of `scorer` over `eval`'s grid.
///
/// # Errors
/// Scoring errors.
pub(super) fn sense_scores(scorer: &Scorer, eval: &SenseEval) -> Result<BTreeMap<String, f64>> {
    let queries: Vec<&str> = eval.set.queries.iter().map(|(_, t)| t.as_str()).collect();
    let corpus: Vec<&str> = eval.set.corpus.iter().map(|(_, t)| t.as_str()).collect();
    sense_metrics(&scorer.score(&queries, &corpus)?, eval)
}
