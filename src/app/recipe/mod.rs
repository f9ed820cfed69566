//! The training recipe behind `gradcache train` and
//! `examples/train_reranker` (the README's main job): a BERT folder's
//! encoder (tied by default) and a learned head, trained with the two-cache
//! step on the embedded WordNet task or the user's JSONL records, evaluated
//! on WordNet's dev (or test) split before and after, and saved as a model
//! bundle ([`crate::app::scorer`]).
//!
//! A run is a sequence of stages, each in its own file: `preflight.rs`
//! (every check before anything is written; the config resolved) →
//! `open.rs` (model, data, evaluation sets) → the pretrained baseline →
//! `training.rs` (the trainer, the step, evaluations, `best.rs`'s kept
//! model) → `report.rs` (`results.json`, the summary). `config.rs` holds
//! the settings and their defaults, `evaluation.rs` the one evaluation. It prints nothing: what it
//! has to say goes to a [`Reporter`] (the command line's console shows it).
//!
//! A run writes into its output folder: `config.json` (the resolved
//! config), `train_config.json`, `metrics.jsonl`, `tensorboard/`,
//! `checkpoints/`, `results.json` and the bundle `model/`.

mod best;
mod config;
mod data;
mod evaluation;
mod open;
mod preflight;
mod report;
mod training;

pub use config::{
    checkout_path, chunk_note, recipe_lr_multipliers, RerankerConfig, Start, RECIPE_BASELINES, RECIPE_CHECKPOINT_EVERY,
    RECIPE_CHUNK_TOKENS, RECIPE_LAYOUT, RECIPE_LEARNING_RATE, RECIPE_NORMALIZE, RECIPE_OVERRIDES, RECIPE_PRECISION, RECIPE_TEMPERATURE,
};
pub use data::{batch_texts, training_records};
pub use report::{RunSummary, TrainReport};

use crate::app::error::Result;
use crate::app::reporter::{Reporter, Silent};
use crate::core::distributed::Collective;

/// Runs the recipe: trains, evaluates, saves the bundle, reports its
/// settings and progress to `say`, and returns the results with what the
/// comparison table needs (`cli::print_report` prints it, with the
/// committed baselines when the budget matches).
///
/// Launched by `mpirun -np R` (and built with the `mpi` feature), the R
/// processes train one model together ([`crate::core::distributed::launched`]):
/// each takes its share of every global batch of `batch_size` queries,
/// rank 0 alone reports, evaluates and writes the run folder.
///
/// # Errors
/// Any configuration, data, model, training or file error, typed.
pub fn run(c: &RerankerConfig, start: Start, say: &dyn Reporter) -> Result<TrainReport> {
    let world = crate::core::distributed::launched()?;
    run_with(c, start, world.as_ref(), say)
}

/// [`run`] over the processes of `world` ([`crate::core::distributed::SingleProcess`]
/// for one).
///
/// # Errors
/// As [`run`]; [`crate::GradCacheError::InvalidConfig`] when `batch_size`
/// is smaller than the number of processes.
pub fn run_with(c: &RerankerConfig, start: Start, world: &dyn Collective, say: &dyn Reporter) -> Result<TrainReport> {
    let lead = world.rank() == 0;
    let say: &dyn Reporter = if lead { say } else { &Silent };
    let resolved = preflight::preflight(c, start, world, say)?;
    let opened = open::open(&resolved, world, say)?;
    report::header(&resolved, &opened, say);
    let pretrained_cosine = match &opened.pretrained {
        Some(p) if lead => Some(opened.evaluation.evaluate(p, say)?),
        _ => None,
    };
    let trained = training::train(&resolved, &opened, start, world, say)?;
    if !lead {
        return Ok(TrainReport { results: serde_json::Value::Null, bundle: trained.bundle, summary: None });
    }
    report::finish(&resolved, &opened, pretrained_cosine, trained)
}
