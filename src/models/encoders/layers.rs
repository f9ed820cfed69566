//! The two building blocks every encoder family here shares, over
//! Hugging Face's weight names (`weight`, `bias`): a linear map and a
//! layer norm, each with an optional bias (BERT has them, ModernBERT's
//! config may leave them out).

use tch::{nn, Tensor};

use crate::error::Result;

/// `x Wᵀ + b`.
pub(super) struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// `p.weight` `[output, input]` drawn from N(0, `sigma`) (BERT's and
    /// ModernBERT's initialisation) and, with `bias`, `p.bias` at 0.
    ///
    /// # Errors
    /// Variable-store errors.
    pub(super) fn new(p: nn::Path, input: i64, output: i64, bias: bool, sigma: f64) -> Result<Self> {
        let weight = p.f_var("weight", &[output, input], nn::Init::Randn { mean: 0.0, stdev: sigma })?;
        let bias = if bias { Some(p.f_var("bias", &[output], nn::Init::Const(0.0))?) } else { None };
        Ok(Linear { weight, bias })
    }

    /// # Shapes
    /// `[…, input]` → `[…, output]`.
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
    }
}

/// Layer normalisation over the last dimension.
pub(super) struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    /// `p.weight` at 1 and, with `bias`, `p.bias` at 0, both `[dim]`.
    ///
    /// # Errors
    /// Variable-store errors.
    pub(super) fn new(p: nn::Path, dim: i64, bias: bool, eps: f64) -> Result<Self> {
        let weight = p.f_var("weight", &[dim], nn::Init::Const(1.0))?;
        let bias = if bias { Some(p.f_var("bias", &[dim], nn::Init::Const(0.0))?) } else { None };
        Ok(LayerNorm { weight, bias, eps })
    }

    /// # Shapes
    /// `[…, dim]` → `[…, dim]`.
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = *x.size().last().unwrap_or(&0);
        Ok(x.f_layer_norm([d], Some(&self.weight), self.bias.as_ref(), self.eps, true)?)
    }
}
