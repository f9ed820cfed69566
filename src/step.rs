//! The two-cache step (Gao et al. 2021, §3.3 extended by §5).
//!
//! [`GradCache`] is the one entry point. Its methods are the paper's steps:
//! [`GradCache::representation_pass`] → [`GradCache::score_pass`] →
//! [`GradCache::distance_gradient_cache`] → [`GradCache::head_pass`] →
//! [`GradCache::encoder_pass`]; [`GradCache::step`] runs them in order. The
//! step only fills gradients: zeroing them and the optimizer step stay with
//! the caller.

use std::time::{Duration, Instant};

use tch::{Device, Tensor};

use crate::batch::Chunk;
use crate::config::{Forward, StepConfig};
use crate::plan::{ChunkTokens, CostModel, MemoryConfig, Piece, Plan, RetainCounts, AUTO_BUDGET_SHARE};
use crate::encoder::Encoder;
use crate::error::{GradCacheError, ReplayStage, Result, Side};
use crate::head::{RepresentationGradients, ScoringHead};
use crate::loss::ContrastiveLoss;
use crate::replay::{ReplaySeeds, Stream};
use crate::representation::Representation;
use crate::targets::Targets;
use crate::util::{accumulation_kind, all_finite};

const MB: f64 = (1u64 << 20) as f64;

/// The whole batch's representations, detached: the output of the
/// representation pass.
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
}

/// The loss and the distance-gradient cache.
///
/// # Shapes
/// `weights`: `[N, M]`, `W = ∂L/∂S` (the paper's `w_ij`).
#[derive(Debug)]
pub struct DistanceGradients {
    /// The loss of the batch.
    pub loss: f64,
    /// ∂L/∂S.
    pub weights: Tensor,
}

/// Wall time of each phase of a step.
///
/// For [`GradCache::full_batch_step`] and [`GradCache::accumulation_step`],
/// `representation` and `score` are the forward passes with graph, `head` is
/// zero, and `encoder` is the single backward pass.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseTimings {
    /// Encoders over every chunk (without graph in the cached step).
    pub representation: Duration,
    /// Head over every block (without graph in the cached step).
    pub score: Duration,
    /// Loss and `W = ∂L/∂S`.
    pub distance_gradient: Duration,
    /// Head pass: every block again, with graph, backpropagating `W`.
    pub head: Duration,
    /// Encoder pass: every chunk again, with graph, backpropagating ∂L/∂U, ∂L/∂V.
    pub encoder: Duration,
}

impl PhaseTimings {
    /// The sum of all phases.
    pub fn total(&self) -> Duration {
        self.representation + self.score + self.distance_gradient + self.head + self.encoder
    }
}

/// How the step cut the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepSizes {
    /// Queries `N`.
    pub num_queries: usize,
    /// Passages `M`.
    pub num_passages: usize,
    /// Encoder chunks on the query side.
    pub query_chunks: usize,
    /// Encoder chunks on the passage side.
    pub passage_chunks: usize,
    /// Blocks of the `N × M` pair grid.
    pub head_blocks: usize,
    /// Items in the largest query chunk and passage chunk (the sizes the
    /// step used: the config's, or those chosen from a budget).
    pub chunk_items: (usize, usize),
    /// Query rows and passage columns of the largest head block.
    pub block_pairs: (usize, usize),
    /// Whether the head gave closed-form gradients, so no head pass ran.
    pub closed_form_head: bool,
}

/// What a step returns. Gradients are in the parameters' `.grad()`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutput {
    /// The batch loss.
    pub loss: f64,
    /// Time per phase.
    pub timings: PhaseTimings,
    /// How the batch was cut.
    pub sizes: StepSizes,
    /// How many chunks and blocks kept their first-pass graph (zero under
    /// the default `{"recompute": "all"}`).
    pub retained: RetainCounts,
    /// Under a memory budget: the budget and the plan's estimate.
    pub budget: Option<BudgetReport>,
}

impl StepOutput {
    /// One line on how the step cut the batch and what it kept, e.g.
    /// `step plan: 64 queries in 4 chunks of up to 16, 128 passages in 8
    /// chunks of up to 16, 8 head blocks of up to 32×32; retained query
    /// chunks / passage chunks / head blocks: 4 / 3 / 0 (budget 500 MB,
    /// estimated peak 487 MB)`.
    pub fn describe_plan(&self) -> String {
        let (s, r) = (&self.sizes, &self.retained);
        let head = if s.closed_form_head { " (closed-form head: no head pass)" } else { "" };
        let budget = self
            .budget
            .map(|b| {
                let measured = b.measured_peak_mb.map(|m| format!(", measured {m:.0} MB")).unwrap_or_default();
                format!(" (budget {:.0} MB, estimated peak {:.0} MB{measured})", b.budget_mb, b.estimated_peak_mb)
            })
            .unwrap_or_default();
        let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        format!(
            "step plan: {} queries in {} of up to {}, {} passages in {} of up to {}, {} of up to {}×{}{head}; retained query chunks / passage chunks / head blocks: {} / {} / {}{budget}",
            s.num_queries,
            count(s.query_chunks, "chunk"),
            s.chunk_items.0,
            s.num_passages,
            count(s.passage_chunks, "chunk"),
            s.chunk_items.1,
            count(s.head_blocks, "head block"),
            s.block_pairs.0,
            s.block_pairs.1,
            r.query_chunks,
            r.passage_chunks,
            r.head_blocks
        )
    }

