//! The scoring-head trait: the learned "deep distance function" Φ.

use tch::Tensor;

use crate::core::layout::Side;
use crate::core::representation::Representation;
use crate::error::Result;

/// Gradients of the loss with respect to the representations: the
/// representation-gradient cache.
///
/// # Shapes
/// `queries` has the shape of the query representation's tensor (`[N, d]` or
/// `[N, L, d]`), `passages` that of the passages' (`[M, d]` or `[M, L, d]`).
#[derive(Debug)]
pub struct RepresentationGradients {
    /// ∂L/∂U.
    pub queries: Tensor,
    /// ∂L/∂V.
    pub passages: Tensor,
}

/// Scores every query of a block against every passage of a block.
///
/// Parameters live in a `tch::nn::VarStore` under a path given at
/// construction, so the caller's optimizer sees them.
///
/// For the step to be exact, [`ScoringHead::score`] must be a function of
/// its inputs, its parameters and libtorch's global generator only: the head
/// pass recomputes each block after re-seeding the generator, and expects the
/// same scores. A score must depend on its own pair only (no statistics over
/// the block, no batch norm), since blocks are scored separately.
pub trait ScoringHead {
    /// Scores a block.
    ///
    /// # Shapes
    /// `queries` has `a` items, `passages` `b` items; returns `[a, b]`.
    ///
    /// # Errors
    /// Any error of the implementation, e.g.
    /// [`crate::GradCacheError::RepresentationKind`] for the wrong kind of
    /// representation.
    fn score(&self, queries: &Representation, passages: &Representation, train: bool) -> Result<Tensor>;

    /// Matrix-multiply FLOPs of scoring one block of `queries` ×
    /// `passages` (2 per multiply-add), when the head knows them: what the
    /// step's achieved FLOP rate is computed from. `None` (the default):
    /// unknown.
    fn score_flops(&self, queries: &Representation, passages: &Representation) -> Option<f64> {
        let _ = (queries, passages);
        None
    }

    /// The weight `λ` of the head's load-balancing term `λ·B` over the
    /// gates of every scored pair ([`crate::core::balance`]); 0, the
    /// default, for a head without gates. A head that returns more than 0
    /// returns its gates from [`ScoringHead::score_gated`].
    fn balance_weight(&self) -> f64 {
        0.0
    }

    /// Scores a block as [`ScoringHead::score`] does and, for a head with
    /// a load-balancing term, returns each pair's gate weights `π` (a
    /// distribution over the head's `K` mixture components, before any
    /// dropout). The default: `score`'s scores, no gates.
    ///
    /// # Shapes
    /// Returns `[a, b]` scores and `[a, b, K]` gates.
    ///
    /// # Errors
    /// As [`ScoringHead::score`].
    fn score_gated(&self, queries: &Representation, passages: &Representation, train: bool) -> Result<(Tensor, Option<Tensor>)> {
        Ok((self.score(queries, passages, train)?, None))
    }

    /// For a head whose score mixes dot products of per-side component
    /// embeddings (Mixture of Logits), each item's unit component
    /// embeddings on `side`: what an index stores and what approximate top-k
    /// search reads. `None` (the default) for other heads.
    ///
    /// # Shapes
    /// `rep`: `n` items; returns `[n, P, c]` (`P` the side's components).
    fn components(&self, rep: &Representation, side: Side) -> Option<Result<Tensor>> {
        let _ = (rep, side);
        None
    }

    /// ∂L/∂U and ∂L/∂V in closed form, given the whole batch's
    /// representations and the distance-gradient cache `W = ∂L/∂S`. A head
    /// with parameters must return `None` (the default): its parameters get
    /// their gradient only from the head pass. When this returns `Some`, the
    /// step skips the head pass.
    ///
    /// # Shapes
    /// `queries`: `N` items; `passages`: `M` items; `weights`: `[N, M]`.
    fn closed_form_gradients(
        &self,
        queries: &Representation,
        passages: &Representation,
        weights: &Tensor,
    ) -> Option<Result<RepresentationGradients>> {
        let _ = (queries, passages, weights);
        None
    }
}
