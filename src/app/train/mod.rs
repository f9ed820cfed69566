//! The training loop around the two-cache step: AdamW, warmup and decay,
//! gradient clipping, evaluation, atomic checkpoints, exact resume, metrics
//! as JSONL, and progress.
//!
//! [`Trainer::run`] takes two closures: `step(i)` builds batch `i` and runs
//! the step (gradients filled), `evaluate(i)` returns named metrics. Batches
//! must be a function of the step index (see [`sample_indices`]) and the
//! trainer seeds libtorch before every step, so a resumed run repeats the
//! uninterrupted one exactly.

pub mod checkpoint;
pub mod optim;
pub mod progress;
pub mod tensorboard;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::nn;

use crate::app::error::{AppError, Result};
use crate::app::reporter::{Reporter, Silent};
use crate::check::zero_grads;
use crate::core::output::PassFlops;
use crate::core::output::StepOutput;
use crate::error::GradCacheError;
use crate::models::weights::write_bytes_atomically;
use optim::{clip_grad_norm, AdamW, LinearSchedule};
use progress::Progress;

/// How to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps in the whole run.
    pub steps: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Learning-rate multipliers by variable-name prefix (e.g. `{"head": 50}`
    /// for a freshly initialised head on a pretrained encoder); the longest
    /// matching prefix wins.
    pub lr_multipliers: BTreeMap<String, f64>,
    /// AdamW's decoupled weight decay (not applied to 1-d parameters).
    pub weight_decay: f64,
    /// Linear warmup steps, then linear decay to 0.
    pub warmup_steps: usize,
    /// Clip the global gradient norm to this (`null`: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Evaluate every this many steps (0: only before and after).
    pub eval_every: usize,
    /// Checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Checkpoints to keep.
    pub keep_checkpoints: usize,
    /// Seed of batches and dropout.
    pub seed: u64,
    /// Report progress, the step plan and each evaluation to the run's
    /// [`crate::app::reporter::Reporter`] (the console shows them on stderr).
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 100,
            learning_rate: 2e-5,
            lr_multipliers: BTreeMap::new(),
            weight_decay: 0.01,
            warmup_steps: 10,
            max_grad_norm: Some(1.0),
            eval_every: 0,
            checkpoint_every: 0,
            keep_checkpoints: 2,
            seed: 0,
            progress: true,
        }
    }
}

impl TrainConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason| Err(AppError::from(GradCacheError::InvalidConfig { field, reason }));
        if self.steps == 0 {
            return bad("steps", "must be at least 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("learning_rate", "must be finite and positive");
        }
        if self.lr_multipliers.values().any(|m| !(m.is_finite() && *m >= 0.0)) {
            return bad("lr_multipliers", "must be finite and non-negative");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", "must be finite and non-negative");
        }
        if self.max_grad_norm.is_some_and(|m| !(m.is_finite() && m > 0.0)) {
            return bad("max_grad_norm", "must be finite and positive when set");
        }
        if self.keep_checkpoints == 0 {
            return bad("keep_checkpoints", "must be at least 1");
        }
        Ok(())
    }

    fn lr_multiplier(&self, name: &str) -> f64 {
        self.lr_multipliers
            .iter()
            .filter(|(prefix, _)| name == prefix.as_str() || name.starts_with(&format!("{prefix}.")))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(1.0, |(_, m)| *m)
    }
}

/// `count` indices below `n` for step `step`: each epoch visits every index
/// once in an order fixed by `seed` and the epoch, so batch `step` is the
/// same whether or not the run was interrupted.
pub fn sample_indices(n: usize, count: usize, step: usize, seed: u64) -> Vec<usize> {
    let mut out = Vec::with_capacity(count);
    let mut cache: Option<(usize, Vec<usize>)> = None;
    for k in 0..count {
        let position = step * count + k;
        let (epoch, offset) = (position / n.max(1), position % n.max(1));
        if cache.as_ref().map(|c| c.0) != Some(epoch) {
            cache = Some((epoch, permutation(n, seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))));
        }
        out.push(cache.as_ref().map_or(0, |c| c.1[offset]));
    }
    out
}

