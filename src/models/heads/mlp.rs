//! An MLP over InferSent-style pair features.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::expect_vectors;
use crate::core::head::ScoringHead;
use crate::core::representation::Representation;
use crate::error::{GradCacheError, Result};

/// Configuration of [`MlpHead`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlpHeadConfig {
    /// Representation width `d`.
    pub dim: usize,
    /// Hidden width `h`.
    pub hidden: usize,
    /// Dropout on the hidden layer (train mode only).
    pub dropout: f64,
    /// The residual start (`null`: off): see [`super::ResidualConfig`].
    pub residual: Option<super::ResidualConfig>,
}

impl Default for MlpHeadConfig {
    fn default() -> Self {
        MlpHeadConfig { dim: 384, hidden: 256, dropout: 0.1, residual: super::residual_default() }
    }
}

impl MlpHeadConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 {
            return Err(GradCacheError::InvalidConfig { field: "dim", reason: "must be at least 1" });
        }
        if self.hidden == 0 {
            return Err(GradCacheError::InvalidConfig { field: "hidden", reason: "must be at least 1" });
        }
        crate::util::check_dropout(self.dropout)?;
        Ok(())
    }

    /// Creates the head's weights under `path`: `first.weight` `[h, 4d]`,
    /// `first.bias` `[h]`, `second.weight` `[1, h]`, `second.bias` `[1]`.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] from [`MlpHeadConfig::validate`].
    pub fn init(&self, path: &nn::Path) -> Result<MlpHead> {
        self.validate()?;
        let (d, h) = (self.dim as i64, self.hidden as i64);
        Ok(MlpHead {
            first: nn::linear(path / "first", 4 * d, h, Default::default()),
            second: nn::linear(path / "second", h, 1, Default::default()),
            config: self.clone(),
        })
    }
}

/// `s = w₂ᵀ dropout(gelu(W₁ [u; v; |u−v|; u⊙v] + b₁)) + b₂`.
///
/// Scored per block without materialising the `[a·b, 4d]` feature matrix:
/// the parts of `W₁` acting on `u` alone and on `v` alone are applied once per
/// query and once per passage and broadcast; only `|u−v|` and `u⊙v` are
/// pairwise. Cost per pair: `2·d·h + h` multiply-adds (plus `2·d·h` per item);
/// activation memory per block: `[a, b, 2d]` features and `[a, b, h]` hidden.
#[derive(Debug)]
pub struct MlpHead {
    first: nn::Linear,
    second: nn::Linear,
    config: MlpHeadConfig,
}

impl MlpHead {
    /// The configuration.
    pub fn config(&self) -> &MlpHeadConfig {
        &self.config
    }
}

impl ScoringHead for MlpHead {
    fn score(&self, queries: &Representation, passages: &Representation, train: bool) -> Result<Tensor> {
        let u = expect_vectors(queries, "MlpHead")?;
        let v = expect_vectors(passages, "MlpHead")?;
        let d = self.config.dim as i64;
        for t in [u, v] {
            if t.size()[1] != d {
                return Err(GradCacheError::Shape { what: "MlpHead input", expected: "[n, dim]", got: t.size() });
            }
        }
        let w = &self.first.ws; // [h, 4d] = [W_u | W_v | W_abs | W_prod]
        let hu = u.f_matmul(&w.f_narrow(1, 0, d)?.f_tr()?)?; // [a, h]
        let hv = v.f_matmul(&w.f_narrow(1, d, d)?.f_tr()?)?; // [b, h]
        let (ue, ve) = (u.f_unsqueeze(1)?, v.f_unsqueeze(0)?); // [a, 1, d], [1, b, d]
        let pair = Tensor::f_cat(&[ue.f_sub(&ve)?.f_abs()?, ue.f_mul(&ve)?], 2)?; // [a, b, 2d]
        let mut hidden = pair.f_matmul(&w.f_narrow(1, 2 * d, 2 * d)?.f_tr()?)?; // [a, b, h]
        hidden = hidden.f_add(&hu.f_unsqueeze(1)?)?.f_add(&hv.f_unsqueeze(0)?)?;
        if let Some(b) = &self.first.bs {
            hidden = hidden.f_add(b)?;
        }
        let hidden = hidden.f_gelu("none")?.f_dropout(self.config.dropout, train)?;
        let mut s = hidden.f_matmul(&self.second.ws.f_tr()?)?.f_squeeze_dim(2)?; // [a, b]
        if let Some(b) = &self.second.bs {
            s = s.f_add(b)?;
        }
        Ok(s)
    }

    /// Per pair the `2d`-wide pair features into `h` hidden units and the
    /// hidden units into the score (`2·(2d·h + h)`), per item its own `d`
    /// columns into `h` (`2·d·h`).
    fn score_flops(&self, queries: &Representation, passages: &Representation) -> Option<f64> {
        let ((a, _, d), (b, _, _)) = (super::dims(queries), super::dims(passages));
        let h = self.config.hidden as f64;
        Some(2.0 * a * b * (2.0 * d * h + h) + 2.0 * (a + b) * d * h)
    }
}
