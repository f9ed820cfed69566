//! Small tensor helpers shared by the step, the heads and the checks.

use tch::{nn, Kind, Tensor};

use crate::error::{GradCacheError, Result};

/// Whether every element is finite.
pub(crate) fn all_finite(t: &Tensor) -> Result<bool> {
    Ok(t.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0)
}

/// The largest absolute element, as f64 (0 for an empty tensor).
pub(crate) fn max_abs(t: &Tensor) -> Result<f64> {
    if t.numel() == 0 {
        return Ok(0.0);
    }
    Ok(t.f_abs()?.f_max()?.f_to_kind(Kind::Double)?.f_double_value(&[])?)
}

/// The kind in which gradient caches are accumulated: fp32 for half
/// precision representations, the representation's own kind otherwise.
pub(crate) fn accumulation_kind(kind: Kind) -> Kind {
    match kind {
        Kind::Half | Kind::BFloat16 => Kind::Float,
        k => k,
    }
}

/// `x Wᵀ + b` of a `nn::Linear`, fallibly (`apply` panics on a libtorch
/// error; the same operation).
pub(crate) fn linear(x: &Tensor, l: &nn::Linear) -> Result<Tensor> {
    Ok(x.f_linear(&l.ws, l.bs.as_ref())?)
}

/// A `nn::LayerNorm` made with the default config (ε = 1e-5), fallibly.
pub(crate) fn layer_norm(x: &Tensor, n: &nn::LayerNorm) -> Result<Tensor> {
    Ok(x.f_layer_norm(n.normalized_shape.as_slice(), n.ws.as_ref(), n.bs.as_ref(), 1e-5, true)?)
}

/// A `nn::Embedding` made with the default config, fallibly.
pub(crate) fn embed(ids: &Tensor, e: &nn::Embedding) -> Result<Tensor> {
    Ok(Tensor::f_embedding(&e.ws, ids, -1, false, false)?)
}
/// Checks a dropout probability: it must lie in `[0, 1)`.
///
/// # Errors
/// [`GradCacheError::InvalidConfig`] naming the field `dropout`.
pub(crate) fn check_dropout(p: f64) -> Result<()> {
    if (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(GradCacheError::InvalidConfig { field: "dropout", reason: "must be in [0, 1)" })
    }
}

/// A tensor's values as f64, flattened, on the CPU.
pub(crate) fn to_f64_vec(t: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(t.f_to_kind(Kind::Double)?.f_to_device(tch::Device::Cpu)?.f_flatten(0, -1)?)?)
}
