//! The training stage: the trainer over the run folder (new or resumed),
//! the two-cache step on each batch (one process's share under MPI), the
//! evaluations in between, and the best model kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::best::Best;
use super::config::{write_json, RerankerConfig, Start};
use super::data::batch;
use super::open::Opened;
use super::preflight::Resolved;
use crate::app::error::{AppError, Result};
use crate::app::reporter::Reporter;
use crate::app::train::{TrainSummary, Trainer};
use crate::core::batch::Chunk;
use crate::core::distributed::Collective;
use crate::core::output::StepOutput;
use crate::core::step::GradCache;
use crate::error::GradCacheError;
use crate::models::pretrained::ModelDir;

/// Settings of a run that do not shape what is trained: they may change
/// between a run and its resume. (The training block's own rule is
/// [`crate::app::train::checkpoint::MAY_CHANGE_ON_RESUME`].)
const NOT_IN_FINGERPRINT: [&str; 11] = [
    "model_dir",
    "data_dir",
    "train_jsonl",
    "output_dir",
    "device",
    "dev_queries",
    "eval_split",
    "test_queries",
    "baselines",
    "train",
    "check_weights_every",
];

/// The run's identity beyond its training block: every other setting that
/// shapes training, and SHA-256 checksums of the model weights and of the
/// training data (so a moved folder is the same run, a changed file is
/// not).
fn fingerprint(c: &RerankerConfig, model: &ModelDir) -> Result<crate::app::train::checkpoint::RunFingerprint> {
    use crate::app::train::checkpoint::sha256_file;
    let json = serde_json::to_value(c).map_err(|source| GradCacheError::Json { path: c.output_dir.join("config.json"), source })?;
    let mut run = crate::app::settings::flatten(&json);
    run.retain(|k, _| !NOT_IN_FINGERPRINT.iter().any(|i| k == i || k.starts_with(&format!("{i}."))));
    run.insert("model.sha256".into(), sha256_file(&model.root().join("model.safetensors"))?.into());
    let data = match &c.train_jsonl {
        Some(path) => sha256_file(path)?,
        None => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&c.data_dir)
                .map_err(crate::error::io_error(&c.data_dir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            files.iter().map(|f| sha256_file(f)).collect::<Result<Vec<_>>>()?.join("+")
        }
    };
    run.insert("data.sha256".into(), data.into());
    Ok(run)
}

/// What training left.
pub(super) struct Trained {
    pub summary: TrainSummary,
    /// The model bundle: the last model, or with `select_best` the best.
    pub bundle: PathBuf,
    pub best: Best,
    /// What the machine's matrix multiply reaches in the step's precision,
    /// for the steps' rates to be read against (rank 0).
    pub matmul: Option<crate::runtime::MatmulRate>,
}

/// The trainer over the run folder, new or resumed from its newest intact
/// checkpoint (rank 0 writes the resolved config there first), and the best
/// evaluation so far from the resumed log.
///
/// # Errors
/// A resume refused, or without the best model so far; file errors.
fn open_trainer<'v>(
    r: &Resolved,
    o: &'v Opened,
    start: Start,
    lead: bool,
    bundle: &Path,
    say: &dyn Reporter,
) -> Result<(Trainer<'v>, Best)> {
    let c = &r.c;
    let run = fingerprint(c, &r.model)?;
    let resume = start == Start::Resume;
    let trainer = if lead {
        Trainer::for_run(c.train.clone(), o.scorer.var_store(), &c.output_dir, resume, run)?
    } else {
        Trainer::follower(c.train.clone(), o.scorer.var_store(), &c.output_dir, resume, run)?
    };
    if lead {
        // Only a run that may use this folder records its config there.
        write_json(&c.output_dir.join("config.json"), c)?;
    }
    for (path, why) in trainer.skipped_checkpoints() {
        say.warn(&format!("resume: skipped damaged checkpoint {}: {why}", path.display()));
    }
    match trainer.resumed_from() {
        Some(path) => say.say(&format!("resuming from {} (step {} of {})", path.display(), trainer.first_step(), c.train.steps)),
        None if resume => say.say(&format!("nothing to resume in {}: starting at step 0", c.output_dir.display())),
        None => {}
    }
    // With select_best, OUTPUT/model is the best evaluation's model. A
    // resumed run starts from the best its log holds up to its checkpoint,
    // as the uninterrupted run had it then; the evaluations it repeats are
    // the same (training is bit for bit), so it ends with the same choice.
    let mut best = Best::new(r.selected.clone());
    for (step, metrics) in trainer.logged_evals() {
        best.offer(step, &metrics);
    }
    if lead {
        best.require_bundle(bundle)?;
    }
    Ok((trainer, best))
}

/// Trains `o.scorer` as `r` says, in the run folder, from its start or its
/// newest intact checkpoint; rank 0 evaluates, keeps the best model and
/// writes the folder, the other processes train their share alike.
///
/// # Errors
/// A resume refused or without the best model so far; the step's and the
/// trainer's errors; file errors.
pub(super) fn train(r: &Resolved, o: &Opened, start: Start, world: &dyn Collective, say: &dyn Reporter) -> Result<Trained> {
    let c = &r.c;
    let (rank, ranks) = (world.rank(), world.world_size());
    let lead = rank == 0;
    let mut gc = GradCache::new(c.step.clone(), o.scorer.query_encoder(), o.scorer.passage_encoder(), o.scorer.head(), &c.loss)?;
    let bundle = c.output_dir.join("model");
    let (mut trainer, mut best) = open_trainer(r, o, start, lead, &bundle, say)?;
    // A third of a second, before training (bf16 runs several times
    // faster on bf16 units).
    let matmul = if lead {
        crate::runtime::matmul_gflops(r.device, crate::runtime::MATMUL_PROBE_SHAPE, c.step.precision.matmul_kind(), 0.3).ok()
    } else {
        None
    };
    let (own_start, own) = (o.own_start(rank), o.shares[rank]);
    let summary = trainer.run(
        |i| -> Result<StepOutput> {
            let (q, p, t) = batch(&o.records, c, &o.tok, i, r.device)?;
            if ranks == 1 {
                return Ok(gc.step(&q, &p, &t)?);
            }
            if c.check_weights_every > 0 && i % c.check_weights_every == 0 {
                crate::core::distributed::check_same_weights(o.scorer.var_store(), world, i)?;
            }
            let g = c.group_size;
            let (q, p) = (q.chunk(own_start, own)?, p.chunk(own_start * g, own * g)?);
            Ok(gc.distributed_step(&q, &p, &t, o.scorer.var_store(), world)?)
        },
        // Rank 0 evaluates (and keeps the best model); the others wait for
        // it at the next step.
        |step| {
            if !lead {
                return Ok(BTreeMap::new());
            }
            let metrics = o.evaluation.evaluate(&o.scorer, say)?;
            if best.offer(step, &metrics) {
                o.scorer.save(&bundle)?;
            }
            Ok::<_, AppError>(metrics)
        },
        say,
    )?;
    Ok(Trained { summary, bundle, best, matmul })
}
