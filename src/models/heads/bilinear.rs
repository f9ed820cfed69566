//! The bilinear form `uᵀ W v`, full or low-rank.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::expect_vectors;
use crate::core::head::ScoringHead;
use crate::core::representation::Representation;
use crate::error::{GradCacheError, Result};

/// Configuration of [`BilinearHead`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BilinearHeadConfig {
    /// Representation width `d`.
    pub dim: usize,
    /// `None`: a full `W` `[d, d]`, initialised to the identity (the dot
    /// product). `Some(r)`: `W = A Bᵀ` with `A`, `B` `[d, r]`.
    pub rank: Option<usize>,
    /// Dropout on `uᵀ A` (or `uᵀ W`), train mode only.
    pub dropout: f64,
    /// The residual start (`null`: off): see [`super::ResidualConfig`].
    pub residual: Option<super::ResidualConfig>,
}

impl Default for BilinearHeadConfig {
    fn default() -> Self {
        BilinearHeadConfig { dim: 384, rank: None, dropout: 0.0, residual: super::residual_default() }
    }
}

impl BilinearHeadConfig {
    /// Creates `weight` `[d, d]`, or `left` and `right` `[d, r]`, under `path`.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] for a zero width or rank, or dropout
    /// outside `[0, 1)`.
    pub fn init(&self, path: &nn::Path) -> Result<BilinearHead> {
        if self.dim == 0 || self.rank == Some(0) {
            return Err(GradCacheError::InvalidConfig { field: "dim", reason: "dim and rank must be at least 1" });
        }
        crate::util::check_dropout(self.dropout)?;
        let d = self.dim as i64;
        let form = match self.rank {
            None => {
                let w = path.f_var("weight", &[d, d], nn::Init::Const(0.0))?;
                tch::no_grad(|| w.shallow_clone().f_copy_(&Tensor::f_eye(d, (w.kind(), w.device()))?))?;
                Form::Full(w)
            }
            Some(r) => {
                let init = nn::Init::Randn { mean: 0.0, stdev: 1.0 / (d as f64).sqrt() };
                Form::LowRank(path.f_var("left", &[d, r as i64], init)?, path.f_var("right", &[d, r as i64], init)?)
            }
        };
        Ok(BilinearHead { form, dropout: self.dropout })
    }
}

#[derive(Debug)]
enum Form {
    Full(Tensor),
    LowRank(Tensor, Tensor),
}

/// `s = dropout(uᵀ A) (vᵀ B)ᵀ` (low rank) or `dropout(uᵀ W) v` (full).
/// Parameters: `W` `[d, d]` or `A`, `B` `[d, r]`. Cost: `d²` (or `d·r`) per
/// item, once per block, then `d` (or `r`) per pair; activation memory per
/// block: `[a, d]` + `[b, d]` + `[a, b]`.
#[derive(Debug)]
pub struct BilinearHead {
    form: Form,
    dropout: f64,
}

impl ScoringHead for BilinearHead {
    fn score(&self, queries: &Representation, passages: &Representation, train: bool) -> Result<Tensor> {
        let u = expect_vectors(queries, "BilinearHead")?;
        let v = expect_vectors(passages, "BilinearHead")?;
        let (uw, vw) = match &self.form {
            Form::Full(w) => (u.f_matmul(w)?, v.shallow_clone()),
            Form::LowRank(a, b) => (u.f_matmul(a)?, v.f_matmul(b)?),
        };
        Ok(uw.f_dropout(self.dropout, train)?.f_matmul(&vw.f_tr()?)?)
    }

    /// Full: `2·a·d²` for `uᵀW` and `2·a·b·d`; low rank `r`: `2·(a+b)·d·r`
    /// and `2·a·b·r`.
    fn score_flops(&self, queries: &Representation, passages: &Representation) -> Option<f64> {
        let ((a, _, d), (b, _, _)) = (super::dims(queries), super::dims(passages));
        Some(match &self.form {
            Form::Full(_) => 2.0 * a * d * d + 2.0 * a * b * d,
            Form::LowRank(w, _) => {
                let r = w.size()[1] as f64;
                2.0 * (a + b) * d * r + 2.0 * a * b * r
            }
        })
    }
}
