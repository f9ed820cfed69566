//! ModernBERT's forward pass over the weight names of transformers'
//! `ModernBertModel`: token embeddings and a LayerNorm (no positions);
//! pre-norm layers (layer 0 reads the embeddings' norm directly) with one
//! fused QKV projection, rotary position embeddings, attention that is
//! global every `global_attn_every_n_layers` layers and within a sliding
//! window between, and a gated MLP (`act(x W_in) * (x W_gate)`); a final
//! LayerNorm. Attention is one scaled-dot-product-attention call per layer,
//! as in the fused BERT layers; the computation follows transformers' SDPA
//! path (the padded one it runs on CPUs), rotary tables included.

use tch::{nn, Kind, Tensor};

use super::layers::{LayerNorm, Linear};
use crate::error::{GradCacheError, Result};
use crate::models::pretrained::ModernBertConfig;

struct Layer {
    /// Absent in layer 0, which reads the embeddings' norm.
    attn_norm: Option<LayerNorm>,
    wqkv: Linear,
    wo: Linear,
    mlp_norm: LayerNorm,
    wi: Linear,
    mlp_wo: Linear,
    /// Global attention; else within the sliding window.
    global: bool,
}

#[derive(Clone, Copy)]
enum Activation {
    Gelu,
    GeluTanh,
    Relu,
    Silu,
}

/// The ModernBERT body: embeddings, layers and the final norm.
pub(crate) struct ModernBert {
    tok: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    heads: i64,
    window: i64,
    global_theta: f64,
    local_theta: f64,
    activation: Activation,
    embedding_dropout: f64,
    attention_dropout: f64,
    mlp_dropout: f64,
}

