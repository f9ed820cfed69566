//! Memory budgets: what a step's activations cost (a [`CostModel`],
//! measured by [`probe_costs`]), the peak a plan is estimated at, the plan
//! fitted to a budget (what is retained), and sizes chosen from a budget.
//! [`BudgetState`] is what a budgeted step keeps between steps.

use tch::{Device, Tensor};

use crate::core::batch::Chunk;
use crate::core::config::{MemoryConfig, StepConfig};
use crate::core::encoder::Encoder;
use crate::core::layout::{Layout, PerSide, Side};
use crate::core::model::StepModel;
use crate::core::output::BudgetReport;
use crate::core::passes::{encode_chunk, has_closed_form};
use crate::core::plan::Plan;
use crate::core::replay::ReplaySeeds;
use crate::core::scoring::score_block;
use crate::error::ReplayStage;
use crate::error::{GradCacheError, Result};
use crate::util::accumulation_kind;

const MB: f64 = (1u64 << 20) as f64;

/// The share of a budget (after the caches) that one encoder chunk's graph,
/// or one head block's, may take when [`Plan::sized_for_budget`] chooses
/// the sizes.
pub const AUTO_SIZE_SHARE: f64 = 0.25;

/// The most pairs [`Plan::sized_for_budget`] puts in one head block: on the
/// CPU the MLP head's step took 1.68 s with blocks of 256 × 128 pairs and
/// 0.86 s with 256 × 64 (`benchmarks/budget/auto_sizes.sh`, docs/benchmarks.md).
pub const AUTO_BLOCK_MAX_PAIRS: usize = 1 << 14;

/// The share of available memory that `{"budget": "auto"}` takes.
pub const AUTO_BUDGET_SHARE: f64 = 0.5;

/// Activation memory, measured by a probe ([`probe_costs`])
/// on the widest chunk of each side and on one head block cut from them:
/// the allocator's bytes in use before and after running it with graph
/// (glibc's `mallinfo2` on the CPU).
///
/// An encoder chunk's graph is taken to cost alike per padded token (items ×
/// the chunk's longest item): attention's share grows with the square of the
/// length, so a chunk wider than the probed one would cost more per token;
/// the step probes again whenever a batch has a wider chunk than the probe
/// saw. A head block's graph costs `pair_bytes` per pair at the
/// representations' width.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    /// Bytes per padded token of a query chunk's graph (its output included).
    pub query_token_bytes: f64,
    /// Bytes per padded token of a passage chunk's graph.
    pub passage_token_bytes: f64,
    /// Bytes per item of the query representations U (and of ∂L/∂U).
    pub query_rep_bytes: f64,
    /// Bytes per item of the passage representations V (and of ∂L/∂V).
    pub passage_rep_bytes: f64,
    /// Bytes per element of `S` and of `W`.
    pub score_bytes: f64,
    /// Bytes per pair of a head block's graph; `None` for a head with
    /// closed-form gradients, which runs no head pass (nothing to retain).
    pub pair_bytes: Option<f64>,
    /// The widths (tokens per item) of the probed chunks.
    pub probed_widths: (f64, f64),
    /// What a graph's backward pass adds to its memory while it runs, as a
    /// factor on the graph's size: the gradients of the activations and
    /// libtorch's temporaries, which the probe cannot see (it reads the
    /// allocator before and after, not its peak). [`BACKWARD_HEADROOM`] by
    /// default.
    pub backward_headroom: f64,
}

/// The measured ratio of a step's resident-memory growth to the graph
/// sizes the probe measures: 1.32–1.71 on the small BERT with the dot and
/// MLP heads at budgets from 60 MB to 1.2 GB (the first run of
/// `benchmarks/budget/sweep.sh`, `docs/benchmarks.md`); the largest is
/// taken, so the estimate errs high.
pub const BACKWARD_HEADROOM: f64 = 1.7;

/// The encoder work of each chunk of a batch, as [`Chunk::padded_tokens`]
/// counts it: what a [`CostModel`] prices.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChunkTokens {
    /// Padded tokens of each query chunk, in order.
    pub queries: Vec<usize>,
    /// Padded tokens of each passage chunk, in order.
    pub passages: Vec<usize>,
}

impl ChunkTokens {
    /// The padded tokens of every chunk of `plan`, both sides.
    ///
    /// # Errors
    /// The inputs' errors.
    pub fn of<Q: Chunk, P: Chunk>(plan: &Plan, queries: &Q, passages: &P) -> Result<ChunkTokens> {
        Ok(ChunkTokens { queries: side_tokens(plan, Side::Queries, queries)?, passages: side_tokens(plan, Side::Passages, passages)? })
    }
}

