//! Mixture of Logits (Zhai et al., KDD 2023; Ding, Zhai et al., 2024): a
//! gated mixture of dot products between component embeddings of the two
//! sides.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use super::{cosine::unit, expect_vectors};
use crate::core::head::ScoringHead;
use crate::core::layout::Side;
use crate::core::representation::Representation;
use crate::error::{GradCacheError, Result};

/// What the gate `π(q, x)` over the `K = P_q·P_x` component pairs reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MolGate {
    /// Both sides and the pair: `SiLU(A u) ⊙ (B v)` plus a linear map of the
    /// pair's `K` component logits (the papers' "glu_silu").
    GluSilu,
    /// The pair's `K` component logits alone, through a linear map.
    Logits,
}

/// Configuration of [`MolHead`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MolHeadConfig {
    /// Representation width `d` (the pooled vector each side reads).
    pub dim: usize,
    /// Query components `P_q`.
    pub query_components: usize,
    /// Passage components `P_x`.
    pub passage_components: usize,
    /// Width `c` of each component embedding.
    pub component_dim: usize,
    /// Temperature `τ`: scores are the mixed cosine logits over `τ`.
    pub temperature: f64,
    /// What the gate reads.
    pub gate: MolGate,
    /// Dropout on the gate weights after the softmax (train mode only).
    pub dropout: f64,
    /// Weight `λ` of the load-balancing term `λ·B` (0: none;
    /// [`crate::core::balance`]).
    pub balance: f64,
    /// The residual start (`null`: off): see [`super::ResidualConfig`].
    pub residual: Option<super::ResidualConfig>,
}

impl Default for MolHeadConfig {
    fn default() -> Self {
        MolHeadConfig {
            dim: 384,
            query_components: 8,
            passage_components: 4,
            component_dim: 64,
            temperature: 0.05,
            gate: MolGate::GluSilu,
            dropout: 0.1,
            balance: 1e-3,
            residual: super::residual_default(),
        }
    }
}

impl MolHeadConfig {
    /// `K = P_q·P_x`, the component pairs a gate mixes.
    pub fn mixtures(&self) -> usize {
        self.query_components * self.passage_components
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("dim", self.dim),
            ("query_components", self.query_components),
            ("passage_components", self.passage_components),
            ("component_dim", self.component_dim),
        ] {
            if v == 0 {
                return Err(GradCacheError::InvalidConfig { field, reason: "must be at least 1" });
            }
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(GradCacheError::InvalidConfig { field: "temperature", reason: "must be finite and positive" });
        }
        if !(self.balance.is_finite() && self.balance >= 0.0) {
            return Err(GradCacheError::InvalidConfig { field: "balance", reason: "must be finite and at least 0" });
        }
        crate::util::check_dropout(self.dropout)?;
        Ok(())
    }

    /// Creates the head's weights under `path`: `query_components`
    /// (`[P_q·c, d]` and bias), `passage_components` (`[P_x·c, d]` and
    /// bias), `gate.logits` (`[K, K]` and bias) and, for the "glu_silu"
    /// gate, `gate.query` and `gate.passage` (`[K, d]` and bias each).
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] from [`MolHeadConfig::validate`].
    pub fn init(&self, path: &nn::Path) -> Result<MolHead> {
        self.validate()?;
        let (d, c, k) = (self.dim as i64, self.component_dim as i64, self.mixtures() as i64);
        let gate = path / "gate";
        let sides = match self.gate {
            MolGate::GluSilu => {
                Some((nn::linear(&gate / "query", d, k, Default::default()), nn::linear(&gate / "passage", d, k, Default::default())))
            }
            MolGate::Logits => None,
        };
        Ok(MolHead {
            query: nn::linear(path / "query_components", d, self.query_components as i64 * c, Default::default()),
            passage: nn::linear(path / "passage_components", d, self.passage_components as i64 * c, Default::default()),
            gate_logits: nn::linear(&gate / "logits", k, k, Default::default()),
            gate_sides: sides,
            config: self.clone(),
        })
    }
}

/// `s(q, x) = Σ_{i,j} π_ij(q, x) · ⟨f_i(q), g_j(x)⟩ / τ`.
///
/// The query's pooled vector `u` gives `P_q` component embeddings
/// `f_i = unit((W_q u + b_q)_i)`, the passage's `v` gives `P_x`
/// `g_j = unit((W_x v + b_x)_j)`, each of width `c`. The `K = P_q·P_x`
/// cosine logits `l_ij = ⟨f_i, g_j⟩` of a pair are mixed by the gate
/// `π = softmax(z)`, with `z = G l + b_G` (+ `SiLU(A u + b_A) ⊙ (B v + b_B)`
/// for [`MolGate::GluSilu`]), dropout applied to `π` in train mode. The
/// gates are returned by [`ScoringHead::score_gated`] for the
/// load-balancing term.
///
/// Cost per pair: `K·c` multiply-adds for the logits, `K²` for the gate,
/// `K` for the mixture; per item `d·(P·c + K)`. Activation memory per
/// block: a few `[a, b, K]` tensors.
#[derive(Debug)]
pub struct MolHead {
    query: nn::Linear,
    passage: nn::Linear,
    gate_logits: nn::Linear,
    gate_sides: Option<(nn::Linear, nn::Linear)>,
    config: MolHeadConfig,
}

