//! MaxSim with learned per-token weights on the query side.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::{expect_tokens, maxsim::token_maxima};
use crate::core::head::ScoringHead;
use crate::core::representation::Representation;
use crate::error::{GradCacheError, Result};

/// Configuration of [`WeightedMaxSimHead`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WeightedMaxSimConfig {
    /// Representation width `d`.
    pub dim: usize,
    /// The residual start (`null`: off): see [`super::ResidualConfig`].
    pub residual: Option<super::ResidualConfig>,
}

impl Default for WeightedMaxSimConfig {
    fn default() -> Self {
        WeightedMaxSimConfig { dim: 128, residual: super::residual_default() }
    }
}

impl WeightedMaxSimConfig {
    /// Creates `token_weight.weight` `[1, d]` (zeros) and `token_weight.bias`
    /// `[1]` (`ln(e − 1)`, so every weight starts at 1: plain MaxSim).
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] for `dim = 0`.
    pub fn init(&self, path: &nn::Path) -> Result<WeightedMaxSimHead> {
        if self.dim == 0 {
            return Err(GradCacheError::InvalidConfig { field: "dim", reason: "must be at least 1" });
        }
        let config = nn::LinearConfig {
            ws_init: nn::Init::Const(0.0),
            bs_init: Some(nn::Init::Const((std::f64::consts::E - 1.0).ln())),
            bias: true,
        };
        Ok(WeightedMaxSimHead { token_weight: nn::linear(path / "token_weight", self.dim as i64, 1, config) })
    }
}

/// `s_ij = Σ_t mq_it · softplus(wᵀ u_it + c) · max_k ⟨u_it, v_jk⟩` over real
/// tokens. Parameters: `w` `[d]`, `c`. Cost per pair: `Lq·Lp·d` (weights
/// once per query); activation memory per block: `[a, b, Lq, Lp]`.
#[derive(Debug)]
pub struct WeightedMaxSimHead {
    token_weight: nn::Linear,
}

impl ScoringHead for WeightedMaxSimHead {
    fn score(&self, queries: &Representation, passages: &Representation, _train: bool) -> Result<Tensor> {
        let (u, mq) = expect_tokens(queries, "WeightedMaxSimHead")?;
        let (v, mp) = expect_tokens(passages, "WeightedMaxSimHead")?;
        let weights = crate::util::linear(u, &self.token_weight)?.f_squeeze_dim(2)?.f_softplus()?.f_mul(mq)?; // [a, Lq]
        let best = token_maxima(u, v, mp)?; // [a, b, Lq]
        Ok(best.f_mul(&weights.f_unsqueeze(1)?)?.f_sum_dim_intlist(2, false, best.kind())?)
    }

    /// MaxSim's `2·a·b·Lq·Lp·d` and the token weights' `2·a·Lq·d`.
    fn score_flops(&self, queries: &Representation, passages: &Representation) -> Option<f64> {
        let (a, lq, d) = super::dims(queries);
        Some(super::MaxSimHead.score_flops(queries, passages)? + 2.0 * a * lq * d)
    }
}
