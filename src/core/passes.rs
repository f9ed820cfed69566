//! The loops the step, the full-batch reference and the distributed step
//! share. Encoder side: encode every chunk of a plan, and backpropagate a
//! gradient over the side through the kept chunks (`backprop_kept`) and
//! the recomputed ones (`backprop_recomputed`). Head side, the same split
//! over blocks of pairs (`backprop_kept_blocks`,
//! `backprop_recomputed_blocks`) summed into ∂L/∂U and ∂L/∂V
//! (`GradientSums`). Also the one-call backward of a sum of `y ⊙ g`
//! terms.

use tch::{Kind, Tensor};

use crate::core::balance::Balance;
use crate::core::encoder::Encoder;
use crate::core::head::{RepresentationGradients, ScoringHead};
use crate::core::layout::{PerSide, Piece, Side, SIDES};
use crate::core::plan::{ChunkPiece, Plan};
use crate::core::replay::{ReplayLog, ReplaySeeds};
use crate::core::representation::Representation;
use crate::core::scoring::{score_block, Forward, KeptBlock};
use crate::error::{GradCacheError, ReplayStage, Result};
use crate::runtime::precision::Precision;
use crate::util::accumulation_kind;

/// A side's representations and, per chunk, the graph the representation
/// pass kept (`None` for a recomputed chunk).
pub(crate) type Encoded = (Representation, Vec<Option<Representation>>);

/// The replayed pieces of a side: its encoder chunks.
fn stage_of(side: Side) -> ReplayStage {
    match side {
        Side::Queries => ReplayStage::QueryChunk,
        Side::Passages => ReplayStage::PassageChunk,
    }
}

/// Encodes one chunk after seeding its random stream; checks its length.
///
/// # Errors
/// Encoder and input errors; [`GradCacheError::EncoderLength`].
pub(crate) fn encode_chunk<E: Encoder + ?Sized>(
    encoder: &E,
    input: &E::Input,
    chunk: &ChunkPiece,
    side: Side,
    seeds: &ReplaySeeds,
    fwd: Forward,
) -> Result<Representation> {
    let items = chunk.cut(input)?;
    seeds.enter(stage_of(side), chunk.stream);
    let rep = fwd.precision.run(|| encoder.encode(&items, fwd.train))?;
    if rep.len() != chunk.len() {
        return Err(GradCacheError::EncoderLength { side, expected: chunk.len(), got: rep.len() });
    }
    Ok(rep)
}

/// Encodes every chunk of a side of `plan` (with or without graph, as the
/// caller's grad mode says) and puts them together in the batch's order; a
/// retained chunk is encoded with graph whatever the mode, kept, and enters
/// the whole detached.
///
/// # Errors
/// As [`encode_chunk`].
pub(crate) fn encode_all<E: Encoder + ?Sized>(
    encoder: &E,
    input: &E::Input,
    plan: &Plan,
    side: Side,
    seeds: &ReplaySeeds,
    fwd: Forward,
) -> Result<Encoded> {
    let mut parts = Vec::new();
    let mut kept = Vec::new();
    for chunk in plan.chunks(side) {
        if chunk.retained {
            let rep = tch::with_grad(|| encode_chunk(encoder, input, &chunk, side, seeds, fwd))?;
            parts.push(rep.detach()?);
            kept.push(Some(rep));
        } else {
            parts.push(encode_chunk(encoder, input, &chunk, side, seeds, fwd)?);
            kept.push(None);
        }
    }
    Ok((plan.in_batch_order(side, Representation::cat(&parts)?)?, kept))
}

/// How a backward pass redoes the pieces it did not keep: the plan that
/// cut them, their random streams, the forward settings, and the replay
/// check's tolerance (`None`: no check).
#[derive(Clone, Copy)]
pub(crate) struct Rerun<'a> {
    pub plan: &'a Plan,
    pub seeds: &'a ReplaySeeds,
    pub fwd: Forward,
    pub replay: Option<f64>,
}

/// Backpropagates each recomputed chunk's rows of `grads` (over the whole
/// side) through a re-encoding from the same random stream, checked
/// against the first pass's `cached` representations; retained chunks are
/// left to [`backprop_kept`].
///
/// # Errors
/// Encoder errors; [`GradCacheError::ReplayMismatch`] (when checked).
pub(crate) fn backprop_recomputed<E: Encoder + ?Sized>(
    encoder: &E,
    input: &E::Input,
    side: Side,
    cached: &Representation,
    grads: &Tensor,
    how: Rerun,
) -> Result<()> {
    let mut log = ReplayLog::new(stage_of(side), how.replay.is_some());
    for chunk in how.plan.chunks(side).iter().filter(|c| !c.retained) {
        let rep = tch::with_grad(|| encode_chunk(encoder, input, chunk, side, how.seeds, how.fwd))?;
        let y = rep.tensor();
        log.record(y, &Representation::narrow_tokens_like(&chunk.rows(cached.tensor())?, y)?)?;
        backward_pairs(vec![(y.shallow_clone(), Representation::narrow_tokens_like(&chunk.rows(grads)?, y)?)])?;
    }
    log.finish(how.replay.unwrap_or(0.0))
}

