//! Small tensor helpers shared by the step, the heads and the checks.

use tch::{Kind, Tensor};

use crate::error::Result;

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
