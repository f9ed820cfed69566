//! The exactness checker: can this head (and these encoders) be trusted
//! under the two-cache step?
//!
//! Three checks, each aimed at one way a head breaks exactness:
//!
//! 1. **Replay**: the cached step with its replay check on. Catches
//!    randomness the step does not replay (a private generator) and state
//!    kept across calls: the head pass then recomputes other scores than the
//!    score pass.
//! 2. **Coupling**: the batch's scores computed block by block with the
//!    step's layout, and as one block. A pair's score must not depend on the
//!    other pairs of its block (batch normalisation, block statistics). Run
//!    in train mode when the head is deterministic there, else in eval mode
//!    (dropout would make the two layouts differ for no fault).
//! 3. **Gradients**: every parameter's gradient from the cached step against
//!    the full-batch step, from the same generator state, replay check off:
//!    the end-to-end verdict, reported per parameter.

use std::fmt;

use tch::{nn, Tensor};

use super::{zero_grads, GradientComparison, GradientSnapshot, Tolerance};
use crate::core::config::StepConfig;
use crate::core::encoder::Encoder;
use crate::core::replay::ReplaySeeds;
use crate::core::step::GradCache;
use crate::core::targets::Targets;
use crate::error::{GradCacheError, Result};
use crate::util::max_abs;

/// The coupling check's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CouplingCheck {
    /// Whether it ran in train mode (else eval mode, the head being random).
    pub train_mode: bool,
    /// `max |S_blocked − S_whole| / max(1, max |S_whole|)`.
    pub relative_diff: f64,
}

/// What [`check_head`] found.
#[derive(Debug)]
pub struct HeadCheckReport {
    /// The replay check's error, if it failed.
    pub replay: Option<GradCacheError>,
    /// Scores by blocks against one block.
    pub coupling: CouplingCheck,
    /// Loss of the cached step and of the full-batch step.
    pub losses: (f64, f64),
    /// Per-parameter gradient differences.
    pub gradients: GradientComparison,
    /// `‖g − g_full‖ / ‖g_full‖` over all parameters
    /// ([`GradientSnapshot::relative_distance`]).
    pub gradient_distance: f64,
    /// The tolerance of the verdict.
    pub tolerance: Tolerance,
}

impl HeadCheckReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.replay.is_none()
            && self.coupling.relative_diff <= self.tolerance.rel
            && self.gradients.failures(self.tolerance).is_empty()
            && (self.losses.0 - self.losses.1).abs() <= self.tolerance.abs + self.tolerance.rel * self.losses.1.abs()
    }
}

impl fmt::Display for HeadCheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = |ok: bool| if ok { "ok  " } else { "FAIL" };
        writeln!(f, "head check: {}", if self.passed() { "PASSED" } else { "FAILED" })?;
        match &self.replay {
            None => writeln!(f, "  [ok  ] replay: every recomputed chunk and block equals the first pass")?,
            Some(e) => writeln!(f, "  [FAIL] replay: {e}\n         -> randomness from a private generator, or state kept across calls")?,
        }
        let c = &self.coupling;
        let ok = c.relative_diff <= self.tolerance.rel;
        writeln!(
            f,
            "  [{}] coupling ({} mode): scores by blocks vs one block differ by {:.3e} (relative){}",
            verdict(ok),
            if c.train_mode { "train" } else { "eval" },
            c.relative_diff,
            if ok { "" } else { "\n         -> a pair's score depends on other pairs: batch norm or block statistics?" }
        )?;
        let loss_ok = (self.losses.0 - self.losses.1).abs() <= self.tolerance.abs + self.tolerance.rel * self.losses.1.abs();
        writeln!(f, "  [{}] loss: cached {:.12} vs full batch {:.12}", verdict(loss_ok), self.losses.0, self.losses.1)?;
        let failures = self.gradients.failures(self.tolerance);
        writeln!(
            f,
            "  [{}] gradients vs the full-batch step (tolerance |Δ| ≤ {:e} + {:e}·max|g|):",
            verdict(failures.is_empty()),
            self.tolerance.abs,
            self.tolerance.rel
        )?;
        writeln!(f, "         {:<36} {:>10} {:>10} {:>10}", "parameter", "max|Δ|", "rel", "max|g|")?;
        for p in &self.gradients.parameters {
            let mark = if p.within(self.tolerance) { " " } else { "!" };
            writeln!(f, "       {mark} {:<36} {:>10.2e} {:>10.2e} {:>10.2e}", p.name, p.max_abs_diff, p.max_rel_diff, p.reference_max_abs)?;
        }
        Ok(())
    }
}

