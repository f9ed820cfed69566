//! What a step's passes compute, counted in matrix-multiply FLOPs (2 per
//! multiply-add) from the encoders' and the head's own counts
//! ([`crate::core::encoder::Encoder::forward_flops`],
//! [`crate::core::head::ScoringHead::score_flops`]) over the plan's chunks
//! and blocks: with the pass times, the rate each pass achieved, to set
//! against what the machine's matrix multiply reaches
//! ([`crate::runtime::matmul_gflops`]).

use crate::core::encoder::Encoder;
use crate::core::head::ScoringHead;
use crate::core::layout::{Block, Side};
use crate::core::model::StepModel;
use crate::core::output::PassFlops;
use crate::core::plan::Plan;
use crate::core::representation::Representation;
use crate::error::{GradCacheError, Result};

/// A backward pass's FLOPs as a factor on its forward's: a matrix
/// multiply's two input gradients are two multiplies of its size.
pub const BACKWARD_FACTOR: f64 = 2.0;

/// The FLOPs of a step's passes over this batch: the encoders' over
/// `plan`'s chunks, the head's over `blocks` (the plan's, or a process's
/// own run of them in a step across processes); `reps` are the
/// representation pass's U and V (the head's cost may depend on their
/// shapes, e.g. tokens per item).
///
/// # Errors
/// The inputs' errors when a chunk is cut.
pub fn count<QE: Encoder + ?Sized, PE: Encoder + ?Sized>(
    model: StepModel<'_, QE, PE>,
    plan: &Plan,
    queries: &QE::Input,
    passages: &PE::Input,
    (u, v): (&Representation, &Representation),
    closed_form_head: bool,
    blocks: impl IntoIterator<Item = Block>,
) -> Result<PassFlops> {
    // (forward over every piece, forward over the recomputed ones)
    fn side<E: Encoder + ?Sized>(encoder: &E, plan: &Plan, side: Side, input: &E::Input) -> Result<Option<(f64, f64)>> {
        let mut sums = (0.0, 0.0);
        for chunk in plan.chunks(side) {
            let Some(f) = encoder.forward_flops(&chunk.cut(input)?) else { return Ok(None) };
            sums.0 += f;
            sums.1 += if chunk.retained { 0.0 } else { f };
        }
        Ok(Some(sums))
    }
    let encoders =
        match (side(model.query_encoder, plan, Side::Queries, queries)?, side(model.passage_encoder, plan, Side::Passages, passages)?) {
            (Some(q), Some(p)) => Some((q.0 + p.0, q.1 + p.1)),
            _ => None,
        };
    let mut heads = Some((0.0, 0.0));
    for b in blocks {
        let f = model.head.score_flops(&u.narrow(b.queries.start, b.queries.len)?, &v.narrow(b.passages.start, b.passages.len)?);
        heads = match (heads, f) {
            (Some((all, again)), Some(f)) => Some((all + f, again + if b.retained || closed_form_head { 0.0 } else { f })),
            _ => None,
        };
    }
    Ok(PassFlops {
        representation: encoders.map(|e| e.0),
        score: heads.map(|b| b.0),
        head: heads.map(|(all, again)| again + BACKWARD_FACTOR * all),
        encoder: encoders.map(|(all, again)| again + BACKWARD_FACTOR * all),
    })
}

/// The passage columns of a head block of `rows` query rows (fewer when
/// the batch has fewer) whose scoring FLOPs stay within `budget`: a head's
/// count is affine in the columns for a fixed row count (per pair, plus per
/// query row), so the cost of one and of two columns give it exactly. At
/// least 1, at most the batch's passages.
///
/// # Errors
/// [`GradCacheError::InvalidConfig`] naming `head_block_flops` for a head
/// that does not count its FLOPs; libtorch errors.
pub fn block_columns(head: &dyn ScoringHead, u: &Representation, v: &Representation, rows: usize, budget: f64) -> Result<usize> {
    let (n, m) = (u.len(), v.len());
    if m <= 1 {
        return Ok(m.max(1));
    }
    let q = u.narrow(0, rows.clamp(1, n))?;
    let cost = |c: usize| -> Result<f64> {
        head.score_flops(&q, &v.narrow(0, c)?).ok_or(GradCacheError::InvalidConfig {
            field: "head_block_flops",
            reason: "needs a head that counts its FLOPs (ScoringHead::score_flops)",
        })
    };
    let (one, two) = (cost(1)?, cost(2)?);
    let per_column = (two - one).max(f64::MIN_POSITIVE);
    let fixed = one - per_column;
    Ok((((budget - fixed) / per_column).floor().max(1.0) as usize).min(m))
}
