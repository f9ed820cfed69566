//! BERT's forward pass with fused GELU and scaled-dot-product attention,
//! over the same weight names as Hugging Face's `BertModel` (and rust-bert's);
//! with RoBERTa's position numbering, XLM-RoBERTa's and RoBERTa's too.
//!
//! rust-bert computes GELU as five element-wise operations (and their
//! backward), which on a CPU made its layers ~1.15x slower than
//! transformers on the same work; here GELU is one libtorch kernel and
//! attention one `scaled_dot_product_attention` call, which puts the
//! element-wise work and the step time level with transformers
//! (`docs/encoder-speed.md`). The default implementation.

use rust_bert::bert::BertConfig;
use rust_bert::Activation;
use tch::{nn, Kind, Tensor};

use super::layers::{LayerNorm, Linear};
use crate::error::{GradCacheError, Result};
use crate::models::pretrained::PositionIds;

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// The BERT body: embeddings and encoder layers, no pooler.
pub(crate) struct FusedBert {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: i64,
    hidden_dropout: f64,
    attention_dropout: f64,
    activation: Activation,
    positions: PositionIds,
}

impl FusedBert {
    /// Creates the variables under `p` (`embeddings.*`, `encoder.layer.N.*`),
    /// initialised as BERT is (N(0, `initializer_range`), LayerNorm 1 and 0),
    /// ready to be overwritten by pretrained weights.
    pub(crate) fn new(p: &nn::Path, config: &BertConfig, layer_norm_eps: f64, positions: PositionIds) -> Result<Self> {
        let activation = match config.hidden_act {
            a @ (Activation::gelu | Activation::gelu_new | Activation::relu) => a,
            _ => return Err(GradCacheError::InvalidConfig { field: "hidden_act", reason: "must be gelu, gelu_new or relu" }),
        };
        let d = config.hidden_size;
        if config.num_attention_heads <= 0 || d % config.num_attention_heads != 0 {
            return Err(GradCacheError::InvalidConfig { field: "num_attention_heads", reason: "must divide hidden_size" });
        }
        let e = p / "embeddings";
        let sigma = f64::from(config.initializer_range);
        let normal = nn::Init::Randn { mean: 0.0, stdev: sigma };
        let mut layers = Vec::new();
        for i in 0..config.num_hidden_layers {
            let l = p / "encoder" / "layer" / i;
            let (attn, out) = (&l / "attention", &l / "output");
            layers.push(Layer {
                query: Linear::new(&attn / "self" / "query", d, d, true, sigma)?,
                key: Linear::new(&attn / "self" / "key", d, d, true, sigma)?,
                value: Linear::new(&attn / "self" / "value", d, d, true, sigma)?,
                attention_output: Linear::new(&attn / "output" / "dense", d, d, true, sigma)?,
                attention_norm: LayerNorm::new(&attn / "output" / "LayerNorm", d, true, layer_norm_eps)?,
                intermediate: Linear::new(&l / "intermediate" / "dense", d, config.intermediate_size, true, sigma)?,
                output: Linear::new(&out / "dense", config.intermediate_size, d, true, sigma)?,
                output_norm: LayerNorm::new(&out / "LayerNorm", d, true, layer_norm_eps)?,
            });
        }
        Ok(FusedBert {
            word: (&e / "word_embeddings").f_var("weight", &[config.vocab_size, d], normal)?,
            position: (&e / "position_embeddings").f_var("weight", &[config.max_position_embeddings, d], normal)?,
            token_type: (&e / "token_type_embeddings").f_var("weight", &[config.type_vocab_size, d], normal)?,
            embedding_norm: LayerNorm::new(&e / "LayerNorm", d, true, layer_norm_eps)?,
            layers,
            heads: config.num_attention_heads,
            hidden_dropout: config.hidden_dropout_prob,
            attention_dropout: config.attention_probs_dropout_prob,
            activation,
            positions,
        })
    }

    fn activate(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.activation {
            Activation::gelu_new => x.f_gelu("tanh")?,
            Activation::relu => x.f_relu()?,
            _ => x.f_gelu("none")?,
        })
    }

    /// A layer's self-attention and its residual norm.
    ///
    /// # Shapes
    /// `x`: `[n, L, d]`; `keys`: `[n, 1, 1, L]` bool; returns `[n, L, d]`.
    fn attention(&self, layer: &Layer, x: &Tensor, keys: &Tensor, train: bool) -> Result<Tensor> {
        let (n, len, d) = x.size3()?;
        let split = |t: Tensor| -> Result<Tensor> { Ok(t.f_view([n, len, self.heads, d / self.heads])?.f_transpose(1, 2)?) };
        let p_attention = if train { self.attention_dropout } else { 0.0 };
        let (q, k, v) = (split(layer.query.forward(x)?)?, split(layer.key.forward(x)?)?, split(layer.value.forward(x)?)?);
        let context = Tensor::f_scaled_dot_product_attention(&q, &k, &v, Some(keys), p_attention, false, None)?
            .f_transpose(1, 2)?
            .f_reshape([n, len, d])?;
        let attended = layer.attention_output.forward(&context)?.f_dropout(self.hidden_dropout, train)?;
        layer.attention_norm.forward(&attended.f_add(x)?)
    }

    /// A layer's feed-forward block and its residual norm.
    ///
    /// # Shapes
    /// `[n, L, d]` → `[n, L, d]`.
    fn feed_forward(&self, layer: &Layer, a: &Tensor, train: bool) -> Result<Tensor> {
        let hidden = self.activate(&layer.intermediate.forward(a)?)?;
        let out = layer.output.forward(&hidden)?.f_dropout(self.hidden_dropout, train)?;
        layer.output_norm.forward(&out.f_add(a)?)
    }

    /// Token states.
    ///
    /// # Shapes
    /// `ids`, `mask`: `[n, L]` int64; returns `[n, L, d]`.
    pub(crate) fn forward(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let (n, len) = (ids.size()[0], ids.size()[1]);
        let positions = match self.positions {
            PositionIds::FromZero => Tensor::f_arange(len, (Kind::Int64, ids.device()))?,
            // transformers numbers real tokens from padding_idx + 1 and gives
            // padding padding_idx (from the ids; here from the mask, which
            // marks the same tokens).
            PositionIds::AfterPadding { padding_idx } => {
                let real = mask.f_ne(0)?.f_to_kind(Kind::Int64)?;
                real.f_cumsum(1, Kind::Int64)?.f_mul(&real)?.f_add_scalar(padding_idx)?
            }
        };
        let x = crate::runtime::embedding::embedding(&self.word, ids)?
            .f_add(&Tensor::f_embedding(&self.position, &positions, -1, false, false)?)?
            .f_add(&self.token_type.f_get(0)?)?;
        let mut x = self.embedding_norm.forward(&x)?.f_dropout(self.hidden_dropout, train)?;
        // SDPA's boolean mask: true where a key may be attended. (A mask-free
        // call, which would let SDPA pick its fused kernels when nothing is
        // padded, fails through tch 0.17 with libtorch 2.4: the absent mask
        // arrives as an undefined tensor that SDPA's input check rejects.)
        let keys = mask.f_ne(0)?.f_view([n, 1, 1, len])?;
        for layer in &self.layers {
            let attended = self.attention(layer, &x, &keys, train)?;
            x = self.feed_forward(layer, &attended, train)?;
        }
        Ok(x)
    }
}