    /// The same as JSON (the trainer's first log line carries it).
    pub fn plan_json(&self) -> serde_json::Value {
        let s = &self.sizes;
        serde_json::json!({
            "queries": s.num_queries, "passages": s.num_passages,
            "query_chunks": s.query_chunks, "passage_chunks": s.passage_chunks, "head_blocks": s.head_blocks,
            "query_chunk_items": s.chunk_items.0, "passage_chunk_items": s.chunk_items.1,
            "block_queries": s.block_pairs.0, "block_passages": s.block_pairs.1,
            "closed_form_head": s.closed_form_head, "retained": self.retained,
            "budget_mb": self.budget.map(|b| b.budget_mb), "estimated_peak_mb": self.budget.map(|b| b.estimated_peak_mb),
            "measured_peak_mb": self.budget.and_then(|b| b.measured_peak_mb),
        })
    }
}

/// A budgeted step's memory figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetReport {
    /// The budget in MB (resolved, for `{"budget": "auto"}`).
    pub budget_mb: f64,
    /// The plan's estimated activation peak in MB ([`Plan::estimate_peak`]),
    /// never above the budget.
    pub estimated_peak_mb: f64,
    /// The step's measured peak in MB above what was allocated when it
    /// began, on a GPU: from the CUDA caching allocator, whose peak counter
    /// the step resets ([`crate::gpu::reset_peak`]). `None` on the CPU,
    /// where glibc keeps no peak of bytes in use (the benchmarks read the
    /// process's resident peak instead).
    pub measured_peak_mb: Option<f64>,
}

/// The two-cache gradient step over a query encoder, a passage encoder (the
/// same one when tied), a scoring head and a loss.
pub struct GradCache<'m, QE: Encoder + ?Sized, PE: Encoder + ?Sized> {
    pub(crate) config: StepConfig,
    pub(crate) query_encoder: &'m QE,
    pub(crate) passage_encoder: &'m PE,
    pub(crate) head: &'m dyn ScoringHead,
    pub(crate) loss: &'m dyn ContrastiveLoss,
    /// The activation costs measured on the first budgeted step.
    pub(crate) costs: std::cell::Cell<Option<CostModel>>,
    /// `{"budget": "auto"}` resolved on the first step, in bytes.
    pub(crate) auto_budget: std::cell::Cell<Option<f64>>,
    /// The device the last probe measured on.
    pub(crate) probed_device: std::cell::Cell<Option<Device>>,
}

impl<'m, E: Encoder + ?Sized> GradCache<'m, E, E> {
    /// One encoder for both queries and passages (tied weights).
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] from [`StepConfig::validate`].
    pub fn tied(
        config: StepConfig,
        encoder: &'m E,
        head: &'m dyn ScoringHead,
        loss: &'m dyn ContrastiveLoss,
    ) -> Result<Self> {
        GradCache::new(config, encoder, encoder, head, loss)
    }
}

/// Collects the replay differences of one pass on the device and checks them
/// with a single synchronisation at the end of the pass.
struct ReplayLog {
    stage: ReplayStage,
    enabled: bool,
    relative_diffs: Vec<Tensor>,
}

impl ReplayLog {
    fn new(stage: ReplayStage, enabled: bool) -> Self {
        ReplayLog { stage, enabled, relative_diffs: Vec::new() }
    }

    /// Records `max|recomputed − cached| / max(1, max|cached|)`.
    fn record(&mut self, recomputed: &Tensor, cached: &Tensor) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let recomputed = recomputed.f_detach()?;
        if recomputed.size() != cached.size() {
            return Err(GradCacheError::Shape {
                what: "recomputation in the second pass",
                expected: "the shape of the first pass",
                got: recomputed.size(),
            });
        }
        let diff = recomputed.f_sub(cached)?.f_abs()?.f_max()?;
        let scale = cached.f_abs()?.f_max()?.f_clamp_min(1.0)?;
        self.relative_diffs.push(diff.f_div(&scale)?.f_to_kind(tch::Kind::Double)?);
        Ok(())
    }

    fn finish(self, tolerance: f64) -> Result<()> {
        if self.relative_diffs.is_empty() {
            return Ok(());
        }
        let diffs = Tensor::f_stack(&self.relative_diffs, 0)?.f_to_device(Device::Cpu)?;
        let values: Vec<f64> = Vec::<f64>::try_from(&diffs)?;
        for (index, &d) in values.iter().enumerate() {
            if d.is_nan() || d > tolerance {
                return Err(GradCacheError::ReplayMismatch {
                    stage: self.stage,
                    index,
                    max_abs_diff: d,
                    tolerance,
                });
            }
        }
        Ok(())
    }
}