impl ModernBert {
    /// Creates the variables under `p` (`embeddings.*`, `layers.N.*`,
    /// `final_norm.*`), initialised N(0, `initializer_range`), norms 1 and
    /// 0, ready to be overwritten by pretrained weights.
    pub(crate) fn new(p: &nn::Path, c: &ModernBertConfig) -> Result<Self> {
        let activation = match c.hidden_activation.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            _ => {
                return Err(GradCacheError::InvalidConfig {
                    field: "hidden_activation",
                    reason: "must be gelu, gelu_new, gelu_pytorch_tanh, relu or silu",
                })
            }
        };
        let d = c.hidden_size;
        if c.num_attention_heads <= 0 || d % c.num_attention_heads != 0 || (d / c.num_attention_heads) % 2 != 0 {
            return Err(GradCacheError::InvalidConfig {
                field: "num_attention_heads",
                reason: "must divide hidden_size into heads of even width",
            });
        }
        if c.global_attn_every_n_layers <= 0 {
            return Err(GradCacheError::InvalidConfig { field: "global_attn_every_n_layers", reason: "must be at least 1" });
        }
        let sigma = c.initializer_range;
        let e = p / "embeddings";
        let mut layers = Vec::new();
        for i in 0..c.num_hidden_layers {
            let l = p / "layers" / i;
            layers.push(Layer {
                attn_norm: if i == 0 { None } else { Some(LayerNorm::new(&l / "attn_norm", d, c.norm_bias, c.norm_eps)?) },
                wqkv: Linear::new(&l / "attn" / "Wqkv", d, 3 * d, c.attention_bias, sigma)?,
                wo: Linear::new(&l / "attn" / "Wo", d, d, c.attention_bias, sigma)?,
                mlp_norm: LayerNorm::new(&l / "mlp_norm", d, c.norm_bias, c.norm_eps)?,
                wi: Linear::new(&l / "mlp" / "Wi", d, 2 * c.intermediate_size, c.mlp_bias, sigma)?,
                mlp_wo: Linear::new(&l / "mlp" / "Wo", c.intermediate_size, d, c.mlp_bias, sigma)?,
                global: i % c.global_attn_every_n_layers == 0,
            });
        }
        Ok(ModernBert {
            tok: (&e / "tok_embeddings").f_var("weight", &[c.vocab_size, d], nn::Init::Randn { mean: 0.0, stdev: sigma })?,
            embedding_norm: LayerNorm::new(&e / "norm", d, c.norm_bias, c.norm_eps)?,
            layers,
            final_norm: LayerNorm::new(p / "final_norm", d, c.norm_bias, c.norm_eps)?,
            heads: c.num_attention_heads,
            window: c.local_attention / 2,
            global_theta: c.global_rope_theta,
            local_theta: c.local_rope_theta.unwrap_or(c.global_rope_theta),
            activation,
            embedding_dropout: c.embedding_dropout,
            attention_dropout: c.attention_dropout,
            mlp_dropout: c.mlp_dropout,
        })
    }

    fn activate(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.activation {
            Activation::Gelu => x.f_gelu("none")?,
            Activation::GeluTanh => x.f_gelu("tanh")?,
            Activation::Relu => x.f_relu()?,
            Activation::Silu => x.f_silu()?,
        })
    }

    /// The rotary tables `cos`, `sin` `[1, 1, L, dh]` for base `theta`,
    /// computed in f32 as transformers does whatever the model's kind, then
    /// cast to `kind`.
    fn rotary(theta: f64, len: i64, dh: i64, kind: Kind, device: tch::Device) -> Result<(Tensor, Tensor)> {
        let f32s = (Kind::Float, device);
        let exponent = Tensor::f_arange_start_step(0, dh, 2, (Kind::Int64, device))?.f_to_kind(Kind::Float)?.f_div_scalar(dh as f64)?;
        let inv_freq = Tensor::f_pow_scalar(theta, &exponent)?.f_reciprocal()?;
        let positions = Tensor::f_arange(len, f32s)?.f_unsqueeze(1)?;
        let freqs = positions.f_mul(&inv_freq.f_unsqueeze(0)?)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?.f_view([1, 1, len, dh])?;
        Ok((emb.f_cos()?.f_to_kind(kind)?, emb.f_sin()?.f_to_kind(kind)?))
    }

    /// A layer's pre-norm attention with rotary positions, added to `x`.
    ///
    /// # Shapes
    /// `x`: `[n, L, d]`; `tables`: the rotary `cos`, `sin` `[1, 1, L, dh]`;
    /// `allowed`: `[n or 1, 1, L or 1, L]` bool; returns `[n, L, d]`.
    fn attention(&self, layer: &Layer, x: &Tensor, tables: &(Tensor, Tensor), allowed: &Tensor, train: bool) -> Result<Tensor> {
        let (n, len, d) = x.size3()?;
        let dh = d / self.heads;
        let rotate = |t: &Tensor| -> Result<Tensor> {
            let halves = t.f_chunk(2, -1)?;
            let rotated = Tensor::f_cat(&[&halves[1].f_neg()?, &halves[0]], -1)?;
            Ok(t.f_mul(&tables.0)?.f_add(&rotated.f_mul(&tables.1)?)?)
        };
        let h = match &layer.attn_norm {
            Some(norm) => norm.forward(x)?,
            None => x.shallow_clone(),
        };
        // [n, L, 3, H, dh] → q, k, v as [n, H, L, dh].
        let qkv = layer.wqkv.forward(&h)?.f_view([n, len, 3, self.heads, dh])?.f_permute([2, 0, 3, 1, 4])?;
        let (q, k) = (rotate(&qkv.f_get(0)?)?, rotate(&qkv.f_get(1)?)?);
        let p_attention = if train { self.attention_dropout } else { 0.0 };
        let context = Tensor::f_scaled_dot_product_attention(&q, &k, &qkv.f_get(2)?, Some(allowed), p_attention, false, None)?
            .f_transpose(1, 2)?
            .f_reshape([n, len, d])?;
        Ok(x.f_add(&layer.wo.forward(&context)?.f_dropout(self.attention_dropout, train)?)?)
    }

    /// A layer's pre-norm gated MLP, added to `x`.
    ///
    /// # Shapes
    /// `[n, L, d]` → `[n, L, d]`.
    fn feed_forward(&self, layer: &Layer, x: &Tensor, train: bool) -> Result<Tensor> {
        let gated = layer.wi.forward(&layer.mlp_norm.forward(x)?)?.f_chunk(2, -1)?;
        let inner = self.activate(&gated[0])?.f_mul(&gated[1])?.f_dropout(self.mlp_dropout, train)?;
        Ok(x.f_add(&layer.mlp_wo.forward(&inner)?)?)
    }

    /// Token states.
    ///
    /// # Shapes
    /// `ids`, `mask`: `[n, L]` int64; returns `[n, L, d]`.
    pub(crate) fn forward(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let (n, len) = (ids.size()[0], ids.size()[1]);
        let device = ids.device();
        let x = crate::runtime::embedding::embedding(&self.tok, ids)?;
        let mut x = self.embedding_norm.forward(&x)?.f_dropout(self.embedding_dropout, train)?;
        let d = *x.size().last().unwrap_or(&0);
        let dh = d / self.heads;
        let kind = x.kind();
        // SDPA's boolean masks: real keys (global layers), and real keys no
        // further than half the window away (local layers).
        let keys = mask.f_ne(0)?.f_view([n, 1, 1, len])?;
        let rows = Tensor::f_arange(len, (Kind::Int64, device))?;
        let distance = rows.f_unsqueeze(1)?.f_sub(&rows.f_unsqueeze(0)?)?.f_abs()?;
        // Each token also sees itself, so that a padding token whose window
        // holds only padding has a key (a row with none gives NaN, which
        // would reach real tokens through the next layer's values); real
        // tokens' rows are unchanged (they see themselves already).
        let itself = Tensor::f_eye(len, (Kind::Bool, device))?.f_view([1, 1, len, len])?;
        let near = keys.f_logical_and(&distance.f_le(self.window)?.f_view([1, 1, len, len])?)?.f_logical_or(&itself)?;
        let global = Self::rotary(self.global_theta, len, dh, kind, device)?;
        let local = Self::rotary(self.local_theta, len, dh, kind, device)?;
        for layer in &self.layers {
            let (tables, allowed) = if layer.global { (&global, &keys) } else { (&local, &near) };
            x = self.attention(layer, &x, tables, allowed, train)?;
            x = self.feed_forward(layer, &x, train)?;
        }
        self.final_norm.forward(&x)
    }
}
