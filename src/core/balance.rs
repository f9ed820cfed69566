//! The load-balancing term of a gated head (Mixture of Logits), exact under
//! chunking and blocking: the step's third cache.
//!
//! A gated head mixes `K` components per pair with weights `π(q, x)`, a
//! distribution over `K`. Its term, over the `n = N·M` pairs of the batch's
//! score matrix, is
//!
//! ```text
//! B = −H(ḡ) + (1/n) Σ_pairs H(π),   ḡ = (1/n) Σ_pairs π,   H(p) = −Σ_k p_k log p_k
//! ```
//!
//! (high entropy of the batch's mean gate: every component in use; low
//! entropy per pair: each pair decides). The loss is `L(S) + λ·B`. `B` is
//! not a sum of per-pair terms — `ḡ` couples every block — but its gradient
//! per pair is:
//!
//! ```text
//! ∂(λB)/∂π_pair = (λ/n) (log ḡ + 1) + (λ/n) ∂H(π_pair)/∂π_pair
//! ```
//!
//! So once the score pass has summed the gates of every block (a `K`-vector,
//! [`GateTotals`]), each block's head pass backpropagates the surrogate
//! `Σ_pairs ⟨c, π⟩ + (λ/n) Σ_pairs H(π)` with `c = (λ/n)(log ḡ + 1)` fixed
//! ([`Balance`]): the same gradient as `λ·B` over the whole batch, one
//! block at a time. The full-batch reference differentiates `λ·B` itself
//! ([`GateTotals::term`]) through `ḡ`.

use tch::{Kind, Tensor};

use crate::error::Result;

/// `Σ_pairs π` and `Σ_pairs H(π)` over some blocks' gates, in f64: with
/// graph where the gates have one (the full-batch reference), detached
/// otherwise.
///
/// # Shapes
/// `sum`: `[K]`; `entropy`: a scalar.
#[derive(Debug)]
pub struct GateTotals {
    /// `Σ_pairs π`.
    pub sum: Tensor,
    /// `Σ_pairs H(π)`.
    pub entropy: Tensor,
    /// The number of pairs summed.
    pub pairs: i64,
}

/// `−Σ_k p_k log p_k` summed over every leading index (0 log 0 = 0).
fn entropy_sum(p: &Tensor) -> Result<Tensor> {
    Ok(p.f_xlogy(p)?.f_sum(p.kind())?.f_neg()?)
}

impl GateTotals {
    /// The totals of one block's gates.
    ///
    /// # Shapes
    /// `gates`: `[a, b, K]`.
    ///
    /// # Errors
    /// libtorch errors.
    pub fn of(gates: &Tensor) -> Result<GateTotals> {
        let k = *gates.size().last().unwrap_or(&0);
        let g = gates.f_to_kind(Kind::Double)?.f_reshape([-1, k])?;
        Ok(GateTotals { sum: g.f_sum_dim_intlist(0, false, Kind::Double)?, entropy: entropy_sum(&g)?, pairs: g.size()[0] })
    }

    /// Both totals added.
    ///
    /// # Errors
    /// libtorch errors (e.g. different `K`).
    pub fn merge(self, other: GateTotals) -> Result<GateTotals> {
        Ok(GateTotals { sum: self.sum.f_add(&other.sum)?, entropy: self.entropy.f_add(&other.entropy)?, pairs: self.pairs + other.pairs })
    }

    /// Adds the totals of one block's `gates` (`None`: a head without
    /// gates, nothing added) into `total`: the one accumulation the score
    /// pass, the full-batch reference and a process's share all use.
    ///
    /// # Errors
    /// libtorch errors.
    pub fn accumulate(total: &mut Option<GateTotals>, gates: Option<&Tensor>) -> Result<()> {
        if let Some(g) = gates {
            let t = GateTotals::of(g)?;
            *total = Some(match total.take() {
                Some(all) => all.merge(t)?,
                None => t,
            });
        }
        Ok(())
    }

    /// `[Σ π; Σ H]` as one `[K + 1]` tensor, to be summed across processes.
    ///
    /// # Errors
    /// libtorch errors.
    pub fn pack(&self) -> Result<Tensor> {
        Ok(Tensor::f_cat(&[self.sum.shallow_clone(), self.entropy.f_reshape([1])?], 0)?)
    }

    /// The totals of [`GateTotals::pack`]ed tensor over `pairs` pairs.
    ///
    /// # Errors
    /// libtorch errors.
    pub fn unpack(packed: &Tensor, pairs: i64) -> Result<GateTotals> {
        let k = packed.size()[0] - 1;
        Ok(GateTotals { sum: packed.f_narrow(0, 0, k)?, entropy: packed.f_get(k)?, pairs })
    }

    /// `λ·B` of these totals, a scalar (with graph where they have one).
    ///
    /// # Errors
    /// libtorch errors.
    pub fn term(&self, weight: f64) -> Result<Tensor> {
        let n = self.pairs as f64;
        let mean = self.sum.f_div_scalar(n)?;
        Ok(entropy_sum(&mean)?.f_neg()?.f_add(&self.entropy.f_div_scalar(n)?)?.f_mul_scalar(weight)?)
    }
}

/// The third cache: what each block's head pass needs of the whole batch's
/// gates, `c = (λ/n)(log ḡ + 1)` and `λ/n`, and the term's value.
#[derive(Debug)]
pub struct Balance {
    coefficient: Tensor,
    per_pair: f64,
    /// `λ·B`, added to the step's loss.
    pub value: f64,
}

impl Balance {
    /// The cache of the whole batch's gate `totals` (every pair of `S`) for
    /// weight `λ`.
    ///
    /// # Errors
    /// libtorch errors.
    pub fn new(weight: f64, totals: &GateTotals) -> Result<Balance> {
        let n = totals.pairs as f64;
        let mean = totals.sum.f_detach()?.f_div_scalar(n)?;
        let coefficient = mean.f_log()?.f_add_scalar(1.0)?.f_mul_scalar(weight / n)?;
        let value = tch::no_grad(|| totals.term(weight))?.f_double_value(&[])?;
        Ok(Balance { coefficient, per_pair: weight / n, value })
    }

    /// The block's surrogate `Σ_pairs ⟨c, π⟩ + (λ/n) Σ_pairs H(π)`, a
    /// scalar whose gradient is `λ·B`'s for this block's gates.
    ///
    /// # Shapes
    /// `gates`: `[a, b, K]`.
    ///
    /// # Errors
    /// libtorch errors.
    pub fn surrogate(&self, gates: &Tensor) -> Result<Tensor> {
        let g = gates.f_to_kind(Kind::Double)?;
        let linear = g.f_mul(&self.coefficient.f_to_device(g.device())?)?.f_sum(Kind::Double)?;
        Ok(linear.f_add(&entropy_sum(&g)?.f_mul_scalar(self.per_pair)?)?)
    }
}