/// A permutation of `0..n` by Fisher–Yates with SplitMix64.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// The metrics log, `metrics.jsonl`: one JSON object a line, appended
/// entry by entry; every entry also goes to `tensorboard/` as scalars.
#[derive(Debug)]
struct MetricsLog {
    /// `None` for a process that does not write (a follower).
    path: Option<PathBuf>,
    /// The entries kept from a resumed run's log.
    kept: Vec<serde_json::Value>,
    /// The TensorBoard event file, for a process that writes.
    events: Option<tensorboard::EventWriter>,
}

impl MetricsLog {
    /// Opens the log, keeping only entries up to `step` (those of a resumed
    /// checkpoint), and its TensorBoard twin in `events_dir`, which starts
    /// with the same kept entries.
    fn open(path: PathBuf, events_dir: &Path, keep_through: Option<usize>, writes: bool) -> Result<Self> {
        let kept: Vec<String> = match (keep_through, std::fs::read_to_string(&path)) {
            (Some(step), Ok(text)) => text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
                        .is_some_and(|s| s as usize <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect(),
            _ => Vec::new(),
        };
        // Rewritten once (atomically) to the resumed checkpoint's entries;
        // after that each entry is appended.
        if writes {
            write_bytes_atomically(&path, kept.concat().as_bytes())?;
        }
        let kept: Vec<serde_json::Value> = kept.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let events = match writes {
            true => Some(tensorboard::EventWriter::create(events_dir)?),
            false => None,
        };
        if let Some(events) = &events {
            for entry in &kept {
                events.scalars(entry["step"].as_i64().unwrap_or(0), &tensorboard::entry_scalars(entry))?;
            }
        }
        Ok(MetricsLog { path: writes.then_some(path), kept, events })
    }

    /// The metrics an evaluation at `step` logged, among the kept entries.
    fn logged_eval(&self, step: usize) -> Option<BTreeMap<String, f64>> {
        self.kept
            .iter()
            .find(|e| e.get("step").and_then(serde_json::Value::as_u64) == Some(step as u64) && e.get("eval").is_some())
            .and_then(|e| serde_json::from_value(e["eval"].clone()).ok())
    }

    fn push(&mut self, entry: serde_json::Value) -> Result<()> {
        use std::io::Write;
        let Some(path) = &self.path else { return Ok(()) };
        if let Some(events) = &self.events {
            events.scalars(entry["step"].as_i64().unwrap_or(0), &tensorboard::entry_scalars(&entry))?;
        }
        let io = crate::error::io_error(path);
        let mut file = std::fs::OpenOptions::new().append(true).open(path).map_err(crate::error::io_error(path))?;
        // One write per line: a crash leaves at most a torn last line, which
        // `open` drops on resume (it keeps only parseable entries).
        file.write_all(format!("{entry}\n").as_bytes()).and_then(|()| file.flush()).map_err(io).map_err(Into::into)
    }
}

/// Renames `path` to `previous` (replacing an older one), if it exists.
fn set_aside(path: &Path, previous: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let io = crate::error::io_error;
    if previous.is_dir() {
        std::fs::remove_dir_all(previous).map_err(io(previous))?;
    } else if previous.exists() {
        std::fs::remove_file(previous).map_err(io(previous))?;
    }
    std::fs::rename(path, previous).map_err(io(path)).map_err(Into::into)
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// The step the run started from (non-zero after a resume).
    pub first_step: usize,
    /// Completed steps.
    pub steps: usize,
    /// Loss of every step run here, in order.
    pub losses: Vec<f64>,
    /// Metrics before training (after a resume: as the first run logged
    /// them, if it did).
    pub before: Option<BTreeMap<String, f64>>,
    /// Metrics after the last step.
    pub after: BTreeMap<String, f64>,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
    /// Per pass, the median over the steps run here of the GFLOP/s it
    /// achieved (where the step counts its FLOPs).
    pub median_rates: PassFlops,
}

/// Runs training over a `VarStore`, writing into an output folder:
/// `metrics.jsonl`, `train_config.json` and `checkpoints/`.
#[derive(Debug)]
pub struct Trainer<'v> {
    config: TrainConfig,
    vs: &'v nn::VarStore,
    out: PathBuf,
    optimizer: AdamW,
    first_step: usize,
    log: MetricsLog,
    run: checkpoint::RunFingerprint,
    resumed_from: Option<PathBuf>,
    skipped: Vec<(PathBuf, String)>,
    /// Whether this process writes the run folder (false for the other
    /// processes of a distributed run).
    writes: bool,
}

