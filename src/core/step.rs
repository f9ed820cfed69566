//! The two-cache step (Gao et al. 2021, §3.3 extended by §5).
//!
//! [`GradCache`] is the one entry point. Its methods are the paper's steps,
//! each once, over a [`Plan`] (the batch already cut into chunks and
//! blocks): [`GradCache::representation_pass`] → [`GradCache::score_pass`]
//! → [`GradCache::distance_gradient_cache`] → [`GradCache::head_pass`] →
//! [`GradCache::encoder_pass`]; [`GradCache::step`] makes the plan and runs
//! them in order. The step only fills gradients: zeroing them and the
//! optimizer step stay with the caller.

use tch::{Device, Tensor};

use crate::core::balance::{Balance, GateTotals};
use crate::core::batch::Chunk;
use crate::core::budget::{BudgetState, CostModel};
use crate::core::config::StepConfig;
use crate::core::encoder::Encoder;
use crate::core::head::{RepresentationGradients, ScoringHead};
use crate::core::layout::{PerSide, Side};
use crate::core::loss::ContrastiveLoss;
use crate::core::model::StepModel;
use crate::core::output::{timed, BudgetReport, PhaseTimings, StepOutput};
use crate::core::passes::{
    backprop_kept, backprop_kept_blocks, backprop_recomputed, backprop_recomputed_blocks, checked_loss_value, closed_form_gradients,
    encode_all, has_closed_form, BlockTerms, GradientSums, Rerun,
};
use crate::core::plan::Plan;
use crate::core::replay::ReplaySeeds;
use crate::core::representation::Representation;
use crate::core::scoring::{check_finite, score_grid, KeptBlock};
use crate::core::targets::Targets;
use crate::error::{GradCacheError, ReplayStage, Result};
use crate::util::accumulation_kind;

/// The whole batch's representations, detached: the output of the
/// representation pass (with the graphs of the chunks the plan retains).
///
/// # Shapes
/// `queries`: `N` items; `passages`: `M` items. Token representations of
/// different chunks are padded to the longest chunk.
#[derive(Debug)]
pub struct Representations {
    /// U.
    pub queries: Representation,
    /// V.
    pub passages: Representation,
    /// Per side, the graph of each retained chunk (for the encoder pass).
    kept: PerSide<Vec<Option<Representation>>>,
}

/// The score matrix of the score pass (with the graphs of the blocks the
/// plan retains, and a gated head's gate totals); it dereferences to `S`.
///
/// # Shapes
/// `[N, M]`.
#[derive(Debug)]
pub struct Scores {
    /// S.
    pub matrix: Tensor,
    kept: Vec<Option<KeptBlock>>,
    gates: Option<GateTotals>,
}

/// What the head pass leaves.
#[derive(Debug)]
pub struct HeadPass {
    /// The representation-gradient cache, ∂L/∂U and ∂L/∂V.
    pub gradients: RepresentationGradients,
    /// The head's closed-form gradients were used: no block ran, and each
    /// process of a distributed step already holds the whole batch's
    /// gradients.
    pub closed_form: bool,
}

impl std::ops::Deref for Scores {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        &self.matrix
    }
}

/// The loss and the distance-gradient cache, with a gated head's
/// load-balancing cache beside it.
///
/// # Shapes
/// `weights`: `[N, M]`, `W = ∂L/∂S` (the paper's `w_ij`).
#[derive(Debug)]
pub struct DistanceGradients {
    /// The loss of the batch, `L(S)` plus a gated head's `λ·B`.
    pub loss: f64,
    /// ∂L/∂S.
    pub weights: Tensor,
    /// For a head with a load-balancing term, what each block's head pass
    /// needs of the whole batch's gates ([`crate::core::balance`]).
    pub balance: Option<Balance>,
}

/// The two-cache gradient step over a query encoder, a passage encoder (the
/// same one when tied), a scoring head and a loss.
pub struct GradCache<'m, QE: Encoder + ?Sized, PE: Encoder + ?Sized> {
    pub(crate) config: StepConfig,
    pub(crate) query_encoder: &'m QE,
    pub(crate) passage_encoder: &'m PE,
    pub(crate) head: &'m dyn ScoringHead,
    pub(crate) loss: &'m dyn ContrastiveLoss,
    /// What a budgeted step measured on earlier steps.
    pub(crate) budget: BudgetState,
}