/// Backpropagates the retained chunks of every listed side through the
/// graphs the representation pass kept, all in one backward call (as the
/// full-batch step does), which frees them before anything is recomputed.
///
/// # Errors
/// libtorch errors.
pub(crate) fn backprop_kept(plan: &Plan, mut kept: PerSide<Vec<Option<Representation>>>, grads: PerSide<&Tensor>) -> Result<()> {
    let mut pairs = Vec::new();
    for side in SIDES {
        for (chunk, rep) in plan.chunks(side).iter().zip(std::mem::take(&mut kept[side])) {
            let Some(rep) = rep else { continue };
            let y = rep.tensor();
            pairs.push((y.shallow_clone(), Representation::narrow_tokens_like(&chunk.rows(grads[side])?, y)?));
        }
    }
    backward_pairs(pairs)
}

/// What a head block backpropagates: `Σ W ⊙ S` over its pairs (`W` the
/// distance-gradient cache, `S` the head's scores), plus the
/// load-balancing surrogate of its gates for a gated head.
pub(crate) struct BlockTerms<'a> {
    pub head: &'a dyn ScoringHead,
    pub weights: &'a Tensor,
    pub balance: Option<&'a Balance>,
}

impl BlockTerms<'_> {
    /// The `(y, g)` pairs of `block`, whose scores (and gates) are given.
    fn of(&self, block: &crate::core::layout::Block, scores: Tensor, gates: Option<&Tensor>) -> Result<Vec<(Tensor, Tensor)>> {
        let mut terms = vec![(scores, block.of(self.weights)?)];
        if let (Some(b), Some(g)) = (self.balance, gates) {
            let t = b.surrogate(g)?;
            let one = t.f_ones_like()?;
            terms.push((t, one));
        }
        Ok(terms)
    }
}

/// ∂L/∂U and ∂L/∂V summed over the head's blocks (in float32 or wider for
/// half-precision representations), and per side whether any block was
/// backpropagated and whether any leaf got a gradient: a side that never
/// does belongs to a head whose scores ignore it, a disconnected graph.
pub(crate) struct GradientSums {
    totals: PerSide<Tensor>,
    kind: Kind,
    reached: PerSide<(bool, bool)>,
}

impl GradientSums {
    /// Zeros shaped like the representations U and V.
    pub(crate) fn new(queries: &Representation, passages: &Representation) -> Result<Self> {
        let kind = accumulation_kind(queries.kind());
        let zeros = |r: &Representation| r.tensor().f_zeros_like()?.f_to_kind(kind);
        Ok(GradientSums { totals: PerSide::new(zeros(queries)?, zeros(passages)?), kind, reached: PerSide::default() })
    }

    /// Adds the gradient of `leaf` (a block's rows of `side`) into `piece`'s
    /// rows.
    fn add(&mut self, side: Side, piece: Piece, leaf: &Tensor) -> Result<()> {
        let g = leaf_grad(leaf, self.kind)?;
        let r = &mut self.reached[side];
        *r = (true, r.1 || g.is_some());
        if let Some(g) = g {
            let _ = piece.rows(&self.totals[side])?.f_add_(&g)?;
        }
        Ok(())
    }

    /// The representation-gradient cache.
    ///
    /// # Errors
    /// [`GradCacheError::NoGradient`] naming a side that blocks were
    /// backpropagated to and that got no gradient.
    pub(crate) fn finish(self) -> Result<RepresentationGradients> {
        for side in SIDES {
            if self.reached[side] == (true, false) {
                return Err(GradCacheError::NoGradient { side });
            }
        }
        Ok(RepresentationGradients { queries: self.totals.queries, passages: self.totals.passages })
    }
}

/// Backpropagates the blocks the score pass kept (`kept`, by block index;
/// taken) through their graphs, all in one backward call (as the
/// full-batch step does), which frees them before anything is recomputed.
///
/// # Errors
/// libtorch errors; [`GradCacheError::Shape`] from a block's weights.
pub(crate) fn backprop_kept_blocks(plan: &Plan, kept: &mut [Option<KeptBlock>], terms: &BlockTerms, sums: &mut GradientSums) -> Result<()> {
    let retained: Vec<_> = plan.blocks().filter_map(|b| kept.get_mut(b.index).and_then(Option::take).map(|k| (b, k))).collect();
    tch::with_grad(|| {
        let mut pairs = Vec::new();
        for (b, k) in &retained {
            pairs.extend(terms.of(b, k.scores.shallow_clone(), k.gates.as_ref())?);
        }
        backward_pairs(pairs)
    })?;
    for (b, k) in retained {
        sums.add(Side::Passages, b.passages, k.passages.tensor())?;
        sums.add(Side::Queries, b.queries, k.queries.tensor())?;
    }
    Ok(())
}

