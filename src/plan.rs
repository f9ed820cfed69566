//! The layout of one two-cache step as one object: the encoder chunks of
//! each side, the grid of head blocks, the replay stream of each (its
//! index), and for each chunk and block whether the first pass keeps its
//! graph (**retained**: the second pass backpropagates through it directly)
//! or drops it (**recomputed**: the second pass runs it again from the same
//! random stream). Every pass of the step reads the same `Plan`.

use serde::{Deserialize, Serialize};

use crate::config::{pieces, StepConfig};
use crate::error::{GradCacheError, Result, Side};

const MB: f64 = (1u64 << 20) as f64;

fn side_index(side: Side) -> usize {
    match side {
        Side::Queries => 0,
        Side::Passages => 1,
    }
}

/// How much of the first passes' graphs a step keeps.
///
/// JSON: `{"recompute": "all"}` (the default: flat memory, every chunk and
/// block runs twice), `{"recompute": "none"}` (every graph kept: the cost of
/// the full-batch step), `{"retain": {"query_chunks": 2,
/// "passage_chunks": 4, "head_blocks": 8}}` (the first so many of each kept,
/// the rest recomputed), `{"budget_mb": 500}`: keep what fits when the
/// step's activation memory may grow by at most that many MB (see
/// [`Plan::fit`]), or `{"budget": "auto"}`: the same with half the memory
/// the system reports available (`MemAvailable` in `/proc/meminfo`) when the
/// first step runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MemoryConfig {
    /// Recompute all or none.
    Recompute {
        /// `all` or `none`.
        recompute: Recompute,
    },
    /// Keep the first so many chunks and blocks.
    Retain {
        /// How many of each.
        retain: RetainCounts,
    },
    /// Keep what fits in a budget.
    Budget {
        /// Megabytes (2^20 bytes) the step's activations may take at most.
        budget_mb: f64,
    },
    /// Keep what fits in half the available memory.
    Auto {
        /// `auto`.
        budget: AutoBudget,
    },
}

/// The command-line form: `all` (recompute all), `none` (recompute none),
/// `auto`, a budget in MB (`2000`), or the JSON forms.
impl std::str::FromStr for MemoryConfig {
    type Err = GradCacheError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = GradCacheError::InvalidConfig { field: "memory", reason: "must be all, none, auto, a budget in MB, or StepConfig.memory's JSON" };
        let config = match s.trim() {
            "all" => MemoryConfig::Recompute { recompute: Recompute::All },
            "none" => MemoryConfig::Recompute { recompute: Recompute::None },
            "auto" => MemoryConfig::Auto { budget: AutoBudget::Auto },
            other => match other.parse::<f64>() {
                Ok(budget_mb) => MemoryConfig::Budget { budget_mb },
                Err(_) => serde_json::from_str(other).map_err(|_| bad)?,
            },
        };
        config.validate()?;
        Ok(config)
    }
}

/// The one value of `{"budget": "auto"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoBudget {
    /// Half of `MemAvailable`.
    Auto,
}

/// The share of a budget (after the caches) that one encoder chunk's graph,
/// or one head block's, may take when [`Plan::sized_for_budget`] chooses
/// the sizes.
pub const AUTO_SIZE_SHARE: f64 = 0.25;

/// The most pairs [`Plan::sized_for_budget`] puts in one head block: on the
/// CPU the MLP head's step took 1.68 s with blocks of 256 × 128 pairs and
/// 0.86 s with 256 × 64 (`benchmarks/auto_sizes.sh`, docs/benchmarks.md).
pub const AUTO_BLOCK_MAX_PAIRS: usize = 1 << 14;

/// The share of available memory that `{"budget": "auto"}` takes.
pub const AUTO_BUDGET_SHARE: f64 = 0.5;

impl MemoryConfig {
    /// Checks a budget: finite and positive.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] naming `memory.budget_mb`.
    pub fn validate(&self) -> Result<()> {
        match self {
            MemoryConfig::Budget { budget_mb } if !(budget_mb.is_finite() && *budget_mb > 0.0) => {
                Err(GradCacheError::InvalidConfig { field: "memory.budget_mb", reason: "must be a positive number of MB" })
            }
            _ => Ok(()),
        }
    }

    /// Whether the plan is fitted to a budget (and needs a [`CostModel`]).
    pub fn is_budget(&self) -> bool {
        matches!(self, MemoryConfig::Budget { .. } | MemoryConfig::Auto { .. })
    }
}

