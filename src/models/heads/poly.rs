//! The poly-encoder's attention head (Humeau et al. 2020).

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::attention::masked_mean;
use super::expect_tokens;
use crate::core::head::ScoringHead;
use crate::core::representation::Representation;
use crate::error::{GradCacheError, Result};

/// Configuration of [`PolyEncoderHead`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolyEncoderConfig {
    /// Representation width `d`.
    pub dim: usize,
    /// Learned codes `m`.
    pub codes: usize,
    /// Dropout on the passage's attention over the codes.
    pub dropout: f64,
    /// The residual start (`null`: off): see [`super::ResidualConfig`].
    pub residual: Option<super::ResidualConfig>,
}

impl Default for PolyEncoderConfig {
    fn default() -> Self {
        PolyEncoderConfig { dim: 384, codes: 16, dropout: 0.1, residual: super::residual_default() }
    }
}

impl PolyEncoderConfig {
    /// Creates `codes` `[m, d]` under `path`.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] for zero sizes or dropout outside `[0, 1)`.
    pub fn init(&self, path: &nn::Path) -> Result<PolyEncoderHead> {
        if self.dim == 0 || self.codes == 0 {
            return Err(GradCacheError::InvalidConfig { field: "codes", reason: "dim and codes must be at least 1" });
        }
        crate::util::check_dropout(self.dropout)?;
        let init = nn::Init::Randn { mean: 0.0, stdev: 1.0 / (self.dim as f64).sqrt() };
        Ok(PolyEncoderHead { codes: path.f_var("codes", &[self.codes as i64, self.dim as i64], init)?, config: self.clone() })
    }
}

/// Codes `c_1..c_m` attend over the query's tokens, giving `m` query vectors
/// `q_k = Σ_t softmax_t(c_k·u_t/√d) u_t`; the passage vector `p` (mean of its
/// tokens) attends over them: `s = ⟨Σ_k softmax_k(q_k·p/√d) q_k, p⟩`.
/// Parameters: codes `[m, d]`. Cost: `m·Lq·d` per query and `Lp·d` per
/// passage, once per block, then `2·m·d + d` per pair; activation memory per
/// block: `[a, m, d]` + `[a, b, m]` + `[a, b, d]`.
#[derive(Debug)]
pub struct PolyEncoderHead {
    codes: Tensor,
    config: PolyEncoderConfig,
}

impl ScoringHead for PolyEncoderHead {
    fn score(&self, queries: &Representation, passages: &Representation, train: bool) -> Result<Tensor> {
        let (u, mq) = expect_tokens(queries, "PolyEncoderHead")?;
        let (v, mp) = expect_tokens(passages, "PolyEncoderHead")?;
        let scale = 1.0 / (self.config.dim as f64).sqrt();
        let pad = mq.f_sub_scalar(1.0)?.f_mul_scalar(1e4)?.f_unsqueeze(1)?; // [a, 1, Lq]
        let over_tokens = Tensor::f_einsum("md,aqd->amq", &[&self.codes, u], None::<&[i64]>)?.f_mul_scalar(scale)?.f_add(&pad)?;
        let query_codes = Tensor::f_einsum("amq,aqd->amd", &[over_tokens.f_softmax(-1, u.kind())?, u.shallow_clone()], None::<&[i64]>)?;
        let p = masked_mean(v, mp)?; // [b, d]
        let over_codes = Tensor::f_einsum("amd,bd->abm", &[&query_codes, &p], None::<&[i64]>)?.f_mul_scalar(scale)?;
        let weights = over_codes.f_softmax(-1, u.kind())?.f_dropout(self.config.dropout, train)?;
        let context = Tensor::f_einsum("abm,amd->abd", &[&weights, &query_codes], None::<&[i64]>)?;
        Ok(Tensor::f_einsum("abd,bd->ab", &[&context, &p], None::<&[i64]>)?)
    }

    /// Per query its `m` codes over its tokens (`4·m·Lq·d`: attention and
    /// weighted sum); per pair the passage against the codes and their
    /// weighted sum (`4·m·d`) and the score (`2·d`).
    fn score_flops(&self, queries: &Representation, passages: &Representation) -> Option<f64> {
        let ((a, lq, d), (b, _, _)) = (super::dims(queries), super::dims(passages));
        let m = self.config.codes as f64;
        Some(4.0 * a * m * lq * d + a * b * (4.0 * m * d + 2.0 * d))
    }
}