impl<'m, E: Encoder + ?Sized> GradCache<'m, E, E> {
    /// One encoder for both queries and passages (tied weights).
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] from [`StepConfig::validate`].
    pub fn tied(config: StepConfig, encoder: &'m E, head: &'m dyn ScoringHead, loss: &'m dyn ContrastiveLoss) -> Result<Self> {
        GradCache::new(config, encoder, encoder, head, loss)
    }
}

impl<'m, QE: Encoder + ?Sized, PE: Encoder + ?Sized> GradCache<'m, QE, PE> {
    /// Builds the step.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] from [`StepConfig::validate`].
    pub fn new(
        config: StepConfig,
        query_encoder: &'m QE,
        passage_encoder: &'m PE,
        head: &'m dyn ScoringHead,
        loss: &'m dyn ContrastiveLoss,
    ) -> Result<Self> {
        config.validate()?;
        config.precision.require_resolved()?;
        Ok(GradCache { config, query_encoder, passage_encoder, head, loss, budget: BudgetState::default() })
    }

    /// The configuration.
    pub fn config(&self) -> &StepConfig {
        &self.config
    }

    /// The query encoder, the passage encoder and the head the step trains.
    pub fn parts(&self) -> StepModel<'m, QE, PE> {
        StepModel { query_encoder: self.query_encoder, passage_encoder: self.passage_encoder, head: self.head }
    }

    /// The same encoders, head and loss with another configuration (e.g.
    /// `train: false` for evaluation).
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] from [`StepConfig::validate`].
    pub fn with_config(&self, config: StepConfig) -> Result<Self> {
        GradCache::new(config, self.query_encoder, self.passage_encoder, self.head, self.loss)
    }

    /// Uses `costs` for the budget plans of later steps instead of probing
    /// (e.g. a cost model measured once for several steps; a step still
    /// probes again when a batch has a wider chunk than `costs` saw).
    pub fn set_costs(&mut self, costs: CostModel) {
        self.budget.set_costs(costs);
    }

    /// Measures the activation costs of this step's layout on this batch
    /// ([`crate::core::budget::probe_costs`]) and keeps them for later
    /// budget plans.
    ///
    /// # Errors
    /// As [`crate::core::budget::probe_costs`].
    pub fn probe_costs(&mut self, queries: &QE::Input, passages: &PE::Input, seeds: &ReplaySeeds) -> Result<CostModel> {
        let (costs, _) = crate::core::budget::probe_costs(&self.config, self.parts(), queries, passages, seeds)?;
        self.budget.set_costs(costs);
        Ok(costs)
    }

    /// The plan of this step for this batch: the config's layout with what
    /// it retains, or the layout fitted to its memory budget.
    ///
    /// # Errors
    /// As [`BudgetState::plan`].
    pub fn plan(&mut self, queries: &QE::Input, passages: &PE::Input, seeds: &ReplaySeeds) -> Result<(Plan, Option<BudgetReport>)> {
        let model = self.parts();
        self.budget.plan(&self.config, model, queries, passages, seeds)
    }

    /// Runs the whole step: every gradient of the encoders and the head is
    /// accumulated into the parameters' `.grad()`, exactly as one backward
    /// pass over the full batch would, while only one encoder chunk or one
    /// head block of activations is alive at a time (more where the plan
    /// retains them).
    ///
    /// The dropout masks are drawn from libtorch's global generator: seeding
    /// it with `tch::manual_seed` before the step makes the step reproducible.
    ///
    /// # Errors
    /// [`GradCacheError::EmptyBatch`], [`GradCacheError::TargetsMismatch`],
    /// any error of the encoders, head or loss, [`GradCacheError::HeadShape`],
    /// [`GradCacheError::NonFiniteScores`], [`GradCacheError::NonFiniteLoss`]
    /// (before any gradient is written), [`GradCacheError::ReplayMismatch`].
    /// After an error in the head or encoder pass, gradients may be partly
    /// accumulated: zero them before the next step.
    pub fn step(&mut self, queries: &QE::Input, passages: &PE::Input, targets: &Targets) -> Result<StepOutput> {
        self.check_batch(queries, passages, targets)?;
        let seeds = ReplaySeeds::draw()?;
        let (plan, budget) = self.plan(queries, passages, &seeds)?;
        // A budget on a GPU is checked against the allocator's own peak.
        let peak = match (&budget, self.budget.device()) {
            (Some(_), Some(device @ Device::Cuda(_))) => Some(crate::runtime::gpu::start_peak(device)?),
            _ => None,
        };
        let mut t = PhaseTimings::default();
        let mut reps = timed(&mut t.representation, || self.representation_pass(queries, passages, &plan, &seeds))?;
        let plan = self.sized_blocks(self.without_needless_blocks(plan, &reps)?, &reps.queries, &reps.passages)?;
        let mut scores = timed(&mut t.score, || self.score_pass(&reps, &plan, &seeds))?;
        let cache = timed(&mut t.distance_gradient, || self.distance_gradient_cache(&scores, targets))?;
        let head = timed(&mut t.head, || self.head_pass(&reps, &mut scores, &cache, &plan, &seeds))?;
        timed(&mut t.encoder, || {
            self.encoder_pass(queries, passages, &mut reps, &head.gradients, &plan, &seeds)?;
            crate::runtime::gpu::synchronize(scores.device());
            Ok(())
        })?;
        seeds.finish();
        let budget = match (budget, peak) {
            (Some(b), Some(start)) => Some(BudgetReport { measured_peak_mb: Some(start.peak_mb()?), ..b }),
            (b, _) => b,
        };
        let reps = (&reps.queries, &reps.passages);
        let flops = crate::core::flops::count(self.parts(), &plan, queries, passages, reps, head.closed_form, plan.blocks())?;
        Ok(StepOutput { loss: cache.loss, timings: t, sizes: plan.sizes(head.closed_form), retained: plan.retained(), budget, flops })
    }

    /// `plan` without retained head blocks when the head's gradients come
    /// in closed form: its blocks never run a second time, so keeping their
    /// graphs would only cost memory.
    fn without_needless_blocks(&self, plan: Plan, reps: &Representations) -> Result<Plan> {
        if plan.retained().head_blocks > 0 && has_closed_form(self.head, self.config.precision, &reps.queries, &reps.passages)? {
            return Ok(plan.without_retained_blocks());
        }
        Ok(plan)
    }

    /// `plan` with its head blocks sized by cost when the config asks for
    /// it ([`StepConfig::head_block_flops`]), from the representations'
    /// shapes: what every step over the same batch (cached, full-batch)
    /// cuts alike.
    pub(crate) fn sized_blocks(&self, plan: Plan, u: &Representation, v: &Representation) -> Result<Plan> {
        match self.config.head_block_flops {
            Some(budget) => Ok(plan.with_block_columns(crate::core::flops::block_columns(
                self.head,
                u,
                v,
                self.config.layout.head_block_queries,
                budget,
            )?)),
            None => Ok(plan),
        }
    }

    pub(crate) fn check_batch(&self, queries: &QE::Input, passages: &PE::Input, targets: &Targets) -> Result<()> {
        if queries.is_empty() {
            return Err(GradCacheError::EmptyBatch { side: Side::Queries });
        }
        if passages.is_empty() {
            return Err(GradCacheError::EmptyBatch { side: Side::Passages });
        }
        targets.check_batch(queries.len(), passages.len())
    }

    /// Step 1, the representation pass: encodes every chunk of `plan` with
    /// autograd off, after seeding each chunk's random stream; a retained
    /// chunk is encoded with graph and its graph kept for the encoder pass.
    ///
    /// # Errors
    /// Encoder errors; [`GradCacheError::EncoderLength`].
    pub fn representation_pass(
        &self,
        queries: &QE::Input,
        passages: &PE::Input,
        plan: &Plan,
        seeds: &ReplaySeeds,
    ) -> Result<Representations> {
        let fwd = self.config.forward();
        let pass = || {
            let (u, kept_u) = encode_all(self.query_encoder, queries, plan, Side::Queries, seeds, fwd)?;
            let (v, kept_v) = encode_all(self.passage_encoder, passages, plan, Side::Passages, seeds, fwd)?;
            Ok(Representations { queries: u, passages: v, kept: PerSide::new(kept_u, kept_v) })
        };
        // Retained chunks run with autograd among chunks without: each
        // region then casts its own weights.
        let retained = plan.retained();
        if retained.query_chunks + retained.passage_chunks == 0 {
            tch::no_grad(|| fwd.precision.casting_once(pass))
        } else {
            tch::no_grad(pass)
        }
    }

    /// Step 2, the score pass: scores every block of `plan` with autograd
    /// off, each from its own random stream; a retained block is scored
    /// with graph and its graph kept for the head pass.
    ///
    /// # Errors
    /// Head errors; [`GradCacheError::HeadShape`];
    /// [`GradCacheError::NonFiniteScores`] naming the first bad block.
    pub fn score_pass(&self, reps: &Representations, plan: &Plan, seeds: &ReplaySeeds) -> Result<Scores> {
        let enter = |b: &crate::core::layout::Block| seeds.enter(ReplayStage::HeadBlock, b.index);
        let grid = tch::no_grad(|| score_grid(self.head, &reps.queries, &reps.passages, plan.grid(), self.config.forward(), &enter))?;
        check_finite(&grid.matrix, plan.grid())?;
        Ok(Scores { matrix: grid.matrix, kept: grid.kept, gates: grid.gates })
    }

    /// Step 3, the distance-gradient cache: `L(S)` and `W = ∂L/∂S`; for a
    /// head with a load-balancing term, also `λ·B` and its per-pair
    /// coefficients from the gates' totals ([`Balance`]).
    ///
    /// # Shapes
    /// `scores`: `[N, M]`; `W` has the same shape, in fp32 when `S` is half
    /// precision.
    ///
    /// # Errors
    /// Loss errors; [`GradCacheError::LossShape`]; [`GradCacheError::NonFiniteLoss`];
    /// [`GradCacheError::InvalidConfig`] when a head with a load-balancing
    /// term returned no gates.
    pub fn distance_gradient_cache(&self, scores: &Scores, targets: &Targets) -> Result<DistanceGradients> {
        let leaf = scores.matrix.f_detach()?.f_to_kind(accumulation_kind(scores.matrix.kind()))?.set_requires_grad(true);
        let loss = tch::with_grad(|| self.loss.loss(&leaf, targets))?;
        let mut value = checked_loss_value(&loss)?;
        loss.f_backward()?;
        let balance = match (self.head.balance_weight(), &scores.gates) {
            (w, _) if w <= 0.0 => None,
            (w, Some(totals)) => Some(Balance::new(w, totals)?),
            (_, None) => {
                return Err(GradCacheError::InvalidConfig {
                    field: "balance",
                    reason: "the head has a load-balancing weight but returned no gates",
                })
            }
        };
        if let Some(b) = &balance {
            value += b.value;
            if !value.is_finite() {
                return Err(GradCacheError::NonFiniteLoss { value });
            }
        }
        Ok(DistanceGradients { loss: value, weights: leaf.f_grad()?, balance })
    }

    /// Step 4, the head pass: backpropagates `W[a, b]` (and a gated head's
    /// load-balancing surrogate, [`Balance::surrogate`]) through every block
    /// of `plan` (a retained block through the graph the score pass kept,
    /// all of them in one backward call, which frees them before anything
    /// is recomputed; the others recomputed with autograd on from the score
    /// pass's random stream). Accumulates ∂L/∂Ω into the head's parameters
    /// and returns the representation-gradient cache `(∂L/∂U, ∂L/∂V)`. A
    /// head with closed-form gradients skips the blocks
    /// ([`HeadPass::closed_form`]).
    ///
    /// # Shapes
    /// `weights`: `[N, M]`; the result has the shapes of U and V, in fp32
    /// for half-precision representations.
    ///
    /// # Errors
    /// Head errors; [`GradCacheError::ReplayMismatch`] when a block's
    /// recomputed scores differ from the score pass;
    /// [`GradCacheError::NoGradient`] for a side the head's scores ignore.
    pub fn head_pass(
        &self,
        reps: &Representations,
        scores: &mut Scores,
        cache: &DistanceGradients,
        plan: &Plan,
        seeds: &ReplaySeeds,
    ) -> Result<HeadPass> {
        self.head_pass_over(reps, scores, cache, plan, seeds, &|_| true)
    }

    /// [`GradCache::head_pass`] over the blocks for which `runs(index)`
    /// holds (a process's share in [`GradCache::distributed_step`], whose
    /// partial sums the caller adds up).
    pub(crate) fn head_pass_over(
        &self,
        reps: &Representations,
        scores: &mut Scores,
        cache: &DistanceGradients,
        plan: &Plan,
        seeds: &ReplaySeeds,
        runs: &dyn Fn(usize) -> bool,
    ) -> Result<HeadPass> {
        let weights = &cache.weights;
        if let Some(grads) = closed_form_gradients(self.head, self.config.precision, &reps.queries, &reps.passages, weights) {
            let grads = grads?;
            for (g, r, what) in
                [(&grads.queries, &reps.queries, "closed-form ∂L/∂U"), (&grads.passages, &reps.passages, "closed-form ∂L/∂V")]
            {
                if g.size() != r.tensor().size() {
                    return Err(GradCacheError::Shape { what, expected: "the shape of the representations", got: g.size() });
                }
            }
            return Ok(HeadPass { gradients: grads, closed_form: true });
        }
        let terms = BlockTerms { head: self.head, weights, balance: cache.balance.as_ref() };
        let how = Rerun { plan, seeds, fwd: self.config.forward(), replay: self.config.replay() };
        let mut sums = GradientSums::new(&reps.queries, &reps.passages)?;
        backprop_kept_blocks(plan, &mut scores.kept, &terms, &mut sums)?;
        backprop_recomputed_blocks(&terms, &reps.queries, &reps.passages, &scores.matrix, runs, &mut sums, how)?;
        Ok(HeadPass { gradients: sums.finish()?, closed_form: false })
    }

    /// Step 5, the encoder pass: backpropagates each chunk's rows of ∂L/∂U
    /// or ∂L/∂V (the retained chunks through the graphs the representation
    /// pass kept, in one backward call; the others re-encoded with autograd
    /// on from the same random stream). Accumulates ∂L/∂θ into the
    /// encoders' parameters.
    ///
    /// # Errors
    /// Encoder errors; [`GradCacheError::ReplayMismatch`] when a re-encoded
    /// chunk differs from the representation pass.
    pub fn encoder_pass(
        &self,
        queries: &QE::Input,
        passages: &PE::Input,
        reps: &mut Representations,
        grads: &RepresentationGradients,
        plan: &Plan,
        seeds: &ReplaySeeds,
    ) -> Result<()> {
        backprop_kept(plan, std::mem::take(&mut reps.kept), PerSide::new(&grads.queries, &grads.passages))?;
        let how = Rerun { plan, seeds, fwd: self.config.forward(), replay: self.config.replay() };
        how.fwd.precision.casting_once(|| {
            backprop_recomputed(self.query_encoder, queries, Side::Queries, &reps.queries, &grads.queries, how)?;
            backprop_recomputed(self.passage_encoder, passages, Side::Passages, &reps.passages, &grads.passages, how)
        })
    }
}

impl Representations {
    /// Representations with no kept graph (e.g. gathered from processes).
    pub(crate) fn detached(queries: Representation, passages: Representation) -> Representations {
        Representations { queries, passages, kept: Default::default() }
    }
}

impl Scores {
    /// A score matrix with no kept graph, and the whole batch's gate totals
    /// (e.g. gathered from processes).
    pub(crate) fn detached(matrix: Tensor, gates: Option<GateTotals>) -> Scores {
        Scores { matrix, kept: Vec::new(), gates }
    }
}