fn side_tokens<C: Chunk>(plan: &Plan, side: Side, input: &C) -> Result<Vec<usize>> {
    plan.chunks(side).iter().map(|c| Ok(c.cut(input)?.padded_tokens())).collect()
}

impl Plan {
    /// The step's estimated peak of activation memory under this plan, in
    /// bytes above what the model holds before the step: the caches (U, V,
    /// `S`, `W`, ∂L/∂U, ∂L/∂V), the retained encoder graphs, and the larger
    /// of the retained head graphs and one recomputed block (the head pass
    /// backpropagates the retained blocks first, then recomputes the rest,
    /// while the encoder graphs are still held), or one recomputed chunk (the
    /// encoder pass backpropagates the retained chunks first, in one call,
    /// then recomputes the rest one at a time), whichever is larger.
    ///
    /// The graphs are scaled by [`CostModel::backward_headroom`] for what
    /// their backward pass adds. Not counted: the parameters' gradients
    /// (allocated once, on the first step). `docs/benchmarks.md` gives the
    /// measured error.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] when `tokens` does not list this
    /// plan's chunks.
    pub fn estimate_peak(&self, costs: &CostModel, tokens: &ChunkTokens) -> Result<f64> {
        let (query_chunks, passage_chunks) = (self.chunk_pieces(Side::Queries), self.chunk_pieces(Side::Passages));
        if tokens.queries.len() != query_chunks.len() || tokens.passages.len() != passage_chunks.len() {
            return Err(GradCacheError::InvalidConfig { field: "memory", reason: "the token counts do not match the plan's chunks" });
        }
        let grid = self.grid();
        let (n, m) = (grid.rows.iter().map(|r| r.len).sum::<usize>() as f64, grid.cols.iter().map(|c| c.len).sum::<usize>() as f64);
        let caches = 2.0 * (n * costs.query_rep_bytes + m * costs.passage_rep_bytes) + 2.0 * n * m * costs.score_bytes;
        let (mut retained_enc, mut chunk_work) = (0.0_f64, 0.0_f64);
        for (chunks, counts, per_token) in
            [(query_chunks, &tokens.queries, costs.query_token_bytes), (passage_chunks, &tokens.passages, costs.passage_token_bytes)]
        {
            for (&(_, retained), &t) in chunks.iter().zip(counts) {
                let cost = per_token * t as f64;
                if retained {
                    retained_enc += cost;
                } else {
                    chunk_work = chunk_work.max(cost);
                }
            }
        }
        let (mut retained_head, mut block_work) = (0.0_f64, 0.0_f64);
        if let Some(pair) = costs.pair_bytes {
            for b in self.blocks() {
                let cost = pair * (b.queries.len * b.passages.len) as f64;
                if b.retained {
                    retained_head += cost;
                } else {
                    block_work = block_work.max(cost);
                }
            }
        }
        Ok(caches + costs.backward_headroom * (retained_enc + retained_head.max(block_work)).max(chunk_work))
    }

    /// The layout fitted to `budget_bytes`: `layout`'s chunks and blocks
    /// (what it retains is ignored), keeping greedily and in order query chunks, passage chunks and head
    /// blocks (each kind as a prefix) while [`Plan::estimate_peak`] stays
    /// within the budget. Returns the plan and its estimate. A head with
    /// closed-form gradients (`pair_bytes: None`) gets no retained blocks.
    ///
    /// It never merges chunks (as [`Plan::whole`] does): dropout masks are
    /// drawn per chunk, so a layout chosen from a measurement would make a
    /// run's random draws, and so its trajectory, depend on the
    /// measurement. What is retained does not change them.
    ///
    /// # Errors
    /// [`GradCacheError::BudgetTooSmall`] when even recomputing everything
    /// is estimated above the budget (smaller chunks or blocks need less);
    /// [`GradCacheError::InvalidConfig`] when `tokens` does not match the
    /// plan's chunks.
    pub fn fit(layout: Plan, costs: &CostModel, tokens: &ChunkTokens, budget_bytes: f64) -> Result<(Plan, f64)> {
        let mut plan = layout.without_retained();
        let mut estimate = plan.estimate_peak(costs, tokens)?;
        if estimate > budget_bytes {
            return Err(GradCacheError::BudgetTooSmall { budget_mb: budget_bytes / MB, needed_mb: estimate / MB });
        }
        for side in [Side::Queries, Side::Passages] {
            for i in 0..plan.chunk_pieces(side).len() {
                plan.set_chunk_retained(side, i, true);
                let e = plan.estimate_peak(costs, tokens)?;
                if e > budget_bytes {
                    plan.set_chunk_retained(side, i, false);
                    break;
                }
                estimate = e;
            }
        }
        if costs.pair_bytes.is_some() {
            let total = plan.grid().len();
            let mut kept = 0;
            while kept < total {
                plan.set_retained_blocks(kept + 1);
                let e = plan.estimate_peak(costs, tokens)?;
                if e > budget_bytes {
                    plan.set_retained_blocks(kept);
                    break;
                }
                kept += 1;
                estimate = e;
            }
        }
        Ok((plan, estimate))
    }

