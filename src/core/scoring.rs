//! Scoring a grid of pairs block by block: the one routine behind the
//! step's score pass, the full-batch reference, the distributed step's
//! share, and inference ([`crate::app::scorer::Scorer`], evaluation).
//! It knows nothing of training: a caller that replays randomness seeds
//! each block through `enter`.

use tch::Tensor;

use crate::core::balance::GateTotals;
use crate::core::head::ScoringHead;
use crate::core::layout::{Block, BlockGrid};
use crate::core::representation::Representation;
use crate::error::{GradCacheError, Result};
use crate::runtime::precision::Precision;
use crate::util::all_finite;

/// How a forward pass runs: train mode (dropout) and autocast precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// Train mode (dropout on).
    pub train: bool,
    /// Autocast precision.
    pub precision: Precision,
}

impl Forward {
    /// Eval mode (no dropout) at `precision`: inference.
    pub fn eval(precision: Precision) -> Forward {
        Forward { train: false, precision }
    }
}

/// A head block whose graph the score pass kept: its scores and its input
/// leaves, for the head pass to backpropagate through.
#[derive(Debug)]
pub struct KeptBlock {
    /// The block's scores, with graph.
    pub scores: Tensor,
    /// The query rows, a leaf.
    pub queries: Representation,
    /// The passage columns, a leaf.
    pub passages: Representation,
    /// The block's gates, with graph, for a head with a load-balancing
    /// term ([`ScoringHead::score_gated`]).
    pub gates: Option<Tensor>,
}

/// A block's scores and, for a head with a load-balancing term
/// ([`ScoringHead::balance_weight`] above 0), its pairs' gates.
///
/// # Shapes
/// `scores`: `[a, b]`; `gates`: `[a, b, K]`.
#[derive(Debug)]
pub struct BlockScores {
    /// The block's scores.
    pub scores: Tensor,
    /// The pairs' gate weights.
    pub gates: Option<Tensor>,
}

/// The score matrix of a grid of blocks, the graphs of its retained blocks,
/// and the totals of its gates.
///
/// # Shapes
/// `matrix`: `[N, M]`.
#[derive(Debug)]
pub struct ScoredGrid {
    /// `S`.
    pub matrix: Tensor,
    /// Per block, its graph when retained (`None` for the others).
    pub kept: Vec<Option<KeptBlock>>,
    /// The gates' totals over every block, for a head with a
    /// load-balancing term (with graph when scored with graph).
    pub gates: Option<GateTotals>,
}

/// Scores one block: `head` over the block's query rows of `u` and passage
/// columns of `v`, its shape checked; with the gates of a head that has a
/// load-balancing term.
///
/// # Shapes
/// Returns `[block queries, block passages]` scores.
///
/// # Errors
/// Head errors; [`GradCacheError::HeadShape`].
pub fn score_block(head: &dyn ScoringHead, u: &Representation, v: &Representation, fwd: Forward) -> Result<BlockScores> {
    let (scores, gates) = fwd.precision.run(|| match head.balance_weight() > 0.0 {
        true => head.score_gated(u, v, fwd.train),
        false => Ok((head.score(u, v, fwd.train)?, None)),
    })?;
    if scores.size() != [u.len() as i64, v.len() as i64] {
        return Err(GradCacheError::HeadShape { queries: u.len(), passages: v.len(), got: scores.size() });
    }
    if let Some(g) = &gates {
        if g.dim() != 3 || g.size()[..2] != scores.size()[..] {
            return Err(GradCacheError::Shape {
                what: "a gated head's gates",
                expected: "[a, b, K] over the block's pairs",
                got: g.size(),
            });
        }
    }
    Ok(BlockScores { scores, gates })
}

