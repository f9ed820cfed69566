//! How a batch is cut: the encoder chunk sizes and the head block sizes,
//! one type for the training step ([`crate::core::config::StepConfig`]) and
//! for a model's scoring ([`crate::app::scorer::ModelConfig`]), and the
//! pieces they cut.

use serde::{Deserialize, Serialize};

pub use crate::error::Side;

/// Both sides of a batch.
pub const SIDES: [Side; 2] = [Side::Queries, Side::Passages];

/// One value per side of a batch (each side's chunks, its order, a flag),
/// read and written by [`Side`]: `chunks[side]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerSide<T> {
    /// The queries' value.
    pub queries: T,
    /// The passages' value.
    pub passages: T,
}

impl<T> PerSide<T> {
    /// Both values.
    pub const fn new(queries: T, passages: T) -> Self {
        PerSide { queries, passages }
    }

    /// Each side's value made by `f` from its side.
    pub fn from_fn(mut f: impl FnMut(Side) -> T) -> Self {
        PerSide { queries: f(Side::Queries), passages: f(Side::Passages) }
    }

    /// Each value mapped by `f`.
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> PerSide<U> {
        PerSide { queries: f(self.queries), passages: f(self.passages) }
    }

    /// References to both values.
    pub fn as_ref(&self) -> PerSide<&T> {
        PerSide { queries: &self.queries, passages: &self.passages }
    }
}

impl<T> std::ops::Index<Side> for PerSide<T> {
    type Output = T;
    fn index(&self, side: Side) -> &T {
        match side {
            Side::Queries => &self.queries,
            Side::Passages => &self.passages,
        }
    }
}

impl<T> std::ops::IndexMut<Side> for PerSide<T> {
    fn index_mut(&mut self, side: Side) -> &mut T {
        match side {
            Side::Queries => &mut self.queries,
            Side::Passages => &mut self.passages,
        }
    }
}
use crate::error::{GradCacheError, Result};

/// Chunk and block sizes. Chunk sizes bound the encoder activations held at
/// once, block sizes the head activations; they are set independently, and
/// any batch size works (the last chunk or block is shorter).
///
/// JSON: the four fields, each optional (missing ones take the defaults),
/// written flat into the configs that hold a layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Layout {
    /// Queries encoded together in one encoder chunk.
    pub query_chunk_size: usize,
    /// Passages encoded together in one encoder chunk.
    pub passage_chunk_size: usize,
    /// Query rows in one head block of the pair grid.
    pub head_block_queries: usize,
    /// Passage columns in one head block of the pair grid.
    pub head_block_passages: usize,
}

/// The library's default layout: chunks of 32, blocks of 32 × 128 pairs.
impl Default for Layout {
    fn default() -> Self {
        Layout { query_chunk_size: 32, passage_chunk_size: 32, head_block_queries: 32, head_block_passages: 128 }
    }
}

/// Passage columns of a head block per item of an encoder chunk, in the
/// layout one size gives ([`Layout::from_chunk_size`]): a block of
/// `v × 4v` pairs for chunks of `v`.
pub const BLOCK_PASSAGES_PER_CHUNK_ITEM: usize = 4;

impl Layout {
    /// The layout one number gives (`gradcache train --chunk-size v`):
    /// chunks of `v` on both sides, head blocks of `v` queries ×
    /// [`BLOCK_PASSAGES_PER_CHUNK_ITEM`]` · v` passages.
    pub fn from_chunk_size(v: usize) -> Layout {
        Layout { query_chunk_size: v, passage_chunk_size: v, head_block_queries: v, head_block_passages: BLOCK_PASSAGES_PER_CHUNK_ITEM * v }
    }

    /// Every size `n`: with `n` at least the batch, each side is one chunk
    /// and the grid one block.
    pub fn whole(n: usize) -> Layout {
        Layout { query_chunk_size: n, passage_chunk_size: n, head_block_queries: n, head_block_passages: n }
    }

    /// Checks that every size is at least 1.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] naming the first zero size.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("query_chunk_size", self.query_chunk_size),
            ("passage_chunk_size", self.passage_chunk_size),
            ("head_block_queries", self.head_block_queries),
            ("head_block_passages", self.head_block_passages),
        ];
        match sizes.iter().find(|(_, v)| *v == 0) {
            Some(&(field, _)) => Err(GradCacheError::InvalidConfig { field, reason: "must be at least 1" }),
            None => Ok(()),
        }
    }

    /// The chunk size of a side.
    pub fn chunk_size(&self, side: Side) -> usize {
        match side {
            Side::Queries => self.query_chunk_size,
            Side::Passages => self.passage_chunk_size,
        }
    }

    /// The grid of head blocks over `n` queries × `m` passages, none
    /// retained.
    pub fn grid(&self, n: usize, m: usize) -> BlockGrid {
        BlockGrid { rows: cut(n, self.head_block_queries), cols: cut(m, self.head_block_passages), retained: 0 }
    }
}

/// How a side is cut into encoder chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkRule {
    /// So many items per chunk (the last one shorter).
    Items(usize),
    /// Items taken in order, which must be sorted by length (longest
    /// first), while the chunk's padded tokens (its items × its first,
    /// longest, item's length) stay within this many; a chunk holds at
    /// least one item, so an item longer than the budget is a chunk alone.
    Tokens(usize),
}

/// The `StepConfig` field that holds a side's token budget, as errors
/// name it.
pub fn chunk_tokens_field(side: Side) -> &'static str {
    match side {
        Side::Queries => "query_chunk_tokens",
        Side::Passages => "passage_chunk_tokens",
    }
}

