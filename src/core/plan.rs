//! The pieces of one two-cache step, already cut: the encoder chunks of
//! each side and the grid of head blocks, each with its replay stream and
//! whether the first pass keeps its graph (**retained**: the second pass
//! backpropagates through it directly) or drops it (**recomputed**: the
//! second pass runs it again from the same random stream). Every pass of
//! the step walks the same `Plan`; nothing else cuts a batch.

use crate::core::batch::Chunk;
use crate::core::config::{MemoryConfig, Recompute, RetainCounts, StepConfig};
use crate::core::layout::{chunk_tokens_field, cut, Block, BlockGrid, ChunkRule, Layout, PerSide, Piece, Side, SIDES};
use crate::core::representation::Representation;
use crate::error::{GradCacheError, Result};

/// One encoder chunk of a side, as the plan cut it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPiece {
    /// Its replay stream index.
    pub stream: usize,
    /// Its positions in the side's chunking order (the batch's order, or
    /// the items sorted by length).
    pub piece: Piece,
    /// Whether the representation pass keeps its graph.
    pub retained: bool,
    /// The batch items at those positions, when the side is chunked in
    /// another order than the batch's.
    items: Option<Vec<usize>>,
}

impl ChunkPiece {
    /// Items in the chunk.
    pub fn len(&self) -> usize {
        self.piece.len
    }

    /// Whether the chunk is empty (never, in a plan).
    pub fn is_empty(&self) -> bool {
        self.piece.len == 0
    }

    /// The chunk's items, cut from the side's input.
    ///
    /// # Errors
    /// The input's errors.
    pub fn cut<C: Chunk>(&self, input: &C) -> Result<C> {
        match &self.items {
            Some(items) => input.select(items),
            None => input.chunk(self.piece.start, self.piece.len),
        }
    }

    /// The chunk's rows of a tensor over the whole side in the batch's
    /// order (representations or their gradients).
    ///
    /// # Errors
    /// libtorch errors.
    pub fn rows(&self, tensor: &tch::Tensor) -> Result<tch::Tensor> {
        match &self.items {
            Some(items) => {
                let index: Vec<i64> = items.iter().map(|&i| i as i64).collect();
                Ok(tensor.f_index_select(0, &tch::Tensor::from_slice(&index).f_to_device(tensor.device())?)?)
            }
            None => self.piece.rows(tensor),
        }
    }
}

/// The layout of one step (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Per side, the order items are chunked in (position → item), when
    /// chunks are cut from the items sorted by length.
    orders: PerSide<Option<Vec<usize>>>,
    /// Per side, the replay stream of the first chunk (non-zero for one
    /// process's share of a batch split across processes).
    first_streams: PerSide<usize>,
    /// Per side, each chunk and whether it is retained.
    chunks: PerSide<Vec<(Piece, bool)>>,
    grid: BlockGrid,
}

/// What `config.memory` retains; `None` for everything (the whole-batch
/// plan).
fn retain_counts(config: &StepConfig) -> Result<Option<RetainCounts>> {
    match config.memory {
        MemoryConfig::Budget { .. } | MemoryConfig::Auto { .. } => {
            Err(GradCacheError::InvalidConfig { field: "memory", reason: "a budget needs a cost model: use Plan::fit" })
        }
        MemoryConfig::Recompute { recompute: Recompute::All } => Ok(Some(RetainCounts::default())),
        MemoryConfig::Recompute { recompute: Recompute::None } => Ok(None),
        MemoryConfig::Retain { retain } => Ok(Some(retain)),
    }
}

/// The field that makes a side sorted by length (for errors).
fn sort_field(config: &StepConfig, side: Side) -> &'static str {
    if config.sort_by_length {
        "sort_by_length"
    } else {
        chunk_tokens_field(side)
    }
}