/// Scores the batch with `config`'s block layout.
fn scores_with<QE: Encoder + ?Sized, PE: Encoder + ?Sized>(
    gc: &GradCache<'_, QE, PE>,
    reps: &crate::core::step::Representations,
    config: StepConfig,
    seeds: &ReplaySeeds,
) -> Result<Tensor> {
    let plan = crate::core::plan::Plan::with_retained(&config.layout, reps.queries.len(), reps.passages.len(), Default::default());
    Ok(tch::no_grad(|| gc.with_config(config)?.score_pass(reps, &plan, seeds))?.matrix)
}

/// Runs the three checks on one sample batch with `gc`'s encoders, head,
/// loss and layout (use a layout that cuts the batch into several chunks and
/// blocks). `vs` must hold every parameter; its gradients are zeroed at the
/// end. libtorch's generator is re-seeded.
///
/// # Errors
/// Any error of the steps other than a replay mismatch (which is reported).
pub fn check_head<QE: Encoder + ?Sized, PE: Encoder + ?Sized>(
    gc: &GradCache<'_, QE, PE>,
    vs: &nn::VarStore,
    queries: &QE::Input,
    passages: &PE::Input,
    targets: &Targets,
    tolerance: Tolerance,
) -> Result<HeadCheckReport> {
    const SEED: i64 = 20_210_127;
    let layout = StepConfig { train: true, ..gc.config().clone() };

    // 1. Replay.
    zero_grads(vs);
    tch::manual_seed(SEED);
    let replay = match gc.with_config(StepConfig { check_replay: true, ..layout.clone() })?.step(queries, passages, targets) {
        Ok(_) => None,
        Err(e @ GradCacheError::ReplayMismatch { .. }) => Some(e),
        Err(e) => return Err(e),
    };

    // 2. Coupling, on fixed representations.
    let seeds = ReplaySeeds::from_base(SEED as u64);
    let eval = gc.with_config(StepConfig { train: false, ..layout.clone() })?;
    let plan = crate::core::plan::Plan::layout_of(eval.config(), queries, passages)?;
    let reps = tch::no_grad(|| eval.representation_pass(queries, passages, &plan, &seeds))?;
    let train_scores = |s: u64| scores_with(gc, &reps, layout.clone(), &ReplaySeeds::from_base(s));
    let deterministic = max_abs(&train_scores(1)?.f_sub(&train_scores(2)?)?)? == 0.0;
    let mode = StepConfig { train: deterministic, ..layout.clone() };
    let n = reps.queries.len().max(reps.passages.len());
    let blocked = scores_with(gc, &reps, mode.clone(), &seeds)?;
    let whole = scores_with(gc, &reps, mode.whole_batch(n), &seeds)?;
    let relative_diff = max_abs(&blocked.f_sub(&whole)?)? / max_abs(&whole)?.max(1.0);
    let coupling = CouplingCheck { train_mode: deterministic, relative_diff };

    // 3. Gradients.
    let mut unchecked = gc.with_config(StepConfig { check_replay: false, ..layout })?;
    zero_grads(vs);
    tch::manual_seed(SEED);
    let cached = unchecked.step(queries, passages, targets)?;
    let ours = GradientSnapshot::take(vs)?;
    zero_grads(vs);
    tch::manual_seed(SEED);
    let full = unchecked.full_batch_step(queries, passages, targets)?;
    let theirs = GradientSnapshot::take(vs)?;
    zero_grads(vs);

    Ok(HeadCheckReport {
        replay,
        coupling,
        losses: (cached.loss, full.loss),
        gradients: ours.compare(&theirs)?,
        gradient_distance: ours.relative_distance(&theirs)?,
        tolerance,
    })
}