/// Scores every block of `grid` over `queries × passages` (with or without
/// graph, as the caller's grad mode says), calling `enter(block)` before
/// each, assembles `S` and sums the gates of a gated head. A retained block is scored with graph on fresh
/// input leaves whatever the mode, kept (returned per block, `None` for the
/// others), and enters `S` detached.
///
/// # Shapes
/// `queries`: `N` items, `passages`: `M`; returns `S` `[N, M]`.
///
/// # Errors
/// Head errors; [`GradCacheError::HeadShape`].
pub fn score_grid(
    head: &dyn ScoringHead,
    queries: &Representation,
    passages: &Representation,
    grid: &BlockGrid,
    fwd: Forward,
    enter: &dyn Fn(&Block),
) -> Result<ScoredGrid> {
    let mut rows: Vec<Vec<Tensor>> = grid.rows.iter().map(|_| Vec::new()).collect();
    let mut kept = Vec::new();
    let mut totals: Option<GateTotals> = None;
    for block in grid.blocks() {
        let u = queries.narrow(block.queries.start, block.queries.len)?;
        let v = passages.narrow(block.passages.start, block.passages.len)?;
        enter(&block);
        if block.retained {
            let (u, v) = (u.detached_leaf()?, v.detached_leaf()?);
            let s = tch::with_grad(|| score_block(head, &u, &v, fwd))?;
            tch::no_grad(|| GateTotals::accumulate(&mut totals, s.gates.as_ref()))?;
            rows[block.row].push(s.scores.f_detach()?);
            kept.push(Some(KeptBlock { scores: s.scores, queries: u, passages: v, gates: s.gates }));
        } else {
            let s = score_block(head, &u, &v, fwd)?;
            GateTotals::accumulate(&mut totals, s.gates.as_ref())?;
            rows[block.row].push(s.scores);
            kept.push(None);
        }
    }
    let rows = rows.iter().map(|r| Tensor::f_cat(r, 1)).collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(ScoredGrid { matrix: Tensor::f_cat(&rows, 0)?, kept, gates: totals })
}

/// Scores `queries × passages` for ranking (inference: evaluation,
/// reranking, serving), block by block over `grid` in eval mode: the head in
/// float32 over float32 copies of the representations, whatever precision
/// encoded them. A head run under bf16 autocast returns scores on bf16's
/// grid (8 significant bits: steps of 0.06 at a score of 10), which ties
/// candidates, and a tie is then broken by corpus order: on WordNet dev,
/// whose senses are listed most frequent first, 172 of 300 queries had a
/// tie in their top 10 and the reranked MRR@10 rose from 0.593 to 0.602 by
/// that order alone. The encoders, where the time goes, keep the precision.
///
/// # Shapes
/// `queries`: `N` items, `passages`: `M`; returns `[N, M]` float32.
///
/// # Errors
/// Head errors; [`GradCacheError::HeadShape`].
pub fn score_for_ranking(head: &dyn ScoringHead, queries: &Representation, passages: &Representation, grid: &BlockGrid) -> Result<Tensor> {
    let (u, v) = (queries.to_float()?, passages.to_float()?);
    Ok(tch::no_grad(|| score_grid(head, &u, &v, grid, Forward::eval(Precision::F32), &|_| ()))?.matrix)
}

/// `S` checked for NaN and infinity.
///
/// # Errors
/// [`GradCacheError::NonFiniteScores`] naming the first block of `grid`
/// that holds one.
pub fn check_finite(scores: &Tensor, grid: &BlockGrid) -> Result<()> {
    if all_finite(scores)? {
        return Ok(());
    }
    for b in grid.blocks() {
        if !all_finite(&b.of(scores)?)? {
            return Err(GradCacheError::NonFiniteScores {
                queries: b.queries.start..b.queries.start + b.queries.len,
                passages: b.passages.start..b.passages.start + b.passages.len,
            });
        }
    }
    let (n, m) = (scores.size()[0] as usize, scores.size()[1] as usize);
    Err(GradCacheError::NonFiniteScores { queries: 0..n, passages: 0..m })
}

/// Encodes `input` in eval mode, `chunk_size` items at a time, and puts the
/// chunks together: inference's encoder loop (no graph is kept when the
/// caller runs it under `tch::no_grad`).
///
/// # Shapes
/// `[n, d]` vectors or `[n, L, d]` tokens with mask `[n, L]`.
///
/// # Errors
/// Encoder and input errors; [`GradCacheError::EncoderLength`].
pub fn encode_chunks<E: crate::core::encoder::Encoder + ?Sized>(
    encoder: &E,
    input: &E::Input,
    chunk_size: usize,
    side: crate::core::layout::Side,
    precision: Precision,
) -> Result<Representation> {
    use crate::core::batch::Chunk;
    let parts = crate::core::layout::cut(input.len(), chunk_size)
        .into_iter()
        .map(|piece| {
            let rep = precision.run(|| encoder.encode(&input.chunk(piece.start, piece.len)?, false))?;
            if rep.len() != piece.len {
                return Err(GradCacheError::EncoderLength { side, expected: piece.len, got: rep.len() });
            }
            Ok(rep)
        })
        .collect::<Result<Vec<_>>>()?;
    Representation::cat(&parts)
}