impl<'v> Trainer<'v> {
    /// Prepares a run. With `resume`, continues from the newest checkpoint in
    /// `out/checkpoints` when there is one. Without, a previous run's
    /// `checkpoints/` and `metrics.jsonl` are kept one generation back, as
    /// `checkpoints.previous/` and `metrics.previous.jsonl`, so a fresh run
    /// never mixes with (or silently deletes) the last one.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`]; [`GradCacheError::Io`]; checkpoint
    /// errors from [`checkpoint::restore`].
    pub fn new(config: TrainConfig, vs: &'v nn::VarStore, out: &Path, resume: bool) -> Result<Self> {
        Self::for_run(config, vs, out, resume, checkpoint::RunFingerprint::new())
    }

    /// [`Trainer::new`] for a run with an identity beyond its training
    /// configuration (`run`: its model and data settings and checksums):
    /// stored in every checkpoint, and a resume with another identity is
    /// refused. Resuming skips damaged checkpoints (see
    /// [`checkpoint::verify`]) for the newest intact one
    /// ([`Trainer::skipped_checkpoints`] says which and why).
    ///
    /// # Errors
    /// As [`Trainer::new`]; [`AppError::ResumeMismatch`] naming every
    /// setting that differs from the checkpoint's run;
    /// [`AppError::Checkpoint`] when checkpoints exist but none is
    /// intact. Nothing in `out` changes on error.
    pub fn for_run(config: TrainConfig, vs: &'v nn::VarStore, out: &Path, resume: bool, run: checkpoint::RunFingerprint) -> Result<Self> {
        Self::open(config, vs, out, resume, run, true)
    }

    /// [`Trainer::for_run`] for the other processes of a distributed run:
    /// it resumes from the same checkpoint (read from the same folder) and
    /// trains alike, but writes nothing — no log, no checkpoint, no
    /// progress; the writing process (rank 0) does.
    ///
    /// # Errors
    /// As [`Trainer::for_run`].
    pub fn follower(config: TrainConfig, vs: &'v nn::VarStore, out: &Path, resume: bool, run: checkpoint::RunFingerprint) -> Result<Self> {
        Self::open(config, vs, out, resume, run, false)
    }

