//! An interaction block over separately encoded token matrices, in the
//! style of MORES (Gao et al. 2020): the reranker-style head.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::attention::{heads_divide, multi_head};
use super::expect_tokens;
use crate::core::head::ScoringHead;
use crate::core::representation::Representation;
use crate::error::{GradCacheError, Result};
use crate::util::{layer_norm, linear};

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
    /// The residual start (`null`: off): see [`super::ResidualConfig`].
    pub residual: Option<super::ResidualConfig>,
    /// Where the weights start: random, or copied from the encoder's top
    /// transformer layer ([`copy_bert_layer`]; MORES' initialisation), which
    /// needs `dim`, `heads` and `ffn` equal to that layer's.
    pub init: InteractionInit,
}

/// Where an [`InteractionHead`]'s weights start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InteractionInit {
    /// Random (the score layer too).
    #[default]
    Random,
    /// Cross- and self-attention both from the top layer's attention, the
    /// feed-forward layer from its feed-forward layer, every LayerNorm from
    /// the one that follows the copied sub-layer; the score layer random.
    EncoderTopLayer,
}

impl Default for InteractionConfig {
    fn default() -> Self {
        InteractionConfig { dim: 384, heads: 6, ffn: 768, dropout: 0.1, residual: super::residual_default(), init: InteractionInit::Random }
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
        crate::util::check_dropout(self.dropout)?;
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
/// Only `x₀` is read, and after the cross-attention every sub-layer acts on
/// each position separately except through the self-attention's keys and
/// values; so the self-attention is computed for position 0 alone (its keys
/// and values still from every position) and the feed-forward layer on `x₀`
/// alone: the same score for a fraction of the work.
///
/// Per block, the cross-attention's query projection runs once per query
/// and its key/value projections once per passage; everything after is
/// per pair. Parameters: `8d² + 2df + d` weights plus biases and norms.
/// Cost per pair: `Lq·Lp·d + Lq·d²` (cross) + `2·Lq·d² + Lq·d + 2d²`
/// (self) + `2·d·f` (FFN). Activation memory per block: `[a, b, H, Lq, Lp]`
/// attention weights and a few `[a, b, Lq, d]` tensors.
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
        let q = linear(u, &self.cross.query)?.f_unsqueeze(1)?;
        let k = linear(v, &self.cross.key)?.f_unsqueeze(0)?;
        let val = linear(v, &self.cross.value)?.f_unsqueeze(0)?;
        let cross = multi_head(&q, &k, &val, &mp.f_unsqueeze(0)?, h, p, train)?; // [a, b, Lq, d]
        let x = layer_norm(&u.f_unsqueeze(1)?.f_add(&linear(&cross, &self.cross.output)?.f_dropout(p, train)?)?, &self.cross_norm)?;
        let sa = &self.self_attention;
        let first = x.f_narrow(2, 0, 1)?; // [a, b, 1, d]
        let own =
            multi_head(&linear(&first, &sa.query)?, &linear(&x, &sa.key)?, &linear(&x, &sa.value)?, &mq.f_unsqueeze(1)?, h, p, train)?;
        let x0 = layer_norm(&first.f_add(&linear(&own, &sa.output)?.f_dropout(p, train)?)?, &self.self_norm)?;
        let ffn = linear(&linear(&x0, &self.up)?.f_gelu("none")?, &self.down)?.f_dropout(p, train)?;
        let x0 = layer_norm(&x0.f_add(&ffn)?, &self.ffn_norm)?;
        Ok(linear(&x0.f_squeeze_dim(2)?, &self.score)?.f_squeeze_dim(-1)?)
    }

    /// Per item its projections (queries `2·Lq·d²`, passages' keys and
    /// values `4·Lp·d²`); per pair the cross-attention (`4·Lq·Lp·d`), its
    /// output (`2·Lq·d²`), the first position's self-attention (keys and
    /// values `4·Lq·d²`, its query and output `4·d²`, scores `4·Lq·d`), the
    /// feed-forward layer (`4·d·f`) and the score (`2·d`).
    fn score_flops(&self, queries: &Representation, passages: &Representation) -> Option<f64> {
        let ((a, lq, d), (b, lp, _)) = (super::dims(queries), super::dims(passages));
        let f = self.up.ws.size()[0] as f64;
        let per_pair = 4.0 * lq * lp * d + 6.0 * lq * d * d + 4.0 * d * d + 4.0 * lq * d + 4.0 * d * f + 2.0 * d;
        Some(2.0 * a * lq * d * d + 4.0 * b * lp * d * d + a * b * per_pair)
    }
}

/// Which BERT layer variable each interaction-block variable is copied from
/// (suffixes of `.weight` and `.bias`).
const FROM_BERT_LAYER: [(&str, &str); 13] = [
    ("cross.query", "attention.self.query"),
    ("cross.key", "attention.self.key"),
    ("cross.value", "attention.self.value"),
    ("cross.output", "attention.output.dense"),
    ("cross_norm", "attention.output.LayerNorm"),
    ("self.query", "attention.self.query"),
    ("self.key", "attention.self.key"),
    ("self.value", "attention.self.value"),
    ("self.output", "attention.output.dense"),
    ("self_norm", "attention.output.LayerNorm"),
    ("ffn.up", "intermediate.dense"),
    ("ffn.down", "output.dense"),
    ("ffn_norm", "output.LayerNorm"),
];

/// Copies a BERT layer's weights into an interaction block in the same
/// `VarStore` (MORES' initialisation): the layer's self-attention into both
/// the cross- and the self-attention, its feed-forward layer into the
/// block's; the score layer keeps its own initialisation.
///
/// `layer` is the layer's variable prefix (e.g.
/// `encoder.bert.encoder.layer.5`, see
/// [`crate::models::encoders::TextEncoder::top_layer_prefix`]), `head` the block's
/// (e.g. `head`). The attention is only the same function when the block
/// has the layer's number of heads: the caller checks that
/// (`InteractionConfig::heads` against the model's `num_attention_heads`).
///
/// # Errors
/// [`GradCacheError::LayerInit`] naming the first variable that is missing
/// on either side or whose shapes differ.
pub fn copy_bert_layer(vs: &nn::VarStore, layer: &str, head: &str) -> Result<()> {
    let vars = vs.variables();
    let fail = |reason: String| GradCacheError::LayerInit { head: head.to_string(), layer: layer.to_string(), reason };
    tch::no_grad(|| {
        for (to, from) in FROM_BERT_LAYER {
            for part in ["weight", "bias"] {
                let (dst_name, src_name) = (format!("{head}.{to}.{part}"), format!("{layer}.{from}.{part}"));
                let dst = vars.get(&dst_name).ok_or_else(|| fail(format!("the head has no variable `{dst_name}`")))?;
                let src = vars.get(&src_name).ok_or_else(|| fail(format!("the encoder has no variable `{src_name}`")))?;
                if dst.size() != src.size() {
                    return Err(fail(format!("`{dst_name}` is {:?} but `{src_name}` is {:?}", dst.size(), src.size())));
                }
                dst.shallow_clone().f_copy_(src)?;
            }
        }
        Ok(())
    })
}
