//! ColBERT's late interaction over token matrices.

use tch::Tensor;

use super::expect_tokens;
use crate::core::head::ScoringHead;
use crate::core::representation::Representation;
use crate::error::Result;

/// MaxSim: `s_ij = Σ_t mq_it · max_{k: mp_jk = 1} ⟨u_it, v_jk⟩`, summing over
/// the query's real tokens the best match among the passage's real tokens.
/// No parameters. Cost per pair: `Lq·Lp·d` multiply-adds; activation memory
/// per block: the `[a, b, Lq, Lp]` similarity tensor. A passage with no real
/// token scores 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct MaxSimHead;

/// For every query token and passage, the best match among the passage's
/// real tokens: `[a, Lq, d]` × `[b, Lp, d]` (mask `[b, Lp]`) → `[a, b, Lq]`;
/// 0 for a passage without real tokens.
pub(crate) fn token_maxima(u: &Tensor, v: &Tensor, mp: &Tensor) -> Result<Tensor> {
    let sim = Tensor::f_einsum("aqd,bpd->abqp", &[u, v], None::<&[i64]>)?; // [a, b, Lq, Lp]
    let pad = mp.f_eq(0.0)?.f_view([1, mp.size()[0], 1, mp.size()[1]])?;
    let best = sim.f_masked_fill(&pad, f64::NEG_INFINITY)?.f_amax([3], false)?;
    Ok(best.f_masked_fill(&best.f_isneginf()?, 0.0)?)
}

impl ScoringHead for MaxSimHead {
    fn score(&self, queries: &Representation, passages: &Representation, _train: bool) -> Result<Tensor> {
        let (u, mq) = expect_tokens(queries, "MaxSimHead")?;
        let (v, mp) = expect_tokens(passages, "MaxSimHead")?;
        let best = token_maxima(u, v, mp)?; // [a, b, Lq]
        let weights = mq.f_unsqueeze(1)?; // [a, 1, Lq]
        Ok(best.f_mul(&weights)?.f_sum_dim_intlist(2, false, best.kind())?)
    }

    /// `2·a·b·Lq·Lp·d`: every query token against every passage token.
    fn score_flops(&self, queries: &Representation, passages: &Representation) -> Option<f64> {
        let ((a, lq, d), (b, lp, _)) = (super::dims(queries), super::dims(passages));
        Some(2.0 * a * b * lq * lp * d)
    }
}