    fn open(
        config: TrainConfig,
        vs: &'v nn::VarStore,
        out: &Path,
        resume: bool,
        run: checkpoint::RunFingerprint,
        writes: bool,
    ) -> Result<Self> {
        config.validate()?;
        if writes {
            std::fs::create_dir_all(out).map_err(crate::error::io_error(out))?;
        }
        let mut optimizer = AdamW::new(config.weight_decay);
        let mut first_step = 0;
        let mut resumed_from = None;
        let mut skipped = Vec::new();
        if resume {
            let all = checkpoint::list(&out.join("checkpoints"))?;
            for (_, path) in all.iter().rev() {
                if let Err(e) = checkpoint::verify(path) {
                    skipped.push((path.clone(), e.to_string()));
                    continue;
                }
                first_step = checkpoint::restore(path, vs, &mut optimizer, &config, &run)?.step;
                resumed_from = Some(path.clone());
                break;
            }
            if !all.is_empty() && resumed_from.is_none() {
                let reasons: Vec<String> = skipped.iter().map(|(_, r)| r.clone()).collect();
                return Err(AppError::Checkpoint {
                    path: out.join("checkpoints"),
                    reason: format!("no intact checkpoint to resume from: {}", reasons.join("; ")),
                });
            }
        } else if writes {
            set_aside(&out.join("checkpoints"), &out.join("checkpoints.previous"))?;
            set_aside(&out.join("metrics.jsonl"), &out.join("metrics.previous.jsonl"))?;
            set_aside(&out.join("tensorboard"), &out.join("tensorboard.previous"))?;
        }
        // Keep the log up to the checkpoint resumed from; with nothing to
        // resume, the run starts over and so does its log.
        let log = MetricsLog::open(out.join("metrics.jsonl"), &out.join("tensorboard"), resumed_from.as_ref().map(|_| first_step), writes)?;
        if writes {
            let json = serde_json::to_vec_pretty(&config)
                .map_err(|source| GradCacheError::Json { path: out.join("train_config.json"), source })?;
            write_bytes_atomically(&out.join("train_config.json"), &json)?;
        }
        Ok(Trainer { config, vs, out: out.to_path_buf(), optimizer, first_step, log, run, resumed_from, skipped, writes })
    }

    /// The checkpoint this run resumed from, if any.
    pub fn resumed_from(&self) -> Option<&Path> {
        self.resumed_from.as_deref()
    }

    /// Damaged checkpoints a resume passed over, newest first, with why.
    pub fn skipped_checkpoints(&self) -> &[(PathBuf, String)] {
        &self.skipped
    }

    /// The step this run starts from.
    pub fn first_step(&self) -> usize {
        self.first_step
    }

    /// The evaluations a resumed run's log holds (those up to its
    /// checkpoint), by step: what an uninterrupted run had seen by then.
    pub fn logged_evals(&self) -> Vec<(usize, BTreeMap<String, f64>)> {
        self.log
            .kept
            .iter()
            .filter_map(|e| {
                let step = e.get("step")?.as_u64()? as usize;
                Some((step, serde_json::from_value(e.get("eval")?.clone()).ok()?))
            })
            .collect()
    }

