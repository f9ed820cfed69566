//! What a run says and leaves: its header lines, `results.json`, the saved
//! models, and the summary the command line's table is printed from.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::config::{chunk_note, write_json, RerankerConfig};
use super::evaluation::sense_scores;
use super::open::Opened;
use super::preflight::Resolved;
use super::training::Trained;
use crate::app::data::wordnet::Split;
use crate::app::error::Result;
use crate::app::eval::ReferenceResults;
use crate::app::reporter::Reporter;
use crate::core::layout::{ChunkRule, Side};

/// What a finished run left.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The content of `results.json` (`null` on the processes of a
    /// distributed run other than rank 0).
    pub results: serde_json::Value,
    /// The model bundle: the last model, or with `select_best` the best
    /// one (the last is then in `OUTPUT/last`).
    pub bundle: PathBuf,
    /// What the run measured, for its report (`None` on the processes of
    /// a distributed run other than rank 0); `cli::print_report` prints it.
    pub summary: Option<RunSummary>,
}

/// The measurements of a finished run, beside the baselines to show with
/// them.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run folder.
    pub output_dir: PathBuf,
    /// The pretrained model's name in the report (`MiniLM` for the embedded
    /// one, else its folder's name).
    pub model_name: String,
    /// The `eval_data` folder evaluated: its name, queries, documents and
    /// the candidates the head reranked per query.
    pub eval_data: Option<(String, usize, usize, usize)>,
    /// The evaluation `select_best` kept: metric, step and value (its
    /// bundle is [`TrainReport::bundle`]; the last model is `OUTPUT/last`).
    pub best: Option<(String, usize, f64)>,
    /// The split evaluated (`dev` or `test`) and its queries.
    pub split: String,
    /// Queries evaluated.
    pub eval_queries: usize,
    /// The pretrained encoder's cosine (vector encoders only).
    pub pretrained_cosine: Option<BTreeMap<String, f64>>,
    /// The model before training (a fresh run only).
    pub before: Option<BTreeMap<String, f64>>,
    /// The trained model.
    pub after: BTreeMap<String, f64>,
    /// Test-split queries and the trained model's metrics on them, when
    /// `test_queries` asked for them.
    pub test: Option<(usize, BTreeMap<String, f64>)>,
    /// The committed fine-tuned baselines and where they were read.
    pub baselines: Option<(PathBuf, ReferenceResults)>,
    /// The run's budget ([`RerankerConfig::budget`]): baselines are shown
    /// only when theirs is equal.
    pub budget: BTreeMap<String, serde_json::Value>,
    /// Training steps and the seed.
    pub steps: usize,
    /// The run's seed.
    pub seed: u64,
    /// Every step's loss.
    pub losses: Vec<f64>,
    /// Per pass, the median GFLOP/s over the steps
    /// ([`crate::app::train::TrainSummary::median_rates`]), and this
    /// machine's matmul rate in the run's precision, measured before
    /// training ([`crate::runtime::matmul_gflops`] at
    /// [`crate::runtime::MATMUL_PROBE_SHAPE`]).
    pub rates: (crate::core::output::PassFlops, Option<crate::runtime::MatmulRate>),
}

