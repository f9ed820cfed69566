//! The dot product: the parameter-free special case.

use tch::Tensor;

use super::expect_vectors;
use crate::core::head::{RepresentationGradients, ScoringHead};
use crate::core::representation::Representation;
use crate::error::Result;

/// `s_ij = ⟨u_i, v_j⟩`. Cost per pair: `d` multiply-adds; activation memory
/// per block: the `[a, b]` scores. Gives closed-form gradients, so the step
/// skips the head pass. (Scale by a temperature in the loss; normalise in
/// the encoder for cosine.)
#[derive(Debug, Clone, Copy, Default)]
pub struct DotHead;

impl ScoringHead for DotHead {
    fn score(&self, queries: &Representation, passages: &Representation, _train: bool) -> Result<Tensor> {
        let u = expect_vectors(queries, "DotHead")?;
        let v = expect_vectors(passages, "DotHead")?;
        Ok(u.f_matmul(&v.f_tr()?)?)
    }

    /// `2·a·b·d`.
    fn score_flops(&self, queries: &Representation, passages: &Representation) -> Option<f64> {
        let ((a, _, d), (b, _, _)) = (super::dims(queries), super::dims(passages));
        Some(2.0 * a * b * d)
    }

    fn closed_form_gradients(
        &self,
        queries: &Representation,
        passages: &Representation,
        weights: &Tensor,
    ) -> Option<Result<RepresentationGradients>> {
        Some((|| {
            let kind = weights.kind();
            let u = expect_vectors(queries, "DotHead")?.f_to_kind(kind)?;
            let v = expect_vectors(passages, "DotHead")?.f_to_kind(kind)?;
            Ok(RepresentationGradients { queries: weights.f_matmul(&v)?, passages: weights.f_tr()?.f_matmul(&u)? })
        })())
    }
}