/// Waits for queued GPU work so that wall times mean something.
fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
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
        Ok(GradCache { config, query_encoder, passage_encoder, head, loss, costs: std::cell::Cell::new(None), auto_budget: std::cell::Cell::new(None), probed_device: std::cell::Cell::new(None) })
    }

    /// Uses `costs` for the budget plans of later steps instead of probing
    /// (e.g. a cost model measured once for several steps; a step still
    /// probes again when a batch has a wider chunk than `costs` saw).
    pub fn set_costs(&self, costs: CostModel) {
        self.costs.set(Some(costs));
    }

    /// The configuration.
    pub fn config(&self) -> &StepConfig {
        &self.config
    }

    /// The same encoders, head and loss with another configuration (e.g.
    /// `train: false` for evaluation).
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] from [`StepConfig::validate`].
    pub fn with_config(&self, config: StepConfig) -> Result<Self> {
        GradCache::new(config, self.query_encoder, self.passage_encoder, self.head, self.loss)
    }

    /// Runs the whole step: every gradient of the encoders and the head is
    /// accumulated into the parameters' `.grad()`, exactly as one backward
    /// pass over the full batch would, while only one encoder chunk or one
    /// head block of activations is alive at a time.
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
    pub fn step(&self, queries: &QE::Input, passages: &PE::Input, targets: &Targets) -> Result<StepOutput> {
        self.check_batch(queries, passages, targets)?;
        let seeds = ReplaySeeds::draw()?;
        let (mut plan, budget) = self.plan(queries, passages, &seeds)?;
        let gpu_base = match (&budget, self.probed_device.get()) {
            (Some(_), Some(device @ Device::Cuda(_))) => {
                crate::gpu::reset_peak(device)?;
                Some((device, crate::gpu::memory(device)?.allocated))
            }
            _ => None,
        };
        let mut timings = PhaseTimings::default();

        let t = Instant::now();
        let (reps, kept_queries, kept_passages) = self.planned_representation_pass(queries, passages, &seeds, &plan)?;
        if plan.retained().head_blocks > 0 && self.closed_form(&reps)? {
            // Its blocks never run a second time: keeping their graphs
            // would only cost memory.
            plan = plan.without_retained_blocks();
        }
        timings.representation = t.elapsed();

        let t = Instant::now();
        let (scores, kept_blocks) = self.planned_score_pass(&reps, &seeds, &plan)?;
        timings.score = t.elapsed();

        let t = Instant::now();
        let cache = self.distance_gradient_cache(&scores, targets)?;
        timings.distance_gradient = t.elapsed();

        let t = Instant::now();
        let (rep_grads, closed_form_head) = self.planned_head_pass(&reps, &scores, &cache.weights, &seeds, &plan, kept_blocks, &|_| true)?;
        timings.head = t.elapsed();

        let t = Instant::now();
        let c = &self.config;
        backprop_kept(&[(&plan, Side::Queries, kept_queries, &rep_grads.queries), (&plan, Side::Passages, kept_passages, &rep_grads.passages)])?;
        backprop_all(self.query_encoder, queries, &plan, Side::Queries, &reps.queries, &rep_grads.queries, &seeds, c)?;
        backprop_all(self.passage_encoder, passages, &plan, Side::Passages, &reps.passages, &rep_grads.passages, &seeds, c)?;
        synchronize(scores.device());
        timings.encoder = t.elapsed();

        seeds.finish();
        let budget = match (budget, gpu_base) {
            (Some(b), Some((device, base))) => {
                Some(BudgetReport { measured_peak_mb: Some(crate::gpu::memory(device)?.peak.saturating_sub(base) as f64 / MB), ..b })
            }
            (b, _) => b,
        };
        Ok(StepOutput {
            loss: cache.loss,
            timings,
            sizes: plan.sizes(closed_form_head),
            retained: plan.retained(),
            budget,
        })
    }

    /// The step's plan: the config's layout, or under a budget the layout
    /// fitted to it with the measured costs (probed on the first step, and
    /// again when a batch has a chunk wider than the probe saw), at sizes
    /// chosen from the budget when `auto_sizes` is on.
    pub(crate) fn plan(&self, queries: &QE::Input, passages: &PE::Input, seeds: &ReplaySeeds) -> Result<(Plan, Option<BudgetReport>)> {
        let (n, m) = (queries.len(), passages.len());
        if !self.config.memory.is_budget() {
            return Ok((Plan::new(&self.config, n, m)?.with_orders(Plan::length_orders(&self.config, queries, passages)?), None));
        }
        let layout = self.layout(queries, passages)?;
        let tokens = layout_tokens(&layout, queries, passages)?;
        let widest = |t: &[usize], side| {
            layout.chunks(side).iter().zip(t).map(|((p, _), &t)| t as f64 / p.len as f64).fold(0.0, f64::max)
        };
        let widths = (widest(&tokens.queries, Side::Queries), widest(&tokens.passages, Side::Passages));
        let costs = match self.costs.get() {
            Some(c) if widths.0 <= c.probed_widths.0 && widths.1 <= c.probed_widths.1 => c,
            _ => {
                let c = self.probe_costs(queries, passages, seeds)?;
                self.costs.set(Some(c));
                c
            }
        };
        let budget_bytes = match self.config.memory {
            MemoryConfig::Budget { budget_mb } => budget_mb * MB,
            _ => match self.auto_budget.get() {
                Some(b) => b,
                None => {
                    // Free memory where the probe ran (the representations'
                    // device).
                    let b = AUTO_BUDGET_SHARE * crate::gpu::available_bytes_on(self.probed_device.get().unwrap_or(Device::Cpu))? as f64;
                    self.auto_budget.set(Some(b));
                    b
                }
            },
        };
        let (config, tokens) = if self.config.auto_sizes {
            let sized = Plan::sized_for_budget(&self.config, n, m, &costs, widths, budget_bytes)?;
            let tokens = layout_tokens(&layout_of(&sized, queries, passages)?, queries, passages)?;
            (sized, tokens)
        } else {
            (self.config.clone(), tokens)
        };
        let (plan, estimate) = Plan::fit(&config, n, m, &costs, &tokens, budget_bytes)?;
        let plan = plan.with_orders(Plan::length_orders(&config, queries, passages)?);
        Ok((plan, Some(BudgetReport { budget_mb: budget_bytes / MB, estimated_peak_mb: estimate / MB, measured_peak_mb: None })))
    }

    /// The head's closed-form gradients, used only in f32: under autocast
    /// the full-batch step's gradients are autograd's through the head's
    /// bf16 products, which a closed form computed in f32 does not
    /// reproduce (measured: 5e-3 of the gradient's norm for the dot head),
    /// so the head pass runs through autograd instead.
    pub(crate) fn closed_form_gradients(&self, u: &Representation, v: &Representation, w: &Tensor) -> Option<Result<RepresentationGradients>> {
        match self.config.precision {
            crate::precision::Precision::F32 => self.head.closed_form_gradients(u, v, w),
            _ => None,
        }
    }

    /// Whether the head gives closed-form gradients (asked on one pair).
    fn closed_form(&self, reps: &Representations) -> Result<bool> {
        let (u, v) = (reps.queries.narrow(0, 1)?, reps.passages.narrow(0, 1)?);
        let w = Tensor::f_zeros([1, 1], (accumulation_kind(u.kind()), u.tensor().device()))?;
        Ok(self.closed_form_gradients(&u, &v, &w).is_some())
    }

    /// The activation costs of this step's layout, measured: the widest
    /// chunk of each side encoded with graph, and one block cut from their
    /// outputs scored with graph, each from its own replay stream, with the
    /// allocator's bytes in use read before and after the second of two
    /// runs (the first absorbs one-time allocations). The graphs are
    /// dropped.
    ///
    /// # Errors
    /// [`GradCacheError::PeakMemoryUnavailable`] where the allocator cannot
    /// be read (off glibc, or on a GPU in a build without the CUDA shim,
    /// [`crate::gpu`]); encoder and head errors.
    pub fn probe_costs(&self, queries: &QE::Input, passages: &PE::Input, seeds: &ReplaySeeds) -> Result<CostModel> {
        let plan = self.layout(queries, passages)?;
        let fwd = self.config.forward();
        // The query chunk's first run tells the device to read; it also
        // serves as that side's warm-up. Every piece runs twice and the
        // second run is measured: the first forward of a process also makes
        // one-time allocations (thread pools, kernel workspaces) that
        // outlive it and would be priced as activations of whichever side
        // ran first.
        let widest = |tokens: &[usize], side| -> (usize, Piece, usize) {
            let chunks = plan.chunks(side);
            let i = (0..chunks.len()).max_by(|&a, &b| (tokens[a] * chunks[b].0.len).cmp(&(tokens[b] * chunks[a].0.len))).unwrap_or(0);
            (i, chunks[i].0, tokens[i])
        };
        let q_tokens = chunk_tokens(&plan, Side::Queries, queries)?;
        let p_tokens = chunk_tokens(&plan, Side::Passages, passages)?;
        let (qi, q, qt) = widest(&q_tokens, Side::Queries);
        let (pi, p, pt) = widest(&p_tokens, Side::Passages);
        let encode_q = || tch::with_grad(|| encode_cut(self.query_encoder, &plan.cut(Side::Queries, queries, q)?, plan.stream(Side::Queries, qi), Side::Queries, seeds, fwd));
        let device = encode_q()?.tensor().device();
        self.probed_device.set(Some(device));
        let measure = |warm: bool, f: &mut dyn FnMut() -> Result<Box<dyn std::any::Any>>| -> Result<f64> {
            if warm {
                drop(f()?);
            }
            let before = crate::gpu::allocated_bytes_on(device)?;
            let kept = f()?;
            let after = crate::gpu::allocated_bytes_on(device)?;
            drop(kept);
            Ok(after.saturating_sub(before) as f64)
        };
        let (mut u, mut v) = (None, None);
        let q_bytes = measure(false, &mut || {
            let rep = encode_q()?;
            u = Some(rep.detach()?);
            Ok(Box::new(rep))
        })?;
        let p_bytes = measure(true, &mut || {
            let rep = tch::with_grad(|| encode_cut(self.passage_encoder, &plan.cut(Side::Passages, passages, p)?, plan.stream(Side::Passages, pi), Side::Passages, seeds, fwd))?;
            v = Some(rep.detach()?);
            Ok(Box::new(rep))
        })?;
        let (u, v) = (u.ok_or(GradCacheError::EmptyBatch { side: Side::Queries })?, v.ok_or(GradCacheError::EmptyBatch { side: Side::Passages })?);
        let reps = Representations { queries: u, passages: v };
        let bytes_of = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as f64;
        let pair_bytes = if self.closed_form(&reps)? {
            None
        } else {
            let (a, b) = (reps.queries.len().min(self.config.head_block_queries), reps.passages.len().min(self.config.head_block_passages));
            let bytes = measure(true, &mut || {
                let (ul, vl) = (reps.queries.narrow(0, a)?.detached_leaf()?, reps.passages.narrow(0, b)?.detached_leaf()?);
                seeds.enter(Stream::HeadBlock, 0);
                let s = tch::with_grad(|| fwd.precision.run(|| self.head.score(&ul, &vl, fwd.train)))?;
                Ok(Box::new((s, ul, vl)))
            })?;
            Some(bytes / (a * b) as f64)
        };
        let acc = accumulation_kind(reps.queries.kind());
        Ok(CostModel {
            query_token_bytes: q_bytes / qt.max(1) as f64,
            passage_token_bytes: p_bytes / pt.max(1) as f64,
            query_rep_bytes: bytes_of(reps.queries.tensor()) / q.len as f64,
            passage_rep_bytes: bytes_of(reps.passages.tensor()) / p.len as f64,
            score_bytes: acc.elt_size_in_bytes() as f64,
            pair_bytes,
            probed_widths: (qt as f64 / q.len as f64, pt as f64 / p.len as f64),
            backward_headroom: crate::plan::BACKWARD_HEADROOM,
        })
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

    /// Step 1, the representation pass: encodes every chunk with autograd
    /// off, after seeding each chunk's random stream.
    ///
    /// # Errors
    /// Encoder errors; [`GradCacheError::EncoderLength`].
    pub fn representation_pass(
        &self,
        queries: &QE::Input,
        passages: &PE::Input,
        seeds: &ReplaySeeds,
    ) -> Result<Representations> {
        let plan = self.layout(queries, passages)?;
        Ok(self.planned_representation_pass(queries, passages, seeds, &plan)?.0)
    }

    /// This step's chunks and blocks for these inputs with nothing retained
    /// (sorted by length when the config asks).
    fn layout(&self, queries: &QE::Input, passages: &PE::Input) -> Result<Plan> {
        layout_of(&self.config, queries, passages)
    }

    /// The plan of this step's chunks and blocks with nothing retained: the
    /// layout the public pass methods use.
    fn recompute_all(&self, n: usize, m: usize) -> Plan {
        Plan::with_retained(&self.config, n, m, crate::plan::RetainCounts::default())
    }

    /// Step 1 under `plan`: retained chunks are encoded with graph and kept
    /// (returned per chunk, `None` for recomputed ones).
    #[allow(clippy::type_complexity)]
    fn planned_representation_pass(
        &self,
        queries: &QE::Input,
        passages: &PE::Input,
        seeds: &ReplaySeeds,
        plan: &Plan,
    ) -> Result<(Representations, Vec<Option<Representation>>, Vec<Option<Representation>>)> {
        tch::no_grad(|| {
            let (q, kept_q) = encode_all(self.query_encoder, queries, plan, Side::Queries, seeds, self.config.forward())?;
            let (p, kept_p) = encode_all(self.passage_encoder, passages, plan, Side::Passages, seeds, self.config.forward())?;
            Ok((Representations { queries: q, passages: p }, kept_q, kept_p))
        })
    }

    /// Step 2, the score pass: scores every block of the pair grid with
    /// autograd off.
    ///
    /// # Shapes
    /// Returns `S`: `[N, M]`.
    ///
    /// # Errors
    /// Head errors; [`GradCacheError::HeadShape`];
    /// [`GradCacheError::NonFiniteScores`] naming the first bad block.
    pub fn score_pass(&self, reps: &Representations, seeds: &ReplaySeeds) -> Result<Tensor> {
        let plan = self.recompute_all(reps.queries.len(), reps.passages.len());
        Ok(self.planned_score_pass(reps, seeds, &plan)?.0)
    }

    /// Step 2 under `plan`: retained blocks keep their graph (scores and
    /// input leaves), returned per block.
    fn planned_score_pass(&self, reps: &Representations, seeds: &ReplaySeeds, plan: &Plan) -> Result<(Tensor, Vec<Option<KeptBlock>>)> {
        let (scores, kept) = tch::no_grad(|| score_all(self.head, reps, plan, self.config.forward(), seeds))?;
        if !all_finite(&scores)? {
            return Err(first_non_finite_block(&scores, plan)?);
        }
        Ok((scores, kept))
    }

    /// Step 3, the distance-gradient cache: `L(S)` and `W = ∂L/∂S`.
    ///
    /// # Shapes
    /// `scores`: `[N, M]`; `W` has the same shape, in fp32 when `S` is half
    /// precision.
    ///
    /// # Errors
    /// Loss errors; [`GradCacheError::LossShape`]; [`GradCacheError::NonFiniteLoss`].
    pub fn distance_gradient_cache(&self, scores: &Tensor, targets: &Targets) -> Result<DistanceGradients> {
        let kind = accumulation_kind(scores.kind());
        let leaf = scores.f_detach()?.f_to_kind(kind)?.set_requires_grad(true);
        let loss = tch::with_grad(|| self.loss.loss(&leaf, targets))?;
        let value = checked_loss_value(&loss)?;
        loss.f_backward()?;
        Ok(DistanceGradients { loss: value, weights: leaf.f_grad()? })
    }

    /// Step 4, the head pass: for each block, recomputes the scores with
    /// autograd on (same random stream as the score pass) and backpropagates
    /// `W[a, b]` through them. Accumulates ∂L/∂Ω into the head's parameters
    /// and returns the representation-gradient cache `(∂L/∂U, ∂L/∂V)`. A head
    /// with closed-form gradients skips the blocks; the flag says so.
    ///
    /// # Shapes
    /// `scores`, `weights`: `[N, M]`; the result has the shapes of U and V, in
    /// fp32 for half-precision representations.
    ///
    /// # Errors
    /// Head errors; [`GradCacheError::ReplayMismatch`] when a block's
    /// recomputed scores differ from the score pass.
    pub fn head_pass(
        &self,
        reps: &Representations,
        scores: &Tensor,
        weights: &Tensor,
        seeds: &ReplaySeeds,
    ) -> Result<(RepresentationGradients, bool)> {
        let plan = self.recompute_all(reps.queries.len(), reps.passages.len());
        self.planned_head_pass(reps, scores, weights, seeds, &plan, Vec::new(), &|_| true)
    }

    /// Step 4 under `plan`: a retained block is backpropagated through the
    /// graph the score pass kept; the others for which `runs_block(index)`
    /// holds are recomputed (all of them in one process; a process's own
    /// share in [`GradCache::distributed_step`], whose partial sums the
    /// caller adds up).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn planned_head_pass(
        &self,
        reps: &Representations,
        scores: &Tensor,
        weights: &Tensor,
        seeds: &ReplaySeeds,
        plan: &Plan,
        mut kept: Vec<Option<KeptBlock>>,
        runs_block: &dyn Fn(usize) -> bool,
    ) -> Result<(RepresentationGradients, bool)> {
        if let Some(grads) = self.closed_form_gradients(&reps.queries, &reps.passages, weights) {
            let grads = grads?;
            for (g, r, what) in [(&grads.queries, &reps.queries, "closed-form ∂L/∂U"), (&grads.passages, &reps.passages, "closed-form ∂L/∂V")] {
                if g.size() != r.tensor().size() {
                    return Err(GradCacheError::Shape { what, expected: "the shape of the representations", got: g.size() });
                }
            }
            return Ok((grads, true));
        }
        let c = &self.config;
        let acc = accumulation_kind(reps.queries.kind());
        let d_passages = reps.passages.tensor().f_zeros_like()?.f_to_kind(acc)?;
        let d_queries = reps.queries.tensor().f_zeros_like()?.f_to_kind(acc)?;
        let mut log = ReplayLog::new(ReplayStage::HeadBlock, c.check_replay);
        let w_of = |b: &crate::plan::Block| -> Result<Tensor> {
            Ok(weights.f_narrow(0, b.queries.start as i64, b.queries.len as i64)?.f_narrow(1, b.passages.start as i64, b.passages.len as i64)?)
        };
        // Retained blocks first, all in one backward call (the per-call
        // overhead is what would otherwise separate retaining everything
        // from the full-batch step), which frees their graphs before any
        // block is recomputed.
        let retained: Vec<(crate::plan::Block, KeptBlock)> =
            plan.blocks().filter_map(|b| kept.get_mut(b.index).and_then(Option::take).map(|k| (b, k))).collect();
        if !retained.is_empty() {
            backward_pairs(retained.iter().map(|(b, k)| Ok((k.scores.shallow_clone(), w_of(b)?))).collect::<Result<Vec<_>>>()?)?;
            for (b, k) in retained {
                let mut cols = d_passages.f_narrow(0, b.passages.start as i64, b.passages.len as i64)?;
                let _ = cols.f_add_(&leaf_grad(k.passages.tensor(), acc)?)?;
                let mut rows = d_queries.f_narrow(0, b.queries.start as i64, b.queries.len as i64)?;
                let _ = rows.f_add_(&leaf_grad(k.queries.tensor(), acc)?)?;
            }
        }
        // One leaf per row of blocks for the recomputed blocks, so that a
        // row's query gradient accumulates in it.
        let mut row_leaf: Vec<Option<Representation>> = plan.rows().iter().map(|_| None).collect();
        for block in plan.blocks().filter(|b| !b.retained && runs_block(b.index)) {
            let (a0, al, b0, bl) = (block.queries.start, block.queries.len, block.passages.start, block.passages.len);
            let w = w_of(&block)?;
            let u = match &row_leaf[block.row] {
                Some(u) => u.with_tensor(u.tensor().shallow_clone()),
                None => {
                    let u = reps.queries.narrow(a0, al)?.detached_leaf()?;
                    row_leaf[block.row] = Some(u.with_tensor(u.tensor().shallow_clone()));
                    u
                }
            };
            let v = reps.passages.narrow(b0, bl)?.detached_leaf()?;
            seeds.enter(Stream::HeadBlock, block.index);
            let s = tch::with_grad(|| c.precision.run(|| self.head.score(&u, &v, c.train)))?;
            check_block_shape(&s, al, bl)?;
            log.record(&s, &scores.f_narrow(0, a0 as i64, al as i64)?.f_narrow(1, b0 as i64, bl as i64)?)?;
            // Backward of S_ab with incoming gradient W_ab; the row's shared
            // query leaf collects its gradient below, once.
            s.f_to_kind(w.kind())?.f_mul(&w)?.f_sum(w.kind())?.f_backward()?;
            let mut slot = d_passages.f_narrow(0, b0 as i64, bl as i64)?;
            let _ = slot.f_add_(&leaf_grad(v.tensor(), acc)?)?;
        }
        for (row, leaf) in plan.rows().iter().zip(&row_leaf) {
            if let Some(u) = leaf {
                let mut rows = d_queries.f_narrow(0, row.start as i64, row.len as i64)?;
                let _ = rows.f_add_(&leaf_grad(u.tensor(), acc)?)?;
            }
        }
        log.finish(c.replay_tolerance)?;
        Ok((RepresentationGradients { queries: d_queries, passages: d_passages }, false))
    }

    /// Step 5, the encoder pass: for each chunk, re-encodes with autograd on
    /// (same random stream as the representation pass) and backpropagates
    /// the chunk's slice of ∂L/∂U or ∂L/∂V. Accumulates ∂L/∂θ into the
    /// encoders' parameters.
    ///
    /// # Errors
    /// Encoder errors; [`GradCacheError::ReplayMismatch`] when a re-encoded
    /// chunk differs from the representation pass.
    pub fn encoder_pass(
        &self,
        queries: &QE::Input,
        passages: &PE::Input,
        reps: &Representations,
        grads: &RepresentationGradients,
        seeds: &ReplaySeeds,
    ) -> Result<()> {
        let c = &self.config;
        let plan = self.layout(queries, passages)?;
        backprop_all(self.query_encoder, queries, &plan, Side::Queries, &reps.queries, &grads.queries, seeds, c)?;
        backprop_all(self.passage_encoder, passages, &plan, Side::Passages, &reps.passages, &grads.passages, seeds, c)
    }
}