/// Activation memory, measured by a probe ([`crate::GradCache::probe_costs`])
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
/// `benchmarks/budget_sweep.sh`, `docs/benchmarks.md`); the largest is
/// taken, so the estimate errs high.
pub const BACKWARD_HEADROOM: f64 = 1.7;

/// The encoder work of each chunk of a batch, as [`crate::batch::Chunk::padded_tokens`]
/// counts it: what a [`CostModel`] prices.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChunkTokens {
    /// Padded tokens of each query chunk, in order.
    pub queries: Vec<usize>,
    /// Padded tokens of each passage chunk, in order.
    pub passages: Vec<usize>,
}

/// Which graphs to recompute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recompute {
    /// Every chunk and block (flat memory).
    All,
    /// None: every graph is kept from the first pass.
    None,
}

/// How many chunks and blocks keep their graphs (the first ones in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetainCounts {
    /// Query chunks.
    pub query_chunks: usize,
    /// Passage chunks.
    pub passage_chunks: usize,
    /// Head blocks (row by row).
    pub head_blocks: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig::Recompute { recompute: Recompute::All }
    }
}

/// One contiguous piece of a side or of the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// First item.
    pub start: usize,
    /// Items.
    pub len: usize,
}

/// One block of the pair grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Its replay stream index (row-major over the grid).
    pub index: usize,
    /// Its row of blocks.
    pub row: usize,
    /// Query rows.
    pub queries: Piece,
    /// Passage columns.
    pub passages: Piece,
    /// Whether the score pass keeps its graph.
    pub retained: bool,
}

/// The layout of one step (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Per side, the order items are chunked in (position → item), when
    /// chunks are cut from the items sorted by length.
    orders: [Option<Vec<usize>>; 2],
    /// Per side, the replay stream of the first chunk (non-zero for one
    /// process's share of a batch split across processes).
    first_streams: [usize; 2],
    query_chunks: Vec<(Piece, bool)>,
    passage_chunks: Vec<(Piece, bool)>,
    rows: Vec<Piece>,
    cols: Vec<Piece>,
    retained_blocks: usize,
}

fn cut(total: usize, size: usize, keep: usize) -> Vec<(Piece, bool)> {
    pieces(total, size).enumerate().map(|(i, (start, len))| (Piece { start, len }, i < keep)).collect()
}

/// The largest power of two below `x` (`x ≥ 2`): how auto sizes shrink.
fn power_of_two_below(x: usize) -> usize {
    if x.is_power_of_two() {
        x / 2
    } else {
        x.next_power_of_two() / 2
    }
}

