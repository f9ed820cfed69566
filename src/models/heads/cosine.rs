//! Cosine similarity with a learnable temperature.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::expect_vectors;
use crate::core::head::ScoringHead;
use crate::core::representation::Representation;
use crate::error::{GradCacheError, Result};

/// Configuration of [`CosineHead`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CosineHeadConfig {
    /// τ at initialisation.
    pub initial_temperature: f64,
}

impl Default for CosineHeadConfig {
    fn default() -> Self {
        CosineHeadConfig { initial_temperature: 0.05 }
    }
}

impl CosineHeadConfig {
    /// Creates `log_scale` (a scalar, `ln(1/τ)`) under `path`.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] for a non-positive temperature.
    pub fn init(&self, path: &nn::Path) -> Result<CosineHead> {
        if !(self.initial_temperature.is_finite() && self.initial_temperature > 0.0) {
            return Err(GradCacheError::InvalidConfig { field: "initial_temperature", reason: "must be finite and positive" });
        }
        let init = nn::Init::Const(-self.initial_temperature.ln());
        Ok(CosineHead { log_scale: path.f_var("log_scale", &[], init)? })
    }
}

/// `s = exp(λ) · ⟨u, v⟩ / (‖u‖ ‖v‖)`, with `λ = ln(1/τ)` learned.
/// Parameters: `λ`. Cost per pair: `d`; activation memory per block: `[a, b]`.
/// Use it with a loss temperature of 1.
#[derive(Debug)]
pub struct CosineHead {
    log_scale: Tensor,
}

pub(crate) fn unit(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_div(&t.f_norm_scalaropt_dim(2, [-1], true)?.f_clamp_min(1e-12)?)?)
}

impl ScoringHead for CosineHead {
    /// `2·a·b·d` (the normalisation is linear in the items).
    fn score_flops(&self, queries: &Representation, passages: &Representation) -> Option<f64> {
        let ((a, _, d), (b, _, _)) = (super::dims(queries), super::dims(passages));
        Some(2.0 * a * b * d)
    }

    fn score(&self, queries: &Representation, passages: &Representation, _train: bool) -> Result<Tensor> {
        let u = unit(expect_vectors(queries, "CosineHead")?)?;
        let v = unit(expect_vectors(passages, "CosineHead")?)?;
        Ok(u.f_matmul(&v.f_tr()?)?.f_mul(&self.log_scale.f_exp()?)?)
    }
}