/// A head block whose graph the score pass kept: its scores and its input
/// leaves.
pub(crate) struct KeptBlock {
    scores: Tensor,
    queries: Representation,
    passages: Representation,
}

fn stream_of(side: Side) -> Stream {
    match side {
        Side::Queries => Stream::QueryChunk,
        Side::Passages => Stream::PassageChunk,
    }
}

/// Encodes one chunk, already cut, after seeding its random stream; checks
/// its length.
pub(crate) fn encode_cut<E: Encoder + ?Sized>(encoder: &E, chunk: &E::Input, index: usize, side: Side, seeds: &ReplaySeeds, fwd: Forward) -> Result<Representation> {
    let len = chunk.len();
    seeds.enter(stream_of(side), index);
    let rep = fwd.precision.run(|| encoder.encode(chunk, fwd.train))?;
    if rep.len() != len {
        return Err(GradCacheError::EncoderLength { side, expected: len, got: rep.len() });
    }
    Ok(rep)
}

/// Encodes every chunk of `input` as `plan` cuts it (with or without graph,
/// as the caller's grad mode says) and concatenates; a retained chunk is
/// encoded with graph whatever the mode, kept, and enters the
/// concatenation detached.
pub(crate) fn encode_all<E: Encoder + ?Sized>(
    encoder: &E,
    input: &E::Input,
    plan: &Plan,
    side: Side,
    seeds: &ReplaySeeds,
    fwd: Forward,
) -> Result<(Representation, Vec<Option<Representation>>)> {
    let mut parts = Vec::new();
    let mut kept = Vec::new();
    for (i, &(piece, retained)) in plan.chunks(side).iter().enumerate() {
        let (chunk, stream) = (plan.cut(side, input, piece)?, plan.stream(side, i));
        if retained {
            let rep = tch::with_grad(|| encode_cut(encoder, &chunk, stream, side, seeds, fwd))?;
            parts.push(rep.detach()?);
            kept.push(Some(rep));
        } else {
            parts.push(encode_cut(encoder, &chunk, stream, side, seeds, fwd)?);
            kept.push(None);
        }
    }
    Ok((plan.in_batch_order(side, Representation::cat(&parts)?)?, kept))
}

