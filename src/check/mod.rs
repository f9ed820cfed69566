//! Comparing gradients: how the crate checks that the two-cache step equals
//! the full-batch step.

use std::collections::BTreeMap;
use std::fmt;

use tch::{nn, Tensor};

use crate::error::Result;

/// A copy of the `.grad()` of every variable in a `VarStore`, by name.
/// A variable that received no gradient is recorded as zeros.
#[derive(Debug)]
pub struct GradientSnapshot {
    grads: BTreeMap<String, Tensor>,
}

impl GradientSnapshot {
    /// Copies the current gradients.
    pub fn take(vs: &nn::VarStore) -> Result<Self> {
        let mut grads = BTreeMap::new();
        for (name, var) in vs.variables() {
            let g = var.f_grad()?;
            let copy = if g.defined() { g.f_detach_copy()? } else { var.f_zeros_like()? };
            grads.insert(name, copy);
        }
        Ok(GradientSnapshot { grads })
    }

    /// Parameter names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.grads.keys().map(String::as_str)
    }

    /// Compares with `reference`, parameter by parameter (the names of
    /// `reference`; one missing here counts as an infinite difference).
    pub fn compare(&self, reference: &GradientSnapshot) -> Result<GradientComparison> {
        let mut parameters = Vec::with_capacity(reference.grads.len());
        for (name, r) in &reference.grads {
            let reference_max_abs = max_abs(r)?;
            let max_abs_diff = match self.grads.get(name) {
                Some(g) if g.size() == r.size() => max_abs(&g.f_sub(r)?)?,
                _ => f64::INFINITY,
            };
            let max_rel_diff = if max_abs_diff == 0.0 { 0.0 } else { max_abs_diff / reference_max_abs };
            parameters.push(ParameterDifference { name: name.clone(), max_abs_diff, max_rel_diff, reference_max_abs });
        }
        Ok(GradientComparison { parameters })
    }

    /// `‖g − g_ref‖ / ‖g_ref‖` over all parameters together (Euclidean
    /// norms of the concatenated gradients, in f64): one figure for how far
    /// a whole gradient moved, which tiny or unused parameters cannot blow
    /// up the way a per-parameter ratio can.
    ///
    /// # Errors
    /// [`crate::error::GradCacheError::Shape`] when the two do not hold the same
    /// parameters with the same shapes; libtorch errors.
    pub fn relative_distance(&self, reference: &GradientSnapshot) -> Result<f64> {
        let (mut diff, mut norm) = (0.0_f64, 0.0_f64);
        for (name, r) in &reference.grads {
            let g = self.grads.get(name).filter(|g| g.size() == r.size()).ok_or(crate::error::GradCacheError::Shape {
                what: "gradient snapshots (a parameter missing or reshaped)",
                expected: "the same parameters",
                got: r.size(),
            })?;
            let (g, r) = (g.f_to_kind(tch::Kind::Double)?, r.f_to_kind(tch::Kind::Double)?);
            diff += g.f_sub(&r)?.f_square()?.f_sum(tch::Kind::Double)?.f_double_value(&[])?;
            norm += r.f_square()?.f_sum(tch::Kind::Double)?.f_double_value(&[])?;
        }
        Ok(if diff == 0.0 { 0.0 } else { (diff / norm).sqrt() })
    }
}

/// Zeroes the gradient of every variable in `vs`.
pub fn zero_grads(vs: &nn::VarStore) {
    for (_, mut var) in vs.variables() {
        var.zero_grad();
    }
}

/// How one parameter's gradients differ.
#[derive(Debug, Clone, PartialEq)]
pub struct ParameterDifference {
    /// The `VarStore` path.
    pub name: String,
    /// `max |g − g_ref|`.
    pub max_abs_diff: f64,
    /// `max |g − g_ref| / max |g_ref|` (0 when both are 0, ∞ when only the
    /// reference is 0).
    pub max_rel_diff: f64,
    /// `max |g_ref|`.
    pub reference_max_abs: f64,
}

/// An absolute-plus-relative tolerance: a parameter passes when
/// `max |g − g_ref| ≤ abs + rel · max |g_ref|`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Absolute part.
    pub abs: f64,
    /// Relative part, scaled by the reference's largest magnitude.
    pub rel: f64,
}

impl Tolerance {
    /// What the crate holds every two-cache step to in f64: only the order
    /// of sums differs from the full batch.
    pub const F64: Tolerance = Tolerance { abs: 1e-13, rel: 1e-12 };
    /// The same in f32.
    pub const F32: Tolerance = Tolerance { abs: 1e-6, rel: 2e-6 };
}

impl ParameterDifference {
    /// Whether this parameter is within `tol`.
    pub fn within(&self, tol: Tolerance) -> bool {
        self.max_abs_diff <= tol.abs + tol.rel * self.reference_max_abs
    }
}

/// Per-parameter differences between two gradient snapshots.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientComparison {
    /// One entry per parameter, sorted by name.
    pub parameters: Vec<ParameterDifference>,
}

impl GradientComparison {
    /// The parameters outside `tol`.
    pub fn failures(&self, tol: Tolerance) -> Vec<&ParameterDifference> {
        self.parameters.iter().filter(|p| !p.within(tol)).collect()
    }

    /// The largest relative difference over all parameters.
    pub fn max_rel_diff(&self) -> f64 {
        self.parameters.iter().map(|p| p.max_rel_diff).fold(0.0, f64::max)
    }

    /// The largest share of `tol` used by any parameter:
    /// `max |g − g_ref| / (abs + rel · max |g_ref|)`; at most 1 when every
    /// parameter passes.
    pub fn tolerance_used(&self, tol: Tolerance) -> f64 {
        self.parameters.iter().map(|p| p.max_abs_diff / (tol.abs + tol.rel * p.reference_max_abs)).fold(0.0, f64::max)
    }

    /// The largest absolute difference over all parameters.
    pub fn max_abs_diff(&self) -> f64 {
        self.parameters.iter().map(|p| p.max_abs_diff).fold(0.0, f64::max)
    }
}

impl fmt::Display for GradientComparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<40} {:>12} {:>12} {:>12}", "parameter", "max|Δ|", "max|Δ|/max|g|", "max|g|")?;
        for p in &self.parameters {
            writeln!(f, "{:<40} {:>12.3e} {:>12.3e} {:>12.3e}", p.name, p.max_abs_diff, p.max_rel_diff, p.reference_max_abs)?;
        }
        Ok(())
    }
}

mod head;
pub use head::{check_head, CouplingCheck, HeadCheckReport};

/// The largest absolute element of a tensor, as f64 (0 for an empty one).
///
/// # Errors
/// libtorch errors.
pub fn max_abs(t: &Tensor) -> Result<f64> {
    crate::util::max_abs(t)
}