/// Re-scores every other block of `how.plan` that `runs(index)` selects
/// (U and V cut from `queries`, `passages`), from its random stream,
/// checks it against the score pass's `scored` matrix, and backpropagates
/// it. The queries of a row of blocks share one leaf, so that the row's
/// query gradient accumulates in it once.
///
/// # Errors
/// Head errors; [`GradCacheError::ReplayMismatch`] (when checked).
pub(crate) fn backprop_recomputed_blocks(
    terms: &BlockTerms,
    queries: &Representation,
    passages: &Representation,
    scored: &Tensor,
    runs: &dyn Fn(usize) -> bool,
    sums: &mut GradientSums,
    how: Rerun,
) -> Result<()> {
    let mut log = ReplayLog::new(ReplayStage::HeadBlock, how.replay.is_some());
    let mut row_leaf: Vec<Option<Representation>> = how.plan.grid().rows.iter().map(|_| None).collect();
    for block in how.plan.blocks().filter(|b| !b.retained && runs(b.index)) {
        let u = match &row_leaf[block.row] {
            Some(u) => u.with_tensor(u.tensor().shallow_clone()),
            None => {
                let u = queries.narrow(block.queries.start, block.queries.len)?.detached_leaf()?;
                row_leaf[block.row] = Some(u.with_tensor(u.tensor().shallow_clone()));
                u
            }
        };
        let v = passages.narrow(block.passages.start, block.passages.len)?.detached_leaf()?;
        how.seeds.enter(ReplayStage::HeadBlock, block.index);
        let s = tch::with_grad(|| score_block(terms.head, &u, &v, how.fwd))?;
        log.record(&s.scores, &block.of(scored)?)?;
        tch::with_grad(|| backward_pairs(terms.of(&block, s.scores, s.gates.as_ref())?))?;
        sums.add(Side::Passages, block.passages, v.tensor())?;
    }
    for (row, leaf) in how.plan.grid().rows.iter().zip(&row_leaf) {
        if let Some(u) = leaf {
            sums.add(Side::Queries, *row, u.tensor())?;
        }
    }
    log.finish(how.replay.unwrap_or(0.0))
}

/// One backward call of `Σ_k sum(y_k ⊙ g_k)`: each `y_k` receives exactly
/// the incoming gradient `g_k` (summed in `g_k`'s kind). tch 0.17 has no
/// backward-with-gradient call; this is it. Nothing for no pairs.
///
/// # Errors
/// libtorch errors.
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

/// The gradient of a leaf, in `kind`; `None` if nothing reached it (the
/// graph did not connect it to what was backpropagated).
///
/// # Errors
/// libtorch errors.
pub(crate) fn leaf_grad(leaf: &Tensor, kind: Kind) -> Result<Option<Tensor>> {
    let g = leaf.f_grad()?;
    Ok(if g.defined() { Some(g.f_to_kind(kind)?) } else { None })
}

/// The loss as f64, after checking it is a finite scalar.
///
/// # Errors
/// [`GradCacheError::LossShape`]; [`GradCacheError::NonFiniteLoss`].
pub(crate) fn checked_loss_value(loss: &Tensor) -> Result<f64> {
    if loss.numel() != 1 {
        return Err(GradCacheError::LossShape { got: loss.size() });
    }
    let value = loss.f_to_kind(Kind::Double)?.f_double_value(&[])?;
    if !value.is_finite() {
        return Err(GradCacheError::NonFiniteLoss { value });
    }
    Ok(value)
}

/// The head's closed-form gradients, used only in f32: under autocast the
/// full-batch step's gradients are autograd's through the head's bf16
/// products, which a closed form computed in f32 does not reproduce
/// (measured: 5e-3 of the gradient's norm for the dot head), so the head
/// pass runs through autograd instead.
pub(crate) fn closed_form_gradients(
    head: &dyn ScoringHead,
    precision: Precision,
    u: &Representation,
    v: &Representation,
    w: &Tensor,
) -> Option<Result<RepresentationGradients>> {
    match precision {
        Precision::F32 => head.closed_form_gradients(u, v, w),
        _ => None,
    }
}

/// Whether the head gives closed-form gradients at `precision` (asked on
/// the first pair of `u` × `v`).
///
/// # Errors
/// libtorch errors.
pub(crate) fn has_closed_form(head: &dyn ScoringHead, precision: Precision, u: &Representation, v: &Representation) -> Result<bool> {
    let (u, v) = (u.narrow(0, 1)?, v.narrow(0, 1)?);
    let w = Tensor::f_zeros([1, 1], (accumulation_kind(u.kind()), u.tensor().device()))?;
    Ok(closed_form_gradients(head, precision, &u, &v, &w).is_some())
}