/// Scores every block of `plan` (with or without graph, as the caller's
/// grad mode says) and assembles `S`; a retained block is scored with graph
/// on fresh input leaves whatever the mode, kept, and enters `S` detached.
pub(crate) fn score_all(
    head: &dyn ScoringHead,
    reps: &Representations,
    plan: &Plan,
    fwd: Forward,
    seeds: &ReplaySeeds,
) -> Result<(Tensor, Vec<Option<KeptBlock>>)> {
    let mut rows: Vec<Vec<Tensor>> = plan.rows().iter().map(|_| Vec::new()).collect();
    let mut kept = Vec::new();
    for block in plan.blocks() {
        let (a0, al, b0, bl) = (block.queries.start, block.queries.len, block.passages.start, block.passages.len);
        seeds.enter(Stream::HeadBlock, block.index);
        if block.retained {
            let u = reps.queries.narrow(a0, al)?.detached_leaf()?;
            let v = reps.passages.narrow(b0, bl)?.detached_leaf()?;
            let s = tch::with_grad(|| fwd.precision.run(|| head.score(&u, &v, fwd.train)))?;
            check_block_shape(&s, al, bl)?;
            rows[block.row].push(s.f_detach()?);
            kept.push(Some(KeptBlock { scores: s, queries: u, passages: v }));
        } else {
            let u = reps.queries.narrow(a0, al)?;
            let v = reps.passages.narrow(b0, bl)?;
            let s = fwd.precision.run(|| head.score(&u, &v, fwd.train))?;
            check_block_shape(&s, al, bl)?;
            rows[block.row].push(s);
            kept.push(None);
        }
    }
    let rows = rows.iter().map(|r| Tensor::f_cat(r, 1)).collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((Tensor::f_cat(&rows, 0)?, kept))
}