impl ChunkRule {
    /// The pieces of `side`, of `total` items; `lengths` are the items'
    /// lengths in the order they are chunked (needed by
    /// [`ChunkRule::Tokens`]).
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] for a token budget without
    /// lengths, or with lengths not sorted longest first.
    pub fn cut(&self, side: Side, total: usize, lengths: Option<&[usize]>) -> Result<Vec<Piece>> {
        let budget = match *self {
            ChunkRule::Items(size) => return Ok(cut(total, size)),
            ChunkRule::Tokens(budget) => budget,
        };
        let field = chunk_tokens_field(side);
        let lengths = lengths.ok_or(GradCacheError::InvalidConfig {
            field,
            reason: "a token budget needs an input whose items have lengths (e.g. TokenBatch)",
        })?;
        if lengths.len() != total || lengths.windows(2).any(|w| w[0] < w[1]) {
            return Err(GradCacheError::InvalidConfig { field, reason: "a token budget cuts items sorted by length, longest first" });
        }
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < total {
            let len = (budget / lengths[start].max(1)).clamp(1, total - start);
            pieces.push(Piece { start, len });
            start += len;
        }
        Ok(pieces)
    }
}

/// One contiguous run of items of a side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// First item.
    pub start: usize,
    /// Items.
    pub len: usize,
}

impl Piece {
    /// The rows of this piece of a tensor over the whole side.
    ///
    /// # Errors
    /// libtorch errors.
    pub fn rows(&self, tensor: &tch::Tensor) -> Result<tch::Tensor> {
        Ok(tensor.f_narrow(0, self.start as i64, self.len as i64)?)
    }
}

/// `total` items cut into pieces of `size` (the last one shorter).
pub fn cut(total: usize, size: usize) -> Vec<Piece> {
    let size = size.max(1);
    (0..total).step_by(size).map(|start| Piece { start, len: size.min(total - start) }).collect()
}

/// One block of the pair grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Its position, row-major over the grid (its replay stream).
    pub index: usize,
    /// Its row of blocks.
    pub row: usize,
    /// Query rows.
    pub queries: Piece,
    /// Passage columns.
    pub passages: Piece,
    /// Whether the score pass keeps its graph for the head pass.
    pub retained: bool,
}

impl Block {
    /// The block's part of a `[N, M]` matrix (scores, `W`).
    ///
    /// # Errors
    /// libtorch errors.
    pub fn of(&self, matrix: &tch::Tensor) -> Result<tch::Tensor> {
        Ok(self.queries.rows(matrix)?.f_narrow(1, self.passages.start as i64, self.passages.len as i64)?)
    }
}

/// The blocks of an `N × M` pair grid: rows of query pieces × columns of
/// passage pieces, the first `retained` blocks (row-major) kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockGrid {
    /// Query pieces, one per row of blocks.
    pub rows: Vec<Piece>,
    /// Passage pieces, one per column of blocks.
    pub cols: Vec<Piece>,
    /// How many blocks, in row-major order, keep their graph.
    pub retained: usize,
}

impl BlockGrid {
    /// Every block, row by row.
    pub fn blocks(&self) -> impl Iterator<Item = Block> + '_ {
        self.rows.iter().enumerate().flat_map(move |(row, &queries)| {
            self.cols.iter().enumerate().map(move |(col, &passages)| {
                let index = row * self.cols.len() + col;
                Block { index, row, queries, passages, retained: index < self.retained }
            })
        })
    }

    /// Blocks in the grid.
    pub fn len(&self) -> usize {
        self.rows.len() * self.cols.len()
    }

    /// Whether the grid has no block.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_items_with_a_shorter_last_one() {
        let pieces: Vec<(usize, usize)> = cut(7, 3).iter().map(|p| (p.start, p.len)).collect();
        assert_eq!(pieces, [(0, 3), (3, 3), (6, 1)]);
        assert!(cut(0, 3).is_empty());
    }

    #[test]
    fn a_token_budget_cuts_chunks_whose_padded_tokens_fit() {
        let lengths = [40, 30, 30, 12, 10, 10, 9, 3, 3];
        let pieces: Vec<(usize, usize)> =
            ChunkRule::Tokens(64).cut(Side::Queries, 9, Some(&lengths)).unwrap().iter().map(|p| (p.start, p.len)).collect();
        // 40 alone (2 × 40 > 64), then 2 × 30 = 60, then 5 × 12 = 60, then
        // the last two (the budget would take 21 of length 3).
        assert_eq!(pieces, [(0, 1), (1, 2), (3, 5), (8, 1)]);
        for (start, len) in pieces {
            assert!(len == 1 || len * lengths[start] <= 64);
        }
        // An item longer than the budget is a chunk of its own.
        assert_eq!(ChunkRule::Tokens(8).cut(Side::Queries, 2, Some(&[20, 9])).unwrap().len(), 2);
        assert!(ChunkRule::Tokens(8).cut(Side::Passages, 2, Some(&[9, 20])).is_err(), "unsorted lengths");
        assert!(ChunkRule::Tokens(8).cut(Side::Queries, 2, None).is_err());
        assert_eq!(ChunkRule::Items(4).cut(Side::Passages, 9, None).unwrap(), cut(9, 4));
    }

    #[test]
    fn a_grid_numbers_its_blocks_row_by_row_and_retains_a_prefix() {
        let mut grid = Layout { head_block_queries: 2, head_block_passages: 3, ..Layout::default() }.grid(3, 5);
        grid.retained = 3;
        let blocks: Vec<(usize, usize, usize, usize, bool)> =
            grid.blocks().map(|b| (b.index, b.row, b.queries.start, b.passages.start, b.retained)).collect();
        assert_eq!(blocks, [(0, 0, 0, 0, true), (1, 0, 0, 3, true), (2, 1, 2, 0, true), (3, 1, 2, 3, false)]);
    }
}