    /// Trains from [`Trainer::first_step`] to `config.steps`, reporting
    /// progress, the step plan and each evaluation's metrics to `say`
    /// (when `config.progress`, and only from the process that writes).
    /// The closures may fail with any error the application's wraps (the
    /// step's [`crate::GradCacheError`], or [`AppError`]).
    ///
    /// # Errors
    /// Errors of the closures; [`AppError::NonFiniteGradient`];
    /// file errors.
    pub fn run<E1, E2>(
        &mut self,
        mut step: impl FnMut(usize) -> std::result::Result<StepOutput, E1>,
        mut evaluate: impl FnMut(usize) -> std::result::Result<BTreeMap<String, f64>, E2>,
        say: &dyn Reporter,
    ) -> Result<TrainSummary>
    where
        AppError: From<E1> + From<E2>,
    {
        let c = self.config.clone();
        let say: &dyn Reporter = if c.progress && self.writes { say } else { &Silent };
        let schedule = LinearSchedule { peak: c.learning_rate, warmup: c.warmup_steps, total: c.steps };
        let before = if self.first_step == 0 {
            Some(self.evaluate(0, &mut evaluate, say)?)
        } else {
            // A resumed run: the first run's evaluation before training, as
            // its log recorded it.
            self.log.logged_eval(0)
        };
        // Started after the first evaluation, so steps/s and ETA are about steps.
        let mut progress = Progress::new(self.first_step, c.steps);
        let mut losses = Vec::new();
        let mut rates = Vec::new();
        let mut checkpoint_path = None;
        let mut after = BTreeMap::new();
        for i in self.first_step..c.steps {
            let started = Instant::now();
            zero_grads(self.vs);
            tch::manual_seed(crate::core::replay::ReplaySeeds::from_base(c.seed).after(i) >> 1);
            let out = step(i)?;
            let update = Instant::now();
            let norm = clip_grad_norm(self.vs, c.max_grad_norm)?;
            if !norm.is_finite() {
                return Err(AppError::NonFiniteGradient { step: i + 1 });
            }
            let lr = schedule.lr(i);
            self.optimizer.step_with(self.vs, |name| lr * c.lr_multiplier(name))?;
            let update = update.elapsed();
            let done = i + 1;
            losses.push(out.loss);
            let mut entry = serde_json::json!({
                "step": done, "loss": out.loss, "lr": lr, "grad_norm": norm,
                "seconds": started.elapsed().as_secs_f64(),
            });
            // Where the step's time went: the paper's passes, then clipping
            // and the optimizer ("update").
            let t = &out.timings;
            entry["pass_seconds"] = serde_json::json!({
                "representation": t.representation.as_secs_f64(), "score": t.score.as_secs_f64(),
                "distance_gradient": t.distance_gradient.as_secs_f64(), "head": t.head.as_secs_f64(), "encoder": t.encoder.as_secs_f64(),
                "update": update.as_secs_f64(),
            });
            let rate = out.flops.gflops_per_second(&out.timings);
            if rate.any() {
                entry["gflop_s"] = serde_json::json!({
                    "representation": rate.representation, "score": rate.score, "head": rate.head, "encoder": rate.encoder,
                });
            }
            rates.push(rate);
            // The layout stays the same while the batch's shape does: shown
            // once per process, logged once per run (on the first step, so a
            // resumed run's log reads like an uninterrupted one's).
            if i == self.first_step {
                say.note(&out.describe_plan());
            }
            if i == 0 {
                entry["plan"] = out.plan_json();
            }
            self.log.push(entry)?;
            say.step(&progress.update(done, out.loss));
            if done == c.steps || (c.eval_every > 0 && done % c.eval_every == 0) {
                after = self.evaluate(done, &mut evaluate, say)?;
            }
            if self.writes && (done == c.steps || (c.checkpoint_every > 0 && done % c.checkpoint_every == 0)) {
                let state =
                    checkpoint::CheckpointState { step: done, config: c.clone(), run: self.run.clone(), checksums: BTreeMap::new() };
                checkpoint_path =
                    Some(checkpoint::save(&self.out.join("checkpoints"), self.vs, &self.optimizer, &state, c.keep_checkpoints)?);
            }
        }
        if self.first_step >= c.steps {
            // Resumed at the last step: nothing ran, so measure the model as
            // it stands rather than report nothing.
            after = self.evaluate(c.steps, &mut evaluate, say)?;
        }
        let checkpoint = match checkpoint_path {
            Some(p) => p,
            None => checkpoint::list(&self.out.join("checkpoints"))?.pop().map(|(_, p)| p).unwrap_or_default(),
        };
        Ok(TrainSummary {
            first_step: self.first_step,
            steps: c.steps,
            losses,
            before,
            after,
            checkpoint,
            median_rates: PassFlops::median(&rates),
        })
    }

    fn evaluate<E>(
        &mut self,
        step: usize,
        evaluate: &mut impl FnMut(usize) -> std::result::Result<BTreeMap<String, f64>, E>,
        say: &dyn Reporter,
    ) -> Result<BTreeMap<String, f64>>
    where
        AppError: From<E>,
    {
        let metrics = tch::no_grad(|| evaluate(step))?;
        if !metrics.is_empty() {
            let shown: Vec<String> = metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            say.note(&format!("eval @ step {step}: {}", shown.join(", ")));
            self.log.push(serde_json::json!({ "step": step, "eval": metrics }))?;
        }
        Ok(metrics)
    }
}
