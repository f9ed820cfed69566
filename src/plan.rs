//! The layout of one two-cache step as one object: the encoder chunks of
//! each side, the grid of head blocks, the replay stream of each (its
//! index), and for each chunk and block whether the first pass keeps its
//! graph (**retained**: the second pass backpropagates through it directly)
//! or drops it (**recomputed**: the second pass runs it again from the same
//! random stream). Every pass of the step reads the same `Plan`.

use serde::{Deserialize, Serialize};

use crate::config::{pieces, StepConfig};
use crate::error::{GradCacheError, Result};

/// How much of the first passes' graphs a step keeps.
///
/// JSON: `{"recompute": "all"}` (the default: flat memory, every chunk and
/// block runs twice), `{"recompute": "none"}` (every graph kept: the cost of
/// the full-batch step), `{"retain": {"query_chunks": 2,
/// "passage_chunks": 4, "head_blocks": 8}}` (the first so many of each kept,
/// the rest recomputed), or `{"budget_mb": 500}`: keep what fits in that
/// many MB of retained activations, as measured by a probe on the first
/// step ([`CostModel`]), query chunks first, then passage chunks, then head
/// blocks.
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
    /// Keep what fits in a budget for retained activations.
    Budget {
        /// Megabytes (2^20 bytes) of retained graphs at most.
        budget_mb: f64,
    },
}

/// Activation memory of a retained graph, measured: bytes per item of an
/// encoder chunk (its graph and output), and per pair of a head block.
///
/// Measured on the first budgeted step by encoding the first chunk of each
/// side and scoring the first block with graph, and reading the allocator's
/// bytes in use before and after (glibc's `mallinfo2` on the CPU). It
/// assumes later chunks cost alike per item: texts much longer than the
/// first chunk's cost more than estimated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    /// Bytes per query of a query chunk's graph.
    pub query_item_bytes: f64,
    /// Bytes per passage of a passage chunk's graph.
    pub passage_item_bytes: f64,
    /// Bytes per pair of a head block's graph.
    pub pair_bytes: f64,
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
    query_chunks: Vec<(Piece, bool)>,
    passage_chunks: Vec<(Piece, bool)>,
    rows: Vec<Piece>,
    cols: Vec<Piece>,
    retained_blocks: usize,
}

fn cut(total: usize, size: usize, keep: usize) -> Vec<(Piece, bool)> {
    pieces(total, size).enumerate().map(|(i, (start, len))| (Piece { start, len }, i < keep)).collect()
}

impl Plan {
    /// The plan of `config` for `n` queries and `m` passages.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] from [`StepConfig::validate`].
    pub fn new(config: &StepConfig, n: usize, m: usize) -> Result<Plan> {
        config.validate()?;
        let counts = match config.memory {
            MemoryConfig::Budget { .. } => {
                return Err(GradCacheError::InvalidConfig { field: "memory", reason: "a budget needs a cost model: use Plan::within_budget" })
            }
            MemoryConfig::Recompute { recompute: Recompute::All } => RetainCounts::default(),
            MemoryConfig::Recompute { recompute: Recompute::None } => {
                RetainCounts { query_chunks: usize::MAX, passage_chunks: usize::MAX, head_blocks: usize::MAX }
            }
            MemoryConfig::Retain { retain } => retain,
        };
        Ok(Plan::with_retained(config, n, m, counts))
    }

    /// The layout of `config` keeping, in order, query chunks, passage
    /// chunks and head blocks while their estimated cost stays within
    /// `budget_bytes`; returns the plan and its estimate.
    pub fn within_budget(config: &StepConfig, n: usize, m: usize, costs: &CostModel, budget_bytes: f64) -> (Plan, f64) {
        let mut plan = Plan::with_retained(config, n, m, RetainCounts::default());
        let mut used = 0.0;
        let mut fits = |cost: f64| {
            let ok = used + cost <= budget_bytes;
            if ok {
                used += cost;
            }
            ok
        };
        for (piece, retained) in plan.query_chunks.iter_mut() {
            *retained = fits(costs.query_item_bytes * piece.len as f64);
            if !*retained {
                break;
            }
        }
        if plan.query_chunks.iter().all(|(_, r)| *r) {
            for (piece, retained) in plan.passage_chunks.iter_mut() {
                *retained = fits(costs.passage_item_bytes * piece.len as f64);
                if !*retained {
                    break;
                }
            }
        }
        if plan.passage_chunks.iter().all(|(_, r)| *r) && plan.query_chunks.iter().all(|(_, r)| *r) {
            let blocks: Vec<Block> = plan.blocks().collect();
            plan.retained_blocks = blocks.iter().take_while(|b| fits(costs.pair_bytes * (b.queries.len * b.passages.len) as f64)).count();
        }
        (plan, used)
    }

    /// The layout of `config` with the first `counts` of each kept.
    pub fn with_retained(config: &StepConfig, n: usize, m: usize, counts: RetainCounts) -> Plan {
        Plan {
            query_chunks: cut(n, config.query_chunk_size, counts.query_chunks),
            passage_chunks: cut(m, config.passage_chunk_size, counts.passage_chunks),
            rows: pieces(n, config.head_block_queries).map(|(start, len)| Piece { start, len }).collect(),
            cols: pieces(m, config.head_block_passages).map(|(start, len)| Piece { start, len }).collect(),
            retained_blocks: counts.head_blocks,
        }
    }

    /// The encoder chunks of a side and whether each is retained; a chunk's
    /// replay stream is its position.
    pub fn chunks(&self, side: crate::error::Side) -> &[(Piece, bool)] {
        match side {
            crate::error::Side::Queries => &self.query_chunks,
            crate::error::Side::Passages => &self.passage_chunks,
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
        crate::step::StepSizes {
            num_queries: self.rows.iter().map(|r| r.len).sum(),
            num_passages: self.cols.iter().map(|c| c.len).sum(),
            query_chunks: self.query_chunks.len(),
            passage_chunks: self.passage_chunks.len(),
            head_blocks: self.rows.len() * self.cols.len(),
            closed_form_head,
        }
    }
}
