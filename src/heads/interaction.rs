//! An interaction block over separately encoded token matrices, in the
//! style of MORES (Gao et al. 2020): the reranker-style head.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::attention::{heads_divide, multi_head};
use super::expect_tokens;
use crate::error::{GradCacheError, Result};
use crate::head::ScoringHead;
use crate::representation::Representation;

/// Configuration of [`InteractionHead`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InteractionConfig {
    /// Representation width `d`.
    pub dim: usize,
    /// Attention heads (must divide `d`).
    pub heads: usize,
    /// Feed-forward width `f`.
    pub ffn: usize,
    /// Dropout on attention weights and on each sub-layer's output.
    pub dropout: f64,
}

impl Default for InteractionConfig {
    fn default() -> Self {
        InteractionConfig { dim: 384, heads: 6, ffn: 768, dropout: 0.1 }
    }
}

impl InteractionConfig {
    /// Creates, under `path`: `cross.{query,key,value,output}`, `cross_norm`,
    /// `self.{query,key,value,output}`, `self_norm`, `ffn.{up,down}`,
    /// `ffn_norm`, `score`.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] for zero sizes, heads not dividing
    /// `dim`, or dropout outside `[0, 1)`.
    pub fn init(&self, path: &nn::Path) -> Result<InteractionHead> {
        if self.dim == 0 || self.ffn == 0 {
            return Err(GradCacheError::InvalidConfig { field: "dim", reason: "dim and ffn must be at least 1" });
        }
        if !heads_divide(self.dim, self.heads) {
            return Err(GradCacheError::InvalidConfig { field: "heads", reason: "must divide dim" });
        }
        crate::config::check_dropout(self.dropout)?;
        let (d, f) = (self.dim as i64, self.ffn as i64);
        let lin = |p: nn::Path, i, o| nn::linear(p, i, o, Default::default());
        let attention = |p: nn::Path| Attention {
            query: lin(&p / "query", d, d),
            key: lin(&p / "key", d, d),
            value: lin(&p / "value", d, d),
            output: lin(&p / "output", d, d),
        };
        let norm = |p: nn::Path| nn::layer_norm(p, vec![d], Default::default());
        Ok(InteractionHead {
            cross: attention(path / "cross"),
            cross_norm: norm(path / "cross_norm"),
            self_attention: attention(path / "self"),
            self_norm: norm(path / "self_norm"),
            up: lin(path / "ffn" / "up", d, f),
            down: lin(path / "ffn" / "down", f, d),
            ffn_norm: norm(path / "ffn_norm"),
            score: lin(path / "score", d, 1),
            config: self.clone(),
        })
    }
}

#[derive(Debug)]
struct Attention {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    output: nn::Linear,
}

/// For each pair: the query's tokens cross-attend to the passage's tokens
/// (`x = LN(u + Attn(u, v))`), then self-attend (`x = LN(x + Attn(x, x))`),
/// then a feed-forward layer (`x = LN(x + W₂ gelu(W₁ x))`); the score is
/// `wᵀ x₀ + b` from the query's first token.
///
/// Per block, the cross-attention's query projection runs once per query
/// and its key/value projections once per passage; everything after is
/// per pair. Parameters: `8d² + 2df + d` weights plus biases and norms.
/// Cost per pair: `Lq·Lp·d` (cross) + `4·Lq·d²` + `Lq²·d` (self) +
/// `2·Lq·d·f` (FFN). Activation memory per block: `[a, b, H, Lq, Lp]`
/// attention weights and a few `[a, b, Lq, d]`, `[a, b, Lq, f]` tensors.
#[derive(Debug)]
pub struct InteractionHead {
    cross: Attention,
    cross_norm: nn::LayerNorm,
    self_attention: Attention,
    self_norm: nn::LayerNorm,
    up: nn::Linear,
    down: nn::Linear,
    ffn_norm: nn::LayerNorm,
    score: nn::Linear,
    config: InteractionConfig,
}

impl ScoringHead for InteractionHead {
    fn score(&self, queries: &Representation, passages: &Representation, train: bool) -> Result<Tensor> {
        let (u, mq) = expect_tokens(queries, "InteractionHead")?;
        let (v, mp) = expect_tokens(passages, "InteractionHead")?;
        if u.size()[2] != self.config.dim as i64 || v.size()[2] != self.config.dim as i64 {
            return Err(GradCacheError::Shape { what: "InteractionHead input", expected: "[n, L, dim]", got: u.size() });
        }
        let (h, p) = (self.config.heads as i64, self.config.dropout);
        // One side only, once per block: [a, 1, Lq, d] and [1, b, Lp, d].
        let q = u.apply(&self.cross.query).f_unsqueeze(1)?;
        let k = v.apply(&self.cross.key).f_unsqueeze(0)?;
        let val = v.apply(&self.cross.value).f_unsqueeze(0)?;
        let cross = multi_head(&q, &k, &val, &mp.f_unsqueeze(0)?, h, p, train)?; // [a, b, Lq, d]
        let x = u.f_unsqueeze(1)?.f_add(&cross.apply(&self.cross.output).f_dropout(p, train)?)?.apply(&self.cross_norm);
        let sa = &self.self_attention;
        let own = multi_head(&x.apply(&sa.query), &x.apply(&sa.key), &x.apply(&sa.value), &mq.f_unsqueeze(1)?, h, p, train)?;
        let x = x.f_add(&own.apply(&sa.output).f_dropout(p, train)?)?.apply(&self.self_norm);
        let ffn = x.apply(&self.up).f_gelu("none")?.apply(&self.down).f_dropout(p, train)?;
        let x = x.f_add(&ffn)?.apply(&self.ffn_norm);
        Ok(x.f_select(2, 0)?.apply(&self.score).f_squeeze_dim(-1)?)
    }
}