pub(crate) fn check_block_shape(s: &Tensor, queries: usize, passages: usize) -> Result<()> {
    if s.size() != [queries as i64, passages as i64] {
        return Err(GradCacheError::HeadShape { queries, passages, got: s.size() });
    }
    Ok(())
}

/// Locates the first block with a non-finite score (error path only).
pub(crate) fn first_non_finite_block(scores: &Tensor, plan: &Plan) -> Result<GradCacheError> {
    let (n, m) = (scores.size()[0] as usize, scores.size()[1] as usize);
    for b in plan.blocks() {
        let (a0, al, b0, bl) = (b.queries.start, b.queries.len, b.passages.start, b.passages.len);
        let block = scores.f_narrow(0, a0 as i64, al as i64)?.f_narrow(1, b0 as i64, bl as i64)?;
        if !all_finite(&block)? {
            return Ok(GradCacheError::NonFiniteScores { queries: a0..a0 + al, passages: b0..b0 + bl });
        }
    }
    Ok(GradCacheError::NonFiniteScores { queries: 0..n, passages: 0..m })
}

/// The loss as f64, after checking it is a finite scalar.
pub(crate) fn checked_loss_value(loss: &Tensor) -> Result<f64> {
    if loss.numel() != 1 {
        return Err(GradCacheError::LossShape { got: loss.size() });
    }
    let value = loss.f_to_kind(tch::Kind::Double)?.f_double_value(&[])?;
    if !value.is_finite() {
        return Err(GradCacheError::NonFiniteLoss { value });
    }
    Ok(value)
}

