//! The residual start: a learned head as a correction to the encoders' own
//! similarity, `s = e^λ · base(u, v) + α · Φ(u, v)` with `α = 0` at
//! initialisation, so that an untrained head scores exactly as the
//! (scaled) base does and training learns what to add to it (cf. ReZero's
//! zero-initialised residual gates).

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::{cosine::unit, expect_tokens, expect_vectors, MaxSimHead};
use crate::core::head::ScoringHead;
use crate::core::representation::Representation;
use crate::error::{GradCacheError, Result};

/// The similarity a residual head refines: the encoders' own, with no
/// parameters of its own but the scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResidualBase {
    /// Cosine of the two vectors (vector heads).
    Cosine,
    /// ColBERT's MaxSim over the token matrices, each token vector
    /// L2-normalised as ColBERT's are (token heads): the block reads the
    /// encoder's raw token states, the base their directions.
    MaxSim,
}

impl ResidualBase {
    /// The base's scale `e^λ` at initialisation when the config names none:
    /// 20 for cosine (a temperature of 0.05, as [`super::CosineHeadConfig`]),
    /// 5 for MaxSim (a sum over query tokens is already spread out; of the
    /// scales 1, 2, 5, 10 and 20, 5 gave the lowest InfoNCE loss of
    /// pretrained MiniLM on a WordNet training batch, `docs/heads-results.md`).
    pub fn default_scale(self) -> f64 {
        match self {
            ResidualBase::Cosine => 20.0,
            ResidualBase::MaxSim => 5.0,
        }
    }

    /// The base for a head that reads token matrices, or one vector per item.
    pub fn for_tokens(reads_tokens: bool) -> Self {
        if reads_tokens {
            ResidualBase::MaxSim
        } else {
            ResidualBase::Cosine
        }
    }

    fn score(self, queries: &Representation, passages: &Representation) -> Result<Tensor> {
        match self {
            ResidualBase::Cosine => {
                let u = unit(expect_vectors(queries, "residual cosine base")?)?;
                let v = unit(expect_vectors(passages, "residual cosine base")?)?;
                Ok(u.f_matmul(&v.f_tr()?)?)
            }
            ResidualBase::MaxSim => {
                let (u, mq) = expect_tokens(queries, "residual MaxSim base")?;
                let (v, mp) = expect_tokens(passages, "residual MaxSim base")?;
                let unit_tokens = |t: &Tensor, m: &Tensor| -> Result<Representation> { Representation::tokens(unit(t)?, m) };
                MaxSimHead.score(&unit_tokens(u, mq)?, &unit_tokens(v, mp)?, false)
            }
        }
    }
}

/// Configuration of the residual start, a field (`"residual"`) of every
/// learned head's config; `"residual": null` turns it off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResidualConfig {
    /// The base's scale `e^λ` at initialisation (`null`: the base's default,
    /// [`ResidualBase::default_scale`]).
    pub base_scale: Option<f64>,
    /// The gate `α` at initialisation. Only 0 makes step 0 score as the base;
    /// another value is for tests that need the head's gradients at step 0.
    pub gate: f64,
}

impl Default for ResidualConfig {
    fn default() -> Self {
        ResidualConfig { base_scale: None, gate: 0.0 }
    }
}

impl ResidualConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] for a scale that is not finite and
    /// positive, or a gate that is not finite.
    pub fn validate(&self) -> Result<()> {
        if self.base_scale.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
            return Err(GradCacheError::InvalidConfig { field: "residual.base_scale", reason: "must be finite and positive when set" });
        }
        if !self.gate.is_finite() {
            return Err(GradCacheError::InvalidConfig { field: "residual.gate", reason: "must be finite" });
        }
        Ok(())
    }

    /// Wraps `correction` (Φ, whose weights the caller created) with the
    /// base and creates `log_scale` (`λ`, a scalar) and `gate` (`α`, a
    /// scalar) under `path`.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] from [`ResidualConfig::validate`].
    pub fn init(&self, path: &nn::Path, base: ResidualBase, correction: Box<dyn ScoringHead>) -> Result<ResidualHead> {
        self.validate()?;
        let scale = self.base_scale.unwrap_or(base.default_scale());
        Ok(ResidualHead {
            base,
            log_scale: path.f_var("log_scale", &[], nn::Init::Const(scale.ln()))?,
            gate: path.f_var("gate", &[], nn::Init::Const(self.gate))?,
            correction,
        })
    }
}

/// `s = e^λ · base(u, v) + α · Φ(u, v)`: a learned head `Φ` as a gated
/// correction to the encoders' cosine or MaxSim.
///
/// Parameters: `λ`, `α` and Φ's. Cost per pair and activations per block:
/// Φ's plus the base's (`d`, or `Lq·Lp·d` and `[a, b, Lq, Lp]` for MaxSim).
/// Φ is scored in every block even while `α = 0`, so that its dropout draws
/// and its gradients (zero until `α` moves) are the same in every pass.
pub struct ResidualHead {
    base: ResidualBase,
    log_scale: Tensor,
    gate: Tensor,
    correction: Box<dyn ScoringHead>,
}

impl std::fmt::Debug for ResidualHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResidualHead").field("base", &self.base).finish_non_exhaustive()
    }
}

impl ResidualHead {
    /// The base similarity.
    pub fn base(&self) -> ResidualBase {
        self.base
    }
}

impl ScoringHead for ResidualHead {
    fn score(&self, queries: &Representation, passages: &Representation, train: bool) -> Result<Tensor> {
        Ok(self.score_gated(queries, passages, train)?.0)
    }

    /// The correction head's (a Mixture of Logits' load balancing acts on
    /// its own gates, whatever the gate `α`).
    fn balance_weight(&self) -> f64 {
        self.correction.balance_weight()
    }

    fn components(&self, rep: &Representation, side: crate::core::layout::Side) -> Option<Result<Tensor>> {
        self.correction.components(rep, side)
    }

    fn score_gated(&self, queries: &Representation, passages: &Representation, train: bool) -> Result<(Tensor, Option<Tensor>)> {
        let base = self.base.score(queries, passages)?.f_mul(&self.log_scale.f_exp()?)?;
        let (correction, gates) = self.correction.score_gated(queries, passages, train)?;
        Ok((base.f_add(&correction.f_mul(&self.gate)?)?, gates))
    }

    /// The base's (cosine `2·a·b·d`, MaxSim `2·a·b·Lq·Lp·d`) and the
    /// correction head's.
    fn score_flops(&self, queries: &Representation, passages: &Representation) -> Option<f64> {
        let base = match self.base {
            ResidualBase::Cosine => super::DotHead.score_flops(queries, passages)?,
            ResidualBase::MaxSim => MaxSimHead.score_flops(queries, passages)?,
        };
        Some(base + self.correction.score_flops(queries, passages)?)
    }
}