fn linear(x: &Tensor, l: &nn::Linear) -> Result<Tensor> {
    crate::util::linear(x, l)
}

impl MolHead {
    /// The configuration.
    pub fn config(&self) -> &MolHeadConfig {
        &self.config
    }

    fn checked<'r>(&self, rep: &'r Representation) -> Result<&'r Tensor> {
        let t = expect_vectors(rep, "MolHead")?;
        if t.size()[1] != self.config.dim as i64 {
            return Err(GradCacheError::Shape { what: "MolHead input", expected: "[n, dim]", got: t.size() });
        }
        Ok(t)
    }

    /// The query side's unit component embeddings.
    ///
    /// # Shapes
    /// `queries`: `[a, d]` vectors; returns `[a, P_q, c]`.
    ///
    /// # Errors
    /// [`GradCacheError::RepresentationKind`], [`GradCacheError::Shape`].
    pub fn query_components(&self, queries: &Representation) -> Result<Tensor> {
        let u = self.checked(queries)?;
        unit(&linear(u, &self.query)?.f_view([u.size()[0], self.config.query_components as i64, self.config.component_dim as i64])?)
    }

    /// The passage side's unit component embeddings.
    ///
    /// # Shapes
    /// `passages`: `[b, d]` vectors; returns `[b, P_x, c]`.
    ///
    /// # Errors
    /// [`GradCacheError::RepresentationKind`], [`GradCacheError::Shape`].
    pub fn passage_components(&self, passages: &Representation) -> Result<Tensor> {
        let v = self.checked(passages)?;
        unit(&linear(v, &self.passage)?.f_view([v.size()[0], self.config.passage_components as i64, self.config.component_dim as i64])?)
    }
}

impl ScoringHead for MolHead {
    fn score(&self, queries: &Representation, passages: &Representation, train: bool) -> Result<Tensor> {
        Ok(self.score_gated(queries, passages, train)?.0)
    }

    fn balance_weight(&self) -> f64 {
        self.config.balance
    }

    fn components(&self, rep: &Representation, side: Side) -> Option<Result<Tensor>> {
        Some(match side {
            Side::Queries => self.query_components(rep),
            Side::Passages => self.passage_components(rep),
        })
    }

    fn score_gated(&self, queries: &Representation, passages: &Representation, train: bool) -> Result<(Tensor, Option<Tensor>)> {
        let (f, g) = (self.query_components(queries)?, self.passage_components(passages)?);
        let (a, pq, c) = (f.size()[0], f.size()[1], f.size()[2]);
        let (b, px) = (g.size()[0], g.size()[1]);
        let k = pq * px;
        // [a·P_q, c] × [c, b·P_x] → [a, P_q, b, P_x] → [a, b, K] (i-major).
        let logits = f
            .f_reshape([a * pq, c])?
            .f_matmul(&g.f_reshape([b * px, c])?.f_tr()?)?
            .f_view([a, pq, b, px])?
            .f_permute([0, 2, 1, 3])?
            .f_reshape([a, b, k])?;
        let mut z = linear(&logits, &self.gate_logits)?;
        if let Some((gq, gp)) = &self.gate_sides {
            let (u, v) = (self.checked(queries)?, self.checked(passages)?);
            let side = linear(u, gq)?.f_silu()?.f_unsqueeze(1)?.f_mul(&linear(v, gp)?.f_unsqueeze(0)?)?;
            z = z.f_add(&side)?;
        }
        let gates = z.f_softmax(-1, z.kind())?;
        let mixed = gates.f_dropout(self.config.dropout, train)?.f_mul(&logits)?.f_sum_dim_intlist(-1, false, None::<Kind>)?;
        Ok((mixed.f_div_scalar(self.config.temperature)?, Some(gates)))
    }

    /// Per pair the `K` logits of width `c` and the gate's `K × K` map
    /// (`2·(K·c + K²)`), per item its components (`2·d·P·c`) and, for the
    /// "glu_silu" gate, its gate side (`2·d·K`).
    fn score_flops(&self, queries: &Representation, passages: &Representation) -> Option<f64> {
        let ((a, _, d), (b, _, _)) = (super::dims(queries), super::dims(passages));
        let c = &self.config;
        let (k, cd) = (c.mixtures() as f64, c.component_dim as f64);
        let sides = if self.gate_sides.is_some() { k } else { 0.0 };
        let items = 2.0 * d * (a * (c.query_components as f64 * cd + sides) + b * (c.passage_components as f64 * cd + sides));
        Some(2.0 * a * b * (k * cd + k * k) + items)
    }
}