/// The gradient of a leaf, in `kind`; zeros if nothing reached it.
fn leaf_grad(leaf: &Tensor, kind: tch::Kind) -> Result<Tensor> {
    let g = leaf.f_grad()?;
    if g.defined() {
        Ok(g.f_to_kind(kind)?)
    } else {
        Ok(leaf.f_zeros_like()?.f_to_kind(kind)?)
    }
}

/// Backpropagates the retained chunks of every listed side through the
/// graphs the representation pass kept, all in one backward call (as the
/// full-batch step does), which frees them before anything is recomputed.
fn backprop_kept(sides: &[(&Plan, Side, Vec<Option<Representation>>, &Tensor)]) -> Result<()> {
    let mut pairs = Vec::new();
    for (plan, side, kept, grads) in sides {
        for ((piece, _), rep) in plan.chunks(*side).iter().zip(kept) {
            let Some(rep) = rep else { continue };
            let y = rep.tensor();
            pairs.push((y.shallow_clone(), Representation::narrow_tokens_like(&plan.rows_of(*side, grads, *piece)?, y)?));
        }
    }
    backward_pairs(pairs)
}

/// One backward call of `Σ_k sum(y_k ⊙ g_k)`: each `y_k` receives exactly
/// the incoming gradient `g_k` (summed in `g_k`'s kind). Nothing for no
/// pairs.
pub(crate) fn backward_pairs(pairs: Vec<(Tensor, Tensor)>) -> Result<()> {
    let mut total: Option<Tensor> = None;
    for (y, g) in pairs {
        let term = y.f_to_kind(g.kind())?.f_mul(&g)?.f_sum(g.kind())?;
        total = Some(match total {
            Some(t) => t.f_add(&term.f_to_kind(t.kind())?)?,
            None => term,
        });
    }
    if let Some(t) = total {
        t.f_backward()?;
    }
    Ok(())
}

