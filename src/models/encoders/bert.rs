//! Pretrained BERT-family encoders: gradcache's own BERT layers (the
//! default) or rust-bert's, over the same weights and configuration.

use rust_bert::bert::{BertConfig, BertEmbeddings, BertModel};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::fused_bert::FusedBert;
use super::{pool, Pooling};
use crate::core::batch::TokenBatch;
use crate::core::encoder::Encoder;
use crate::error::{GradCacheError, Result};
use crate::models::pretrained::ModelDir;
use crate::core::representation::Representation;
use crate::models::weights::LoadReport;

/// Which code runs BERT's layers. Both read the same weights and compute
/// the same function (parity-tested against transformers to 1e-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BertImplementation {
    /// gradcache's own forward pass with one fused `gelu` and one
    /// scaled-dot-product attention per layer (the default): on par with
    /// Hugging Face transformers on a CPU, where rust-bert's layers are
    /// ~1.15x slower (`docs/encoder-speed.md`).
    #[default]
    Fused,
    /// rust-bert's `BertModel`.
    RustBert,
}

/// How a [`BertEncoder`] turns token states into representations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BertEncoderConfig {
    /// Which code runs BERT's layers. Both read the same weights.
    pub implementation: BertImplementation,
    /// Mean (sentence-transformers' default), CLS, or token matrices.
    pub pooling: Pooling,
    /// Optional linear projection of every token state to this width
    /// (e.g. 128, ColBERT-style), applied before pooling.
    pub projection: Option<usize>,
    /// L2-normalise each vector (or each token vector).
    pub normalize: bool,
}

impl Default for BertEncoderConfig {
    fn default() -> Self {
        BertEncoderConfig { implementation: BertImplementation::default(), pooling: Pooling::Mean, projection: None, normalize: false }
    }
}

impl BertEncoderConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] for a zero projection width.
    pub fn validate(&self) -> Result<()> {
        if self.projection == Some(0) {
            return Err(GradCacheError::InvalidConfig { field: "projection", reason: "must be at least 1 when set" });
        }
        Ok(())
    }

    /// Builds the encoder under `vs.root() / name` with `model`'s
    /// architecture and loads its pretrained weights: BERT's under
    /// `{name}.bert`, a projection (freshly initialised) under
    /// `{name}.projection`.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`]; weight errors as
    /// [`ModelDir::load_weights`].
    pub fn init_pretrained(&self, vs: &nn::VarStore, name: &str, model: &ModelDir) -> Result<(BertEncoder, LoadReport)> {
        let encoder = self.init_fresh(vs, name, model.config(), model.layer_norm_eps())?;
        let report = model.load_weights(vs, &encoder.prefix)?;
        Ok((encoder, report))
    }

    /// Builds a freshly initialised encoder of any BERT architecture under
    /// `vs.root() / name` (no pretrained weights): for tests and benchmarks.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`].
    pub fn init_fresh(&self, vs: &nn::VarStore, name: &str, config: &BertConfig, layer_norm_eps: f64) -> Result<BertEncoder> {
        self.validate()?;
        let path = vs.root() / name;
        let bert = match self.implementation {
            BertImplementation::Fused => Body::Fused(Box::new(FusedBert::new(&(&path / "bert"), config, layer_norm_eps)?)),
            BertImplementation::RustBert => {
                Body::RustBert(Box::new(BertModel::<BertEmbeddings>::new_with_optional_pooler(&path / "bert", config, false)))
            }
        };
        let hidden = config.hidden_size;
        let projection = self.projection.map(|d| nn::linear(&path / "projection", hidden, d as i64, Default::default()));
        let prefix = if name.is_empty() { "bert".to_string() } else { format!("{name}.bert") };
        let (layers, heads) = (config.num_hidden_layers, config.num_attention_heads);
        Ok(BertEncoder { bert, projection, config: self.clone(), prefix, layers, heads })
    }
}

enum Body {
    Fused(Box<FusedBert>),
    RustBert(Box<BertModel<BertEmbeddings>>),
}

/// A BERT encoder with pooling, optional projection and normalisation.
pub struct BertEncoder {
    bert: Body,
    projection: Option<nn::Linear>,
    config: BertEncoderConfig,
    prefix: String,
    layers: i64,
    heads: i64,
}

impl std::fmt::Debug for BertEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertEncoder").field("config", &self.config).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl BertEncoder {
    /// The `VarStore` prefix of the BERT body (for export).
    pub fn bert_prefix(&self) -> &str {
        &self.prefix
    }

    /// The `VarStore` prefix of the last transformer layer
    /// (`{prefix}.encoder.layer.{n - 1}`), e.g. for
    /// [`crate::models::heads::copy_bert_layer`].
    pub fn top_layer_prefix(&self) -> String {
        format!("{}.encoder.layer.{}", self.prefix, self.layers - 1)
    }

    /// Attention heads per layer.
    pub fn attention_heads(&self) -> usize {
        self.heads as usize
    }

    /// The configuration.
    pub fn config(&self) -> &BertEncoderConfig {
        &self.config
    }
}

fn l2_normalize(t: &Tensor) -> Result<Tensor> {
    let norm = t.f_norm_scalaropt_dim(2, [-1], true)?.f_clamp_min(1e-12)?;
    Ok(t.f_div(&norm)?)
}

impl Encoder for BertEncoder {
    type Input = TokenBatch;

    fn encode(&self, input: &TokenBatch, train: bool) -> Result<Representation> {
        let mut hidden = match &self.bert {
            Body::Fused(b) => b.forward(input.ids(), input.mask(), train)?,
            Body::RustBert(b) => b.forward_t(Some(input.ids()), Some(input.mask()), None, None, None, None, None, train)?.hidden_state,
        };
        if let Some(p) = &self.projection {
            hidden = crate::util::linear(&hidden, p)?;
        }
        let rep = pool(&hidden, input.mask(), self.config.pooling)?;
        if !self.config.normalize {
            return Ok(rep);
        }
        let normalized = l2_normalize(rep.tensor())?;
        Ok(match &rep {
            Representation::Vector(_) => rep.with_tensor(normalized),
            Representation::Tokens { mask, .. } => rep.with_tensor(normalized.f_mul(&mask.f_unsqueeze(2)?)?),
        })
    }
}

/// Writes a new, randomly initialised BERT folder at `out` with `base`'s
/// vocabulary and config, except its shape ([`ModelDir::write_resized`]),
/// weights drawn from `seed`; opens it. For tests and benchmarks that need
/// a small model of another shape.
///
/// # Errors
/// [`GradCacheError::Io`], [`GradCacheError::Json`], and the errors of
/// building the encoder (e.g. heads not dividing the width).
pub fn write_random_bert(base: &ModelDir, out: &std::path::Path, hidden: usize, heads: usize, layers: usize, seed: i64) -> Result<ModelDir> {
    let bert = base.write_resized(out, hidden, heads, layers)?;
    tch::manual_seed(seed);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let encoder = BertEncoderConfig::default().init_fresh(&vs, "random", &bert, base.layer_norm_eps())?;
    crate::models::weights::save_safetensors(&vs, encoder.bert_prefix(), &out.join("model.safetensors"))?;
    ModelDir::open(out)
}