    /// `config` with its chunk and block sizes chosen for `budget_bytes`
    /// (what [`StepConfig::auto_sizes`] asks for): after the caches, each
    /// encoder chunk's graph and each head block's graph may take at most
    /// [`AUTO_SIZE_SHARE`] of what is left (with
    /// [`CostModel::backward_headroom`]), so that the rest is there for
    /// [`Plan::fit`] to retain.
    ///
    /// A side whose items have lengths (`by_tokens`) is cut by a token
    /// budget ([`StepConfig::query_chunk_tokens`]): the padded tokens the
    /// share holds, priced per padded token — the whole side's (its items ×
    /// its longest, `widths`) when they fit, else the largest power of two
    /// that does. Another side is cut by items: the whole side when it
    /// fits, else the largest power of two of items priced at `widths`. A
    /// block has as many rows as a chunk of queries all as long as the
    /// longest (halved while needed) and the most passage columns that
    /// fit, by the same rule, up to [`AUTO_BLOCK_MAX_PAIRS`]. A closed-form
    /// head (`pair_bytes: None`) keeps `config`'s block sizes: it runs no
    /// head pass.
    ///
    /// The sizes depend only on the budget, the batch's shape and the cost
    /// model, and come in powers of two, so that the small differences
    /// between two measurements of the same model leave them unchanged
    /// unless the budget sits on a doubling's edge (dropout masks are drawn
    /// per chunk and block, so the sizes are part of a run's random draws;
    /// docs/architecture.md gives what was measured).
    ///
    /// # Errors
    /// [`GradCacheError::BudgetTooSmall`] when, after the caches, a quarter
    /// of the budget cannot hold a chunk of one item or a block of one pair
    /// (`needed_mb` is the least budget that can).
    pub fn sized_for_budget(
        config: &StepConfig,
        n: usize,
        m: usize,
        costs: &CostModel,
        widths: (f64, f64),
        by_tokens: PerSide<bool>,
        budget_bytes: f64,
    ) -> Result<StepConfig> {
        let caches =
            2.0 * (n as f64 * costs.query_rep_bytes + m as f64 * costs.passage_rep_bytes) + 2.0 * (n * m) as f64 * costs.score_bytes;
        let share = AUTO_SIZE_SHARE * (budget_bytes - caches);
        let h = costs.backward_headroom;
        // The least budget: one item per chunk and one pair per block.
        let query_item = costs.query_token_bytes * widths.0;
        let passage_item = costs.passage_token_bytes * widths.1;
        let dearest = query_item.max(passage_item).max(costs.pair_bytes.unwrap_or(0.0));
        if h * dearest > share {
            return Err(GradCacheError::BudgetTooSmall {
                budget_mb: budget_bytes / MB,
                needed_mb: (caches + h * dearest / AUTO_SIZE_SHARE) / MB,
            });
        }
        // The largest size up to `limit` whose graph fits the share: `limit`
        // itself, or else a power of two (at least 1).
        let largest = |limit: usize, cost_per_unit: f64| -> usize {
            let fits = |c: usize| h * cost_per_unit * c as f64 <= share;
            if fits(limit) {
                return limit;
            }
            let mut c = 1;
            while 2 * c < limit && fits(2 * c) {
                c *= 2;
            }
            c
        };
        let query_chunk = largest(n.max(1), query_item);
        let passage_chunk = largest(m.max(1), passage_item);
        let side_tokens = |by: bool, items: usize, width: f64, per_token: f64| {
            by.then(|| largest(((items as f64 * width).ceil() as usize).max(1), per_token))
        };
        let query_tokens = side_tokens(by_tokens.queries, n, widths.0, costs.query_token_bytes);
        let passage_tokens = side_tokens(by_tokens.passages, m, widths.1, costs.passage_token_bytes);
        let (mut rows, mut cols) = (config.layout.head_block_queries, config.layout.head_block_passages);
        if let Some(pair) = costs.pair_bytes {
            rows = query_chunk;
            while rows > 1 && h * pair * rows as f64 > share {
                rows = power_of_two_below(rows);
            }
            cols = largest(m.max(1), pair * rows as f64);
            // Past a point a larger block only runs slower (it leaves the
            // CPU's caches): cap its pairs.
            while rows * cols > AUTO_BLOCK_MAX_PAIRS && cols > 1 {
                cols = power_of_two_below(cols);
            }
        }
        let layout = Layout {
            query_chunk_size: query_chunk,
            passage_chunk_size: passage_chunk,
            head_block_queries: rows,
            head_block_passages: cols,
        };
        Ok(StepConfig { layout, query_chunk_tokens: query_tokens, passage_chunk_tokens: passage_tokens, ..config.clone() })
    }
}