impl Plan {
    /// The plan of `config` for `n` queries and `m` passages.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] from [`StepConfig::validate`].
    pub fn new(config: &StepConfig, n: usize, m: usize) -> Result<Plan> {
        config.validate()?;
        let counts = match config.memory {
            MemoryConfig::Budget { .. } | MemoryConfig::Auto { .. } => {
                return Err(GradCacheError::InvalidConfig { field: "memory", reason: "a budget needs a cost model: use Plan::fit" })
            }
            MemoryConfig::Recompute { recompute: Recompute::All } => RetainCounts::default(),
            MemoryConfig::Recompute { recompute: Recompute::None } => return Ok(Plan::whole(config, n, m)),
            MemoryConfig::Retain { retain } => retain,
        };
        Ok(Plan::with_retained(config, n, m, counts))
    }

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
        if tokens.queries.len() != self.query_chunks.len() || tokens.passages.len() != self.passage_chunks.len() {
            return Err(GradCacheError::InvalidConfig { field: "memory", reason: "the token counts do not match the plan's chunks" });
        }
        let (n, m) = (self.rows.iter().map(|r| r.len).sum::<usize>() as f64, self.cols.iter().map(|c| c.len).sum::<usize>() as f64);
        let caches = 2.0 * (n * costs.query_rep_bytes + m * costs.passage_rep_bytes) + 2.0 * n * m * costs.score_bytes;
        let (mut retained_enc, mut chunk_work) = (0.0_f64, 0.0_f64);
        for (chunks, counts, per_token) in [
            (&self.query_chunks, &tokens.queries, costs.query_token_bytes),
            (&self.passage_chunks, &tokens.passages, costs.passage_token_bytes),
        ] {
            for ((_, retained), &t) in chunks.iter().zip(counts) {
                let cost = per_token * t as f64;
                if *retained {
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

    /// The layout fitted to `budget_bytes`: `config`'s chunks and blocks,
    /// keeping greedily and in order query chunks, passage chunks and head
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
    pub fn fit(config: &StepConfig, n: usize, m: usize, costs: &CostModel, tokens: &ChunkTokens, budget_bytes: f64) -> Result<(Plan, f64)> {
        let mut plan = Plan::with_retained(config, n, m, RetainCounts::default());
        let mut estimate = plan.estimate_peak(costs, tokens)?;
        if estimate > budget_bytes {
            return Err(GradCacheError::BudgetTooSmall { budget_mb: budget_bytes / MB, needed_mb: estimate / MB });
        }
        for side in [Side::Queries, Side::Passages] {
            for i in 0..plan.chunks(side).len() {
                plan.chunks_mut(side)[i].1 = true;
                let e = plan.estimate_peak(costs, tokens)?;
                if e > budget_bytes {
                    plan.chunks_mut(side)[i].1 = false;
                    break;
                }
                estimate = e;
            }
        }
        if costs.pair_bytes.is_some() {
            let total = plan.rows.len() * plan.cols.len();
            while plan.retained_blocks < total {
                plan.retained_blocks += 1;
                let e = plan.estimate_peak(costs, tokens)?;
                if e > budget_bytes {
                    plan.retained_blocks -= 1;
                    break;
                }
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
    /// [`Plan::fit`] to retain. A chunk is the whole side when that fits,
    /// else the largest power of two that does; a block has the query
    /// chunk's rows (halved while needed) and the most passage columns that
    /// fit, by the same rule, up to [`AUTO_BLOCK_MAX_PAIRS`]. `widths` are
    /// the tokens per item of each side's longest item, so a chunk is
    /// priced as if all its items were that long. A closed-form head (`pair_bytes: None`) keeps `config`'s
    /// block sizes: it runs no head pass.
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
    pub fn sized_for_budget(config: &StepConfig, n: usize, m: usize, costs: &CostModel, widths: (f64, f64), budget_bytes: f64) -> Result<StepConfig> {
        let caches = 2.0 * (n as f64 * costs.query_rep_bytes + m as f64 * costs.passage_rep_bytes) + 2.0 * (n * m) as f64 * costs.score_bytes;
        let share = AUTO_SIZE_SHARE * (budget_bytes - caches);
        let h = costs.backward_headroom;
        // The least budget: one item per chunk and one pair per block.
        let query_item = costs.query_token_bytes * widths.0;
        let passage_item = costs.passage_token_bytes * widths.1;
        let dearest = query_item.max(passage_item).max(costs.pair_bytes.unwrap_or(0.0));
        if h * dearest > share {
            return Err(GradCacheError::BudgetTooSmall { budget_mb: budget_bytes / MB, needed_mb: (caches + h * dearest / AUTO_SIZE_SHARE) / MB });
        }
        // The largest size up to `limit` whose graph fits the share: `limit`
        // itself, or else a power of two (at least 1, which fits).
        let largest = |limit: usize, cost_per_item: f64| -> usize {
            let fits = |c: usize| h * cost_per_item * c as f64 <= share;
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
        let (mut rows, mut cols) = (config.head_block_queries, config.head_block_passages);
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
        Ok(StepConfig {
            query_chunk_size: query_chunk,
            passage_chunk_size: passage_chunk,
            head_block_queries: rows,
            head_block_passages: cols,
            ..config.clone()
        })
    }

    fn chunks_mut(&mut self, side: Side) -> &mut [(Piece, bool)] {
        match side {
            Side::Queries => &mut self.query_chunks,
            Side::Passages => &mut self.passage_chunks,
        }
    }

    /// The same layout with nothing retained.
    pub fn without_retained(mut self) -> Plan {
        for (_, r) in self.query_chunks.iter_mut().chain(self.passage_chunks.iter_mut()) {
            *r = false;
        }
        self.retained_blocks = 0;
        self
    }

    /// The same plan with no head block retained (for a head with
    /// closed-form gradients, whose blocks never run a second time).
    pub fn without_retained_blocks(mut self) -> Plan {
        self.retained_blocks = 0;
        self
    }

    /// Everything kept, each side's encoder work in one piece (the
    /// full-batch step's encoder layout: cutting a batch that is kept whole
    /// anyway only adds per-chunk overhead), the pair grid in `config`'s
    /// blocks, all kept (one block over every pair is slower than cache-sized
    /// blocks for a head with hidden layers: measured in
    /// `docs/benchmarks.md`). Encoder streams as for chunk 0, so its dropout
    /// masks differ from a chunked step's: it is chosen only explicitly,
    /// by `{"recompute": "none"}`.
    pub fn whole(config: &StepConfig, n: usize, m: usize) -> Plan {
        let all = RetainCounts { query_chunks: 1, passage_chunks: 1, head_blocks: usize::MAX };
        let one = n.max(m).max(1);
        Plan::with_retained(&StepConfig { query_chunk_size: one, passage_chunk_size: one, ..config.clone() }, n, m, all)
    }

    /// The layout of a batch split across processes: `query_shards[r]`
    /// queries and `passage_shards[r]` passages on rank `r`, in rank order.
    /// Each shard is cut into `config`'s chunks on its own (a chunk never
    /// spans two processes); chunks are numbered, and so seeded, across the
    /// whole batch, so every chunk of every process has its own random
    /// stream. The pair grid is `config`'s blocks over the whole batch.
    /// Nothing is retained.
    pub fn sharded(config: &StepConfig, query_shards: &[usize], passage_shards: &[usize]) -> Plan {
        let cut_shards = |shards: &[usize], size: usize| {
            let mut chunks = Vec::new();
            let mut offset = 0;
            for &items in shards {
                chunks.extend(pieces(items, size).map(|(start, len)| (Piece { start: offset + start, len }, false)));
                offset += items;
            }
            chunks
        };
        let (n, m) = (query_shards.iter().sum(), passage_shards.iter().sum());
        Plan {
            orders: [None, None],
            first_streams: [0, 0],
            query_chunks: cut_shards(query_shards, config.query_chunk_size),
            passage_chunks: cut_shards(passage_shards, config.passage_chunk_size),
            rows: pieces(n, config.head_block_queries).map(|(start, len)| Piece { start, len }).collect(),
            cols: pieces(m, config.head_block_passages).map(|(start, len)| Piece { start, len }).collect(),
            retained_blocks: 0,
        }
    }

    /// The layout of `config` with the first `counts` of each kept.
    pub fn with_retained(config: &StepConfig, n: usize, m: usize, counts: RetainCounts) -> Plan {
        Plan {
            orders: [None, None],
            first_streams: [0, 0],
            query_chunks: cut(n, config.query_chunk_size, counts.query_chunks),
            passage_chunks: cut(m, config.passage_chunk_size, counts.passage_chunks),
            rows: pieces(n, config.head_block_queries).map(|(start, len)| Piece { start, len }).collect(),
            cols: pieces(m, config.head_block_passages).map(|(start, len)| Piece { start, len }).collect(),
            retained_blocks: counts.head_blocks,
        }
    }

    /// The same plan with each side's items chunked in `orders` (position
    /// → item; `None`: the batch's order), as [`Plan::length_orders`] gives.
    pub fn with_orders(mut self, orders: [Option<Vec<usize>>; 2]) -> Plan {
        self.orders = orders;
        self
    }

    /// The same plan with its chunks drawing the replay streams from
    /// `first_streams` (per side) on: the share of process `r` of a batch
    /// split across processes is cut like a batch of its own, but its
    /// chunks keep the streams they have in [`Plan::sharded`].
    pub fn with_first_streams(mut self, first_streams: [usize; 2]) -> Plan {
        self.first_streams = first_streams;
        self
    }

    /// The replay stream of chunk `position` of a side.
    pub fn stream(&self, side: Side, position: usize) -> usize {
        self.first_streams[side_index(side)] + position
    }

    /// For each side of `config`'s batch, the items sorted by length,
    /// longest first (stable), when `config.sort_by_length` asks for it.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] when an input cannot report its
    /// items' lengths.
    pub fn length_orders<Q: crate::batch::Chunk, P: crate::batch::Chunk>(config: &StepConfig, queries: &Q, passages: &P) -> Result<[Option<Vec<usize>>; 2]> {
        if !config.sort_by_length {
            return Ok([None, None]);
        }
        let order = |lengths: Option<Vec<usize>>| -> Result<Option<Vec<usize>>> {
            let lengths = lengths.ok_or(GradCacheError::InvalidConfig { field: "sort_by_length", reason: "needs an input whose items have lengths (e.g. TokenBatch)" })?;
            let mut order: Vec<usize> = (0..lengths.len()).collect();
            order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
            Ok(Some(order))
        };
        Ok([order(queries.lengths()?)?, order(passages.lengths()?)?])
    }

    /// The items of `piece` of a side, cut from `input` (in the plan's
    /// order for that side).
    ///
    /// # Errors
    /// The input's errors.
    pub fn cut<C: crate::batch::Chunk>(&self, side: Side, input: &C, piece: Piece) -> Result<C> {
        match &self.orders[side_index(side)] {
            Some(order) => input.select(&order[piece.start..piece.start + piece.len]),
            None => input.chunk(piece.start, piece.len),
        }
    }

    /// The rows of `piece` of a side from a tensor over the whole side
    /// (representations or their gradients, in the batch's order).
    ///
    /// # Errors
    /// libtorch errors.
    pub fn rows_of(&self, side: Side, tensor: &tch::Tensor, piece: Piece) -> Result<tch::Tensor> {
        match &self.orders[side_index(side)] {
            Some(order) => {
                let index: Vec<i64> = order[piece.start..piece.start + piece.len].iter().map(|&i| i as i64).collect();
                Ok(tensor.f_index_select(0, &tch::Tensor::from_slice(&index).f_to_device(tensor.device())?)?)
            }
            None => Ok(tensor.f_narrow(0, piece.start as i64, piece.len as i64)?),
        }
    }

    /// Puts a side's representations, concatenated chunk by chunk, back in
    /// the batch's order.
    ///
    /// # Errors
    /// libtorch errors.
    pub fn in_batch_order(&self, side: Side, chunked: crate::representation::Representation) -> Result<crate::representation::Representation> {
        match &self.orders[side_index(side)] {
            Some(order) => {
                let mut inverse = vec![0i64; order.len()];
                for (position, &item) in order.iter().enumerate() {
                    inverse[item] = position as i64;
                }
                chunked.select(&tch::Tensor::from_slice(&inverse).f_to_device(chunked.tensor().device())?)
            }
            None => Ok(chunked),
        }
    }

    /// The encoder chunks of a side and whether each is retained; a chunk's
    /// replay stream is [`Plan::stream`] of its position.
    pub fn chunks(&self, side: Side) -> &[(Piece, bool)] {
        match side {
            Side::Queries => &self.query_chunks,
            Side::Passages => &self.passage_chunks,
        }
    }

    /// Every block of the pair grid, row by row.
    pub fn blocks(&self) -> impl Iterator<Item = Block> + '_ {
        self.rows.iter().enumerate().flat_map(move |(row, &queries)| {
            self.cols.iter().enumerate().map(move |(col, &passages)| {
                let index = row * self.cols.len() + col;
                Block { index, row, queries, passages, retained: index < self.retained_blocks }
            })
        })
    }

    /// The rows of blocks (query pieces).
    pub fn rows(&self) -> &[Piece] {
        &self.rows
    }

    /// How many chunks of each side and blocks keep their graphs.
    pub fn retained(&self) -> RetainCounts {
        let kept = |c: &[(Piece, bool)]| c.iter().filter(|(_, r)| *r).count();
        RetainCounts {
            query_chunks: kept(&self.query_chunks),
            passage_chunks: kept(&self.passage_chunks),
            head_blocks: self.retained_blocks.min(self.rows.len() * self.cols.len()),
        }
    }

    /// How the plan cuts the batch, as a step reports it.
    pub fn sizes(&self, closed_form_head: bool) -> crate::step::StepSizes {
        fn largest(pieces: impl Iterator<Item = Piece>) -> usize {
            pieces.map(|p| p.len).max().unwrap_or(0)
        }
        crate::step::StepSizes {
            num_queries: self.rows.iter().map(|r| r.len).sum(),
            num_passages: self.cols.iter().map(|c| c.len).sum(),
            query_chunks: self.query_chunks.len(),
            passage_chunks: self.passage_chunks.len(),
            head_blocks: self.rows.len() * self.cols.len(),
            chunk_items: (largest(self.query_chunks.iter().map(|c| c.0)), largest(self.passage_chunks.iter().map(|c| c.0))),
            block_pairs: (largest(self.rows.iter().copied()), largest(self.cols.iter().copied())),
            closed_form_head,
        }
    }
}