/// Backpropagates each recomputed chunk's slice of `grads` (a tensor over
/// the plan's side) through a re-encoding (same random stream, checked against the first pass); the
/// plan's retained chunks are left to [`backprop_kept`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn backprop_all<E: Encoder + ?Sized>(
    encoder: &E,
    input: &E::Input,
    plan: &Plan,
    side: Side,
    cached: &Representation,
    grads: &Tensor,
    seeds: &ReplaySeeds,
    config: &StepConfig,
) -> Result<()> {
    let stage = match side {
        Side::Queries => ReplayStage::QueryChunk,
        Side::Passages => ReplayStage::PassageChunk,
    };
    let mut log = ReplayLog::new(stage, config.check_replay);
    for (i, &(piece, retained)) in plan.chunks(side).iter().enumerate() {
        if retained {
            continue;
        }
        let chunk = plan.cut(side, input, piece)?;
        let rep = tch::with_grad(|| encode_cut(encoder, &chunk, plan.stream(side, i), side, seeds, config.forward()))?;
        let cached_chunk = Representation::narrow_tokens_like(&plan.rows_of(side, cached.tensor(), piece)?, rep.tensor())?;
        log.record(rep.tensor(), &cached_chunk)?;
        let y = rep.tensor();
        let g = Representation::narrow_tokens_like(&plan.rows_of(side, grads, piece)?, y)?;
        // Backward of the chunk's representation with incoming gradient g.
        y.f_to_kind(g.kind())?.f_mul(&g)?.f_sum(g.kind())?.f_backward()?;
    }
    log.finish(config.replay_tolerance)
}

/// The padded tokens of each chunk of a side of `plan`.
fn chunk_tokens<C: Chunk>(plan: &Plan, side: Side, input: &C) -> Result<Vec<usize>> {
    plan.chunks(side).iter().map(|(p, _)| Ok(plan.cut(side, input, *p)?.padded_tokens())).collect()
}

/// `config`'s chunks and blocks for this batch with nothing retained (in
/// length order when it sorts).
fn layout_of<Q: Chunk, P: Chunk>(config: &StepConfig, queries: &Q, passages: &P) -> Result<Plan> {
    Ok(Plan::with_retained(config, queries.len(), passages.len(), crate::plan::RetainCounts::default()).with_orders(Plan::length_orders(config, queries, passages)?))
}

/// The padded tokens of every chunk of `layout`, both sides.
fn layout_tokens<Q: Chunk, P: Chunk>(layout: &Plan, queries: &Q, passages: &P) -> Result<ChunkTokens> {
    Ok(ChunkTokens { queries: chunk_tokens(layout, Side::Queries, queries)?, passages: chunk_tokens(layout, Side::Passages, passages)? })
}
