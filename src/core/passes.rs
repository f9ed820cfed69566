//! The loops over a side's encoder chunks that the step, the full-batch
//! reference and the distributed step share: encode every chunk of a plan,
//! and backpropagate a gradient over the side through every chunk again.
//! Also the one-call backward of a sum of `y ⊙ g` terms.

use tch::{Kind, Tensor};

use crate::core::encoder::Encoder;
use crate::core::head::{RepresentationGradients, ScoringHead};
use crate::core::layout::Side;
use crate::core::plan::{ChunkPiece, Plan};
use crate::core::replay::{ReplayLog, ReplaySeeds};
use crate::core::representation::Representation;
use crate::core::scoring::Forward;
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

/// Backpropagates each recomputed chunk's rows of `grads` (over the whole
/// side) through a re-encoding from the same random stream, checked
/// against the first pass's `cached` representations; retained chunks are
/// left to [`backprop_kept`].
///
/// # Errors
/// Encoder errors; [`GradCacheError::ReplayMismatch`] (when `check_replay`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backprop_all<E: Encoder + ?Sized>(
    encoder: &E,
    input: &E::Input,
    plan: &Plan,
    side: Side,
    cached: &Representation,
    grads: &Tensor,
    seeds: &ReplaySeeds,
    fwd: Forward,
    replay: Option<f64>,
) -> Result<()> {
    let mut log = ReplayLog::new(stage_of(side), replay.is_some());
    for chunk in plan.chunks(side).iter().filter(|c| !c.retained) {
        let rep = tch::with_grad(|| encode_chunk(encoder, input, chunk, side, seeds, fwd))?;
        let y = rep.tensor();
        log.record(y, &Representation::narrow_tokens_like(&chunk.rows(cached.tensor())?, y)?)?;
        backward_pairs(vec![(y.shallow_clone(), Representation::narrow_tokens_like(&chunk.rows(grads)?, y)?)])?;
    }
    log.finish(replay.unwrap_or(0.0))
}

/// Backpropagates the retained chunks of every listed side through the
/// graphs the representation pass kept, all in one backward call (as the
/// full-batch step does), which frees them before anything is recomputed.
///
/// # Errors
/// libtorch errors.
pub(crate) fn backprop_kept(plan: &Plan, sides: [(Side, Vec<Option<Representation>>, &Tensor); 2]) -> Result<()> {
    let mut pairs = Vec::new();
    for (side, kept, grads) in sides {
        for (chunk, rep) in plan.chunks(side).iter().zip(kept) {
            let Some(rep) = rep else { continue };
            let y = rep.tensor();
            pairs.push((y.shallow_clone(), Representation::narrow_tokens_like(&chunk.rows(grads)?, y)?));
        }
    }
    backward_pairs(pairs)
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