/// What a budgeted step keeps from one step to the next: the measured
/// costs (probed on the first budgeted step, and again when a batch has a
/// wider chunk than the probe saw), `{"budget": "auto"}` resolved, and the
/// device the probe ran on.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BudgetState {
    costs: Option<CostModel>,
    auto_budget: Option<f64>,
    device: Option<Device>,
}

impl BudgetState {
    /// Uses `costs` for later plans instead of probing (a plan still
    /// probes again for a batch with a wider chunk than `costs` saw).
    pub fn set_costs(&mut self, costs: CostModel) {
        self.costs = Some(costs);
    }

    /// The device the last probe measured on.
    pub fn device(&self) -> Option<Device> {
        self.device
    }

    /// The plan of `config` for this batch: its layout (in length order
    /// when it sorts) with what it retains, or under a budget the layout
    /// fitted to it with the measured costs, at sizes chosen from the
    /// budget when `auto_sizes` is on; with the budget's report.
    ///
    /// # Errors
    /// As [`probe_costs`], [`Plan::fit`] and [`Plan::sized_for_budget`].
    pub fn plan<QE: Encoder + ?Sized, PE: Encoder + ?Sized>(
        &mut self,
        config: &StepConfig,
        model: StepModel<'_, QE, PE>,
        queries: &QE::Input,
        passages: &PE::Input,
        seeds: &ReplaySeeds,
    ) -> Result<(Plan, Option<BudgetReport>)> {
        if !config.memory.is_budget() {
            return Ok((Plan::for_batch(config, queries, passages)?, None));
        }
        let (n, m) = (queries.len(), passages.len());
        let layout = Plan::layout_of(config, queries, passages)?;
        let tokens = ChunkTokens::of(&layout, queries, passages)?;
        let widest = |t: &[usize], side| layout.chunks(side).iter().zip(t).map(|(c, &t)| t as f64 / c.len() as f64).fold(0.0, f64::max);
        let widths = (widest(&tokens.queries, Side::Queries), widest(&tokens.passages, Side::Passages));
        let costs = match self.costs {
            Some(c) if widths.0 <= c.probed_widths.0 && widths.1 <= c.probed_widths.1 => c,
            _ => {
                let (c, device) = probe_costs(config, model, queries, passages, seeds)?;
                (self.costs, self.device) = (Some(c), Some(device));
                c
            }
        };
        let budget_bytes = match (config.memory, self.auto_budget) {
            (MemoryConfig::Budget { budget_mb }, _) => budget_mb * MB,
            (_, Some(b)) => b,
            _ => {
                // Free memory where the probe ran (the representations' device).
                let b = AUTO_BUDGET_SHARE * crate::runtime::gpu::available_bytes_on(self.device.unwrap_or(Device::Cpu))? as f64;
                self.auto_budget = Some(b);
                b
            }
        };
        let (layout, tokens) = if config.auto_sizes {
            let by_tokens = PerSide::new(queries.lengths()?.is_some(), passages.lengths()?.is_some());
            let sized = Plan::sized_for_budget(config, n, m, &costs, widths, by_tokens, budget_bytes)?;
            let layout = Plan::layout_of(&sized, queries, passages)?;
            let tokens = ChunkTokens::of(&layout, queries, passages)?;
            (layout, tokens)
        } else {
            (layout, tokens)
        };
        let (plan, estimate) = Plan::fit(layout, &costs, &tokens, budget_bytes)?;
        Ok((plan, Some(BudgetReport { budget_mb: budget_bytes / MB, estimated_peak_mb: estimate / MB, measured_peak_mb: None })))
    }
}