/// A side's item lengths where `config` sorts it ([`StepConfig::sorts`]),
/// `None` where it does not.
///
/// # Errors
/// [`GradCacheError::InvalidConfig`] when the side sorts and `input`
/// cannot report its items' lengths.
pub fn sort_lengths<C: Chunk>(config: &StepConfig, side: Side, input: &C) -> Result<Option<Vec<usize>>> {
    if !config.sorts(side) {
        return Ok(None);
    }
    let reason = "needs an input whose items have lengths (e.g. TokenBatch)";
    Ok(Some(input.lengths()?.ok_or(GradCacheError::InvalidConfig { field: sort_field(config, side), reason })?))
}

impl Plan {
    /// The plan of `config` for `n` queries and `m` passages, in the
    /// batch's order.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] from [`StepConfig::validate`], for
    /// a budget (it needs a cost model: [`crate::core::budget`]), or for a
    /// token budget (it needs the items' lengths: [`Plan::for_batch`]).
    pub fn new(config: &StepConfig, n: usize, m: usize) -> Result<Plan> {
        config.validate()?;
        if let Some(side) = [Side::Queries, Side::Passages].into_iter().find(|&s| matches!(config.chunk_rule(s), ChunkRule::Tokens(_))) {
            return Err(GradCacheError::InvalidConfig {
                field: chunk_tokens_field(side),
                reason: "a token budget needs the batch's lengths: use Plan::for_batch",
            });
        }
        let counts = match retain_counts(config)? {
            Some(counts) => counts,
            None => return Ok(Plan::whole(&config.layout, n, m)),
        };
        Ok(Plan::with_retained(&config.layout, n, m, counts))
    }

    /// The plan of `config` for this batch: its chunks (cut from the items
    /// sorted by length where the config sorts, by token budget where it
    /// has one) with what `config.memory` retains.
    ///
    /// # Errors
    /// As [`Plan::new`] (but a token budget is fine), and
    /// [`Plan::layout_of`].
    pub fn for_batch<Q: Chunk, P: Chunk>(config: &StepConfig, queries: &Q, passages: &P) -> Result<Plan> {
        config.validate()?;
        match retain_counts(config)? {
            Some(counts) => Ok(Plan::layout_of(config, queries, passages)?.retaining(counts)),
            None => {
                Ok(Plan::whole(&config.layout, queries.len(), passages.len()).with_orders(Plan::length_orders(config, queries, passages)?))
            }
        }
    }

    /// `config`'s chunks and blocks for this batch with nothing retained,
    /// in length order where the config sorts, cut by token budget where it
    /// has one: what the passes run over when called one by one.
    ///
    /// # Errors
    /// As [`sort_lengths`] and [`ChunkRule::cut`].
    pub fn layout_of<Q: Chunk, P: Chunk>(config: &StepConfig, queries: &Q, passages: &P) -> Result<Plan> {
        let lengths = PerSide::new(sort_lengths(config, Side::Queries, queries)?, sort_lengths(config, Side::Passages, passages)?);
        Plan::sharded(config, PerSide::new(&[queries.len()], &[passages.len()]), lengths.as_ref().map(|l| l.as_deref()))
    }

    /// The same plan with the first `counts` chunks of each side and
    /// blocks retained (the rest not).
    fn retaining(mut self, counts: RetainCounts) -> Plan {
        let keeps = PerSide::new(counts.query_chunks, counts.passage_chunks);
        for side in SIDES {
            let keep = keeps[side];
            for (i, (_, r)) in self.chunks[side].iter_mut().enumerate() {
                *r = i < keep;
            }
        }
        self.grid.retained = counts.head_blocks;
        self
    }

    /// The layout's pieces with the first `counts` of each kept.
    pub fn with_retained(layout: &Layout, n: usize, m: usize, counts: RetainCounts) -> Plan {
        let unretained = |total, size| cut(total, size).into_iter().map(|p| (p, false)).collect();
        Plan {
            orders: PerSide::default(),
            first_streams: PerSide::default(),
            chunks: PerSide::new(unretained(n, layout.query_chunk_size), unretained(m, layout.passage_chunk_size)),
            grid: layout.grid(n, m),
        }
        .retaining(counts)
    }