/// The run's header: what it trains on and evaluates, where, how the step
/// is cut, and how the processes share a batch.
pub(super) fn header(r: &Resolved, o: &Opened, say: &dyn Reporter) {
    let c = &r.c;
    let device = r.device;
    let precision = &r.precision;
    say.say(&format!(
        "train_reranker: {} training records, {}, device {device:?}, precision {precision}",
        o.records.len(),
        o.evaluation.describe()
    ));
    if let (Some(metric), 0) = (&r.selected, c.train.eval_every) {
        say.say(&format!(
            "--select-best {metric} chooses between the evaluations before and after training: --eval-every N evaluates in between"
        ));
    }
    let sizes = if c.step.auto_sizes {
        "chunk and block sizes from the memory budget".to_string()
    } else {
        let l = &c.step.layout;
        let chunk = |side| match c.step.chunk_rule(side) {
            ChunkRule::Items(items) => format!("{items}"),
            ChunkRule::Tokens(tokens) => format!("{tokens} tokens"),
        };
        let chunks = match (chunk(Side::Queries), chunk(Side::Passages)) {
            (q, p) if q == p => format!("encoder chunk {q}"),
            (q, p) => format!("encoder chunks {q} (queries), {p} (passages)"),
        };
        format!("{chunks}, head block {}x{}", l.head_block_queries, l.head_block_passages)
    };
    say.say(&format!(
        "batch {} queries x {} passages each ({} passages), {sizes}, {} steps",
        c.batch_size,
        c.group_size,
        c.batch_size * c.group_size,
        c.train.steps
    ));
    if let Some(note) = chunk_note(&c.step, c.max_len) {
        say.say(&note);
    }
    if o.shares.len() > 1 {
        say.say(&format!("{} processes (MPI), queries per process {:?}: one global batch per step", o.shares.len(), o.shares));
    }
}

/// Rank 0's end of a run: saves the last model (beside the kept best),
/// evaluates the test split when asked, writes `results.json` and gathers
/// the summary, with the committed baselines read for the table.
///
/// # Errors
/// Saving, scoring, reading the baselines, writing `results.json`.
pub(super) fn finish(r: &Resolved, o: &Opened, pretrained_cosine: Option<BTreeMap<String, f64>>, t: Trained) -> Result<TrainReport> {
    let c = &r.c;
    let kept = t.best.kept();
    o.scorer.save(&if t.best.keeps() { c.output_dir.join("last") } else { t.bundle.clone() })?;
    let mut results = BTreeMap::from([("after".to_string(), t.summary.after.clone())]);
    let mut test = None;
    if c.test_queries > 0 {
        let eval = o.task.sense_eval(Split::Test, c.test_queries);
        results.insert("test_after".to_string(), sense_scores(&o.scorer, &eval)?);
        if let Some(p) = &o.pretrained {
            results.insert("test_pretrained_cosine".to_string(), sense_scores(p, &eval)?);
        }
        test = Some((eval.set.queries.len(), results["test_after"].clone()));
    }
    if let Some(cosine) = &pretrained_cosine {
        results.insert("pretrained_cosine".to_string(), cosine.clone());
    }
    if let Some(before) = &t.summary.before {
        results.insert("before".to_string(), before.clone());
    }
    let mut results = serde_json::json!(results);
    results["split"] = o.evaluation.split.into();
    if let Some((metric, step, value)) = &kept {
        results["best"] =
            serde_json::json!({"metric": metric, "step": step, "value": value, "bundle": t.bundle, "last": c.output_dir.join("last")});
    }
    results["budget"] = serde_json::json!(c.budget());
    write_json(&c.output_dir.join("results.json"), &results)?;
    // Fine-tuned baselines from the committed results file, shown beside
    // the run when they were measured at its budget.
    let baselines = match &c.baselines {
        Some(path) if path.exists() => Some((path.clone(), ReferenceResults::read(path)?)),
        _ => None,
    };
    let model_name = if c.model_dir == RerankerConfig::default().model_dir {
        "MiniLM".to_string()
    } else {
        c.model_dir.file_name().map_or_else(|| c.model_dir.display().to_string(), |n| n.to_string_lossy().into_owned())
    };
    let summary = RunSummary {
        output_dir: c.output_dir.clone(),
        model_name,
        eval_data: o.evaluation.eval_data_summary(),
        best: kept,
        split: o.evaluation.split.to_string(),
        eval_queries: o.evaluation.dev.set.queries.len(),
        pretrained_cosine,
        before: t.summary.before,
        after: t.summary.after,
        test,
        baselines,
        budget: c.budget(),
        steps: t.summary.steps,
        seed: c.train.seed,
        losses: t.summary.losses,
        rates: (t.summary.median_rates, t.matmul),
    };
    Ok(TrainReport { results, bundle: t.bundle, summary: Some(summary) })
}