/// The activation costs of `config`'s layout for this batch, measured: the
/// widest chunk of each side encoded with graph, and one block cut from
/// their outputs scored with graph, each from its own replay stream, with
/// the allocator's bytes in use read before and after the second of two
/// runs (the first absorbs one-time allocations: thread pools, kernel
/// workspaces, which would otherwise be priced as activations of whichever
/// side ran first). The graphs are dropped. Returns the costs and the
/// device the representations are on.
///
/// # Errors
/// [`GradCacheError::PeakMemoryUnavailable`] where the allocator cannot be
/// read (off glibc, or on a GPU in a build without the CUDA shim,
/// [`crate::runtime::gpu`]); encoder and head errors.
pub fn probe_costs<QE: Encoder + ?Sized, PE: Encoder + ?Sized>(
    config: &StepConfig,
    model: StepModel<'_, QE, PE>,
    queries: &QE::Input,
    passages: &PE::Input,
    seeds: &ReplaySeeds,
) -> Result<(CostModel, Device)> {
    let StepModel { query_encoder, passage_encoder, head } = model;
    let plan = Plan::layout_of(config, queries, passages)?;
    let fwd = config.forward();
    let tokens = ChunkTokens::of(&plan, queries, passages)?;
    let widest = |tokens: &[usize], side| {
        let chunks = plan.chunks(side);
        let i = (0..chunks.len()).max_by(|&a, &b| (tokens[a] * chunks[b].len()).cmp(&(tokens[b] * chunks[a].len()))).unwrap_or(0);
        (chunks[i].clone(), tokens[i])
    };
    let ((q, qt), (p, pt)) = (widest(&tokens.queries, Side::Queries), widest(&tokens.passages, Side::Passages));
    let encode_q = || tch::with_grad(|| encode_chunk(query_encoder, queries, &q, Side::Queries, seeds, fwd));
    // The query chunk's first run tells the device to read; it is also that
    // side's warm-up run.
    let device = encode_q()?.tensor().device();
    let measure = |warm: bool, f: &mut dyn FnMut() -> Result<Box<dyn std::any::Any>>| -> Result<f64> {
        if warm {
            drop(f()?);
        }
        let before = crate::runtime::gpu::allocated_bytes_on(device)?;
        let kept = f()?;
        let after = crate::runtime::gpu::allocated_bytes_on(device)?;
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
        let rep = tch::with_grad(|| encode_chunk(passage_encoder, passages, &p, Side::Passages, seeds, fwd))?;
        v = Some(rep.detach()?);
        Ok(Box::new(rep))
    })?;
    let (u, v) =
        (u.ok_or(GradCacheError::EmptyBatch { side: Side::Queries })?, v.ok_or(GradCacheError::EmptyBatch { side: Side::Passages })?);
    let bytes_of = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as f64;
    let pair_bytes = if has_closed_form(head, config.precision, &u, &v)? {
        None
    } else {
        let (a, b) = (u.len().min(config.layout.head_block_queries), v.len().min(config.layout.head_block_passages));
        let bytes = measure(true, &mut || {
            let (ul, vl) = (u.narrow(0, a)?.detached_leaf()?, v.narrow(0, b)?.detached_leaf()?);
            seeds.enter(ReplayStage::HeadBlock, 0);
            let s = tch::with_grad(|| score_block(head, &ul, &vl, fwd))?;
            Ok(Box::new((s.scores, s.gates, ul, vl)))
        })?;
        Some(bytes / (a * b) as f64)
    };
    let costs = CostModel {
        query_token_bytes: q_bytes / qt.max(1) as f64,
        passage_token_bytes: p_bytes / pt.max(1) as f64,
        query_rep_bytes: bytes_of(u.tensor()) / q.len() as f64,
        passage_rep_bytes: bytes_of(v.tensor()) / p.len() as f64,
        score_bytes: accumulation_kind(u.kind()).elt_size_in_bytes() as f64,
        pair_bytes,
        probed_widths: (qt as f64 / q.len() as f64, pt as f64 / p.len() as f64),
        backward_headroom: BACKWARD_HEADROOM,
    };
    Ok((costs, device))
}
/// The largest power of two below `x` (`x ≥ 2`): how auto sizes shrink.
fn power_of_two_below(x: usize) -> usize {
    if x.is_power_of_two() {
        x / 2
    } else {
        x.next_power_of_two() / 2
    }
}

#[cfg(test)]
mod tests {
    use super::power_of_two_below;

    #[test]
    fn auto_sizes_shrink_by_powers_of_two() {
        // A power of two halves; anything else drops to the power below.
        assert_eq!([2, 3, 4, 5, 8, 100, 128].map(power_of_two_below), [1, 2, 2, 4, 4, 64, 64]);
    }
}