    /// Everything kept, each side's encoder work in one piece (the
    /// full-batch step's encoder layout: cutting a batch that is kept whole
    /// anyway only adds per-chunk overhead), the pair grid in `layout`'s
    /// blocks, all kept (one block over every pair is slower than cache-sized
    /// blocks for a head with hidden layers: measured in
    /// `docs/benchmarks.md`). Encoder streams as for chunk 0, so its dropout
    /// masks differ from a chunked step's: it is chosen only explicitly,
    /// by `{"recompute": "none"}`.
    pub fn whole(layout: &Layout, n: usize, m: usize) -> Plan {
        let all = RetainCounts { query_chunks: 1, passage_chunks: 1, head_blocks: usize::MAX };
        let one = n.max(m).max(1);
        Plan::with_retained(&Layout { query_chunk_size: one, passage_chunk_size: one, ..*layout }, n, m, all)
    }

    /// The layout of a batch split across processes: `shards[side][r]`
    /// items of that side on rank `r`, in rank order. Each shard is cut on
    /// its own by `config`'s rule ([`StepConfig::chunk_rule`]), from its
    /// own items sorted by length where the config sorts the side
    /// (`lengths[side]`: every item's length, in batch order), so a chunk
    /// never spans two processes and each process can cut its own;
    /// chunks are numbered, and so seeded, across the whole batch, so every
    /// chunk of every process has its own random stream. The pair grid is
    /// `config`'s blocks over the whole batch. Nothing is retained. One
    /// shard is the batch's own layout ([`Plan::layout_of`]).
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] when a side sorts and has no
    /// lengths, or lengths of another count than its shards add up to.
    pub fn sharded(config: &StepConfig, shards: PerSide<&[usize]>, lengths: PerSide<Option<&[usize]>>) -> Result<Plan> {
        let mut orders: PerSide<Option<Vec<usize>>> = PerSide::default();
        let mut chunks: PerSide<Vec<(Piece, bool)>> = PerSide::default();
        for side in SIDES {
            let total: usize = shards[side].iter().sum();
            let lengths = match (config.sorts(side), lengths[side]) {
                (false, _) => None,
                (true, Some(l)) if l.len() == total => Some(l),
                (true, _) => {
                    return Err(GradCacheError::InvalidConfig { field: sort_field(config, side), reason: "needs every item's length" })
                }
            };
            let mut order = Vec::with_capacity(total);
            let mut offset = 0;
            for &items in shards[side] {
                // Longest first; stable, so equal lengths keep batch order.
                let sorted: Option<Vec<usize>> = lengths.map(|l| {
                    let mut own: Vec<usize> = (offset..offset + items).collect();
                    own.sort_by_key(|&i| std::cmp::Reverse(l[i]));
                    own
                });
                let sorted_lengths: Option<Vec<usize>> = sorted.as_ref().zip(lengths).map(|(o, l)| o.iter().map(|&i| l[i]).collect());
                let pieces = config.chunk_rule(side).cut(side, items, sorted_lengths.as_deref())?;
                chunks[side].extend(pieces.into_iter().map(|p| (Piece { start: offset + p.start, len: p.len }, false)));
                order.extend(sorted.unwrap_or_default());
                offset += items;
            }
            orders[side] = lengths.map(|_| order);
        }
        let (n, m) = (shards.queries.iter().sum(), shards.passages.iter().sum());
        Ok(Plan { orders, first_streams: PerSide::default(), chunks, grid: config.layout.grid(n, m) })
    }

    /// Process `r`'s share of a [`Plan::sharded`] plan, cut like a batch of
    /// its own: the chunks inside `own[side]` (its rows of each side),
    /// renumbered from its first row, keeping the streams they have in the
    /// whole plan. The pair grid stays the whole batch's.
    ///
    /// # Panics
    /// When `own` reaches past the plan's items of a side (a caller's bug:
    /// the pieces come from the same shards as the plan).
    pub fn share(&self, own: PerSide<Piece>) -> Plan {
        let mut share = self.clone();
        for s in SIDES {
            let o = own[s];
            let inside = |p: &Piece| p.start >= o.start && p.start < o.start + o.len;
            share.first_streams[s] = self.first_streams[s] + self.chunks[s].iter().take_while(|(p, _)| !inside(p)).count();
            share.chunks[s] = self.chunks[s]
                .iter()
                .filter(|(p, _)| inside(p))
                .map(|&(p, r)| (Piece { start: p.start - o.start, len: p.len }, r))
                .collect();
            share.orders[s] = self.orders[s].as_ref().map(|order| order[o.start..o.start + o.len].iter().map(|&i| i - o.start).collect());
        }
        share
    }

    /// The same plan with each side's items chunked in `orders` (position
    /// → item; `None`: the batch's order), as [`Plan::length_orders`] gives.
    pub fn with_orders(mut self, orders: PerSide<Option<Vec<usize>>>) -> Plan {
        self.orders = orders;
        self
    }

    /// The same layout with nothing retained.
    pub fn without_retained(mut self) -> Plan {
        for side in SIDES {
            for (_, r) in &mut self.chunks[side] {
                *r = false;
            }
        }
        self.grid.retained = 0;
        self
    }

    /// The same plan with no head block retained (for a head with
    /// closed-form gradients, whose blocks never run a second time).
    pub fn without_retained_blocks(mut self) -> Plan {
        self.grid.retained = 0;
        self
    }

    /// For each side of `config`'s batch, the items sorted by length,
    /// longest first (stable), where the config sorts that side
    /// ([`StepConfig::sorts`]).
    ///
    /// # Errors
    /// As [`Plan::layout_of`].
    pub fn length_orders<Q: Chunk, P: Chunk>(config: &StepConfig, queries: &Q, passages: &P) -> Result<PerSide<Option<Vec<usize>>>> {
        Ok(Plan::layout_of(config, queries, passages)?.orders)
    }

    /// The encoder chunks of a side, cut: each with its stream, its items
    /// and whether it is retained.
    pub fn chunks(&self, side: Side) -> Vec<ChunkPiece> {
        let order = self.orders[side].as_ref();
        self.chunks[side]
            .iter()
            .enumerate()
            .map(|(i, &(piece, retained))| ChunkPiece {
                stream: self.first_streams[side] + i,
                piece,
                retained,
                items: order.map(|o| o[piece.start..piece.start + piece.len].to_vec()),
            })
            .collect()
    }

    /// Each chunk of a side as its piece and whether it is retained, without
    /// cutting anything: what a budget's estimate reads, many times a step.
    pub(crate) fn chunk_pieces(&self, side: Side) -> &[(Piece, bool)] {
        &self.chunks[side]
    }

    /// Marks chunk `i` of a side retained or not (what a budget keeps).
    pub(crate) fn set_chunk_retained(&mut self, side: Side, i: usize, retained: bool) {
        self.chunks[side][i].1 = retained;
    }

    /// Keeps the first `n` head blocks (what a budget keeps).
    pub(crate) fn set_retained_blocks(&mut self, n: usize) {
        self.grid.retained = n;
    }

    /// Puts a side's representations, concatenated chunk by chunk, back in
    /// the batch's order.
    ///
    /// # Errors
    /// libtorch errors.
    pub fn in_batch_order(&self, side: Side, chunked: Representation) -> Result<Representation> {
        match &self.orders[side] {
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

    /// The same plan with the pair grid's passage columns cut in pieces of
    /// `columns` (rows and what is retained unchanged): the blocks
    /// [`StepConfig::head_block_flops`] sizes once the representations'
    /// shapes are known.
    pub fn with_block_columns(mut self, columns: usize) -> Plan {
        let m = self.grid.cols.iter().map(|c| c.len).sum();
        self.grid.cols = cut(m, columns);
        self
    }

    /// The grid of head blocks.
    pub fn grid(&self) -> &BlockGrid {
        &self.grid
    }

    /// Every block of the pair grid, row by row.
    pub fn blocks(&self) -> impl Iterator<Item = Block> + '_ {
        self.grid.blocks()
    }

    /// How many chunks of each side and blocks keep their graphs.
    pub fn retained(&self) -> RetainCounts {
        let kept = |c: &[(Piece, bool)]| c.iter().filter(|(_, r)| *r).count();
        RetainCounts {
            query_chunks: kept(&self.chunks.queries),
            passage_chunks: kept(&self.chunks.passages),
            head_blocks: self.grid.retained.min(self.grid.len()),
        }
    }

    /// How the plan cuts the batch, as a step reports it.
    pub fn sizes(&self, closed_form_head: bool) -> crate::core::output::StepSizes {
        fn largest(pieces: impl Iterator<Item = Piece>) -> usize {
            pieces.map(|p| p.len).max().unwrap_or(0)
        }
        let (q, p) = (&self.chunks.queries, &self.chunks.passages);
        crate::core::output::StepSizes {
            num_queries: self.grid.rows.iter().map(|r| r.len).sum(),
            num_passages: self.grid.cols.iter().map(|c| c.len).sum(),
            query_chunks: q.len(),
            passage_chunks: p.len(),
            head_blocks: self.grid.len(),
            chunk_items: (largest(q.iter().map(|c| c.0)), largest(p.iter().map(|c| c.0))),
            block_pairs: (largest(self.grid.rows.iter().copied()), largest(self.grid.cols.iter().copied())),
            closed_form_head,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_their_retained_prefix_and_streams() {
        let kept = Plan::with_retained(&Layout::from_chunk_size(2), 5, 5, RetainCounts { query_chunks: 2, ..Default::default() });
        assert_eq!(
            kept.chunk_pieces(Side::Queries).iter().map(|&(p, r)| (p.start, p.len, r)).collect::<Vec<_>>(),
            [(0, 2, true), (2, 2, true), (4, 1, false)]
        );
        // Rank 1 of [6, 5] queries: its chunks follow rank 0's three.
        let config = StepConfig { layout: Layout::from_chunk_size(2), ..StepConfig::default() };
        let sharded = Plan::sharded(&config, PerSide::new(&[6, 5], &[5]), PerSide::default()).unwrap();
        let plan = sharded
            .share(PerSide::new(Piece { start: 6, len: 5 }, Piece { start: 0, len: 5 }))
            .retaining(RetainCounts { query_chunks: 1, ..Default::default() });
        let q = plan.chunks(Side::Queries);
        assert_eq!(q.iter().map(|c| (c.stream, c.retained)).collect::<Vec<_>>(), [(3, true), (4, false), (5, false)]);
    }

    #[test]
    fn a_sorted_side_hands_out_its_items_and_puts_rows_back() {
        let plan = Plan::with_retained(&Layout::from_chunk_size(2), 3, 1, RetainCounts::default())
            .with_orders(PerSide::new(Some(vec![2, 0, 1]), None));
        let chunks = plan.chunks(Side::Queries);
        let rows = tch::Tensor::from_slice(&[10i64, 11, 12]);
        assert_eq!(Vec::<i64>::try_from(chunks[0].rows(&rows).unwrap()).unwrap(), [12, 10]);
        assert_eq!(Vec::<i64>::try_from(chunks[1].rows(&rows).unwrap()).unwrap(), [11]);
        // Representations concatenated in chunk order come back in batch order.
        let chunked = Representation::vector(tch::Tensor::from_slice(&[12.0f32, 10.0, 11.0]).view([3, 1])).unwrap();
        let back = plan.in_batch_order(Side::Queries, chunked).unwrap();
        assert_eq!(Vec::<f32>::try_from(back.tensor().view([3])).unwrap(), [10.0, 11.0, 12.0]);
    }
}
