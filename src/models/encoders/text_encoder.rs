//! Pretrained transformer encoders — BERT, RoBERTa / XLM-RoBERTa and
//! ModernBERT, chosen by the model folder's `config.json` — with pooling,
//! an optional projection and normalisation.

use rust_bert::bert::{BertEmbeddings, BertModel};
use rust_bert::roberta::RobertaEmbeddings;
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::fused_bert::FusedBert;
use super::modernbert::ModernBert;
use super::{pool, Pooling};
use crate::core::batch::TokenBatch;
use crate::core::encoder::Encoder;
use crate::core::representation::Representation;
use crate::error::{GradCacheError, Result};
use crate::models::pretrained::{Architecture, ModelDir, ModulePooling, PositionIds};
use crate::models::weights::{read_safetensors, LoadReport};

/// Which code runs a BERT-layout model's layers (BERT, RoBERTa,
/// XLM-RoBERTa). Both read the same weights and compute the same function
/// (parity-tested against transformers to 1e-5). ModernBERT has one
/// implementation, gradcache's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BertImplementation {
    /// gradcache's own forward pass with one fused `gelu` and one
    /// scaled-dot-product attention per layer (the default): on par with
    /// Hugging Face transformers on a CPU, where rust-bert's layers are
    /// ~1.15x slower (`docs/encoder-speed.md`).
    #[default]
    Fused,
    /// rust-bert's `BertModel` (with RoBERTa's embeddings for RoBERTa).
    RustBert,
}

/// How a [`TextEncoder`] turns token states into representations.
///
/// A field left unset (`None`, `null` or absent in JSON) is taken from the
/// model folder when it is a sentence-transformers folder (its Pooling,
/// Dense and Normalize modules), else from the defaults: mean pooling, no
/// projection, no normalisation. [`TextEncoderConfig::resolved`] fills them
/// in; a bundle records the resolved values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TextEncoderConfig {
    /// Which code runs a BERT-layout model's layers. Both read the same
    /// weights.
    pub implementation: BertImplementation,
    /// Mean (sentence-transformers' default), CLS, or token matrices.
    pub pooling: Option<Pooling>,
    /// Optional linear projection of every token state to this width
    /// (e.g. 128, ColBERT-style), applied before pooling: fresh, or a
    /// sentence-transformers folder's Dense module when unset.
    pub projection: Option<usize>,
    /// L2-normalise each vector (or each token vector).
    pub normalize: Option<bool>,
}

impl TextEncoderConfig {
    /// The pooling (mean when unset).
    pub fn pooling(&self) -> Pooling {
        self.pooling.unwrap_or_default()
    }

    /// Whether vectors are normalised (no when unset).
    pub fn normalize(&self) -> bool {
        self.normalize.unwrap_or(false)
    }

    /// This configuration with every unset field taken from `model`'s
    /// sentence-transformers modules, or from the defaults.
    ///
    /// A projection of the Dense module's width is that module.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] when the configuration sets a
    /// projection and the folder has a Dense module of another width.
    pub fn resolved(&self, model: &ModelDir) -> Result<Self> {
        let modules = model.modules();
        let pooling = self.pooling.or(modules.map(|m| match m.pooling {
            ModulePooling::Cls => Pooling::Cls,
            _ => Pooling::Mean,
        }));
        let dense = modules.and_then(|m| m.dense.as_ref());
        if let (Some(width), Some(dense)) = (self.projection, dense) {
            if width != dense.out_features {
                return Err(GradCacheError::InvalidConfig {
                    field: "projection",
                    reason: "the model folder has a Dense module of another width: leave projection unset to train it, or use a folder without it",
                });
            }
        }
        Ok(TextEncoderConfig {
            implementation: self.implementation,
            pooling: Some(pooling.unwrap_or_default()),
            projection: self.projection.or(dense.map(|d| d.out_features)),
            normalize: Some(self.normalize.or(modules.map(|m| m.normalize)).unwrap_or(false)),
        })
    }

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
    /// architecture and loads its pretrained weights: the transformer's
    /// under `{name}.{bert|roberta|modernbert}`, a projection under
    /// `{name}.projection` (a sentence-transformers Dense module's weights,
    /// or fresh). Unset fields are resolved first
    /// ([`TextEncoderConfig::resolved`]).
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`]; weight errors as
    /// [`ModelDir::load_weights`].
    pub fn init_pretrained(&self, vs: &nn::VarStore, name: &str, model: &ModelDir) -> Result<(TextEncoder, LoadReport)> {
        let config = self.resolved(model)?;
        let encoder = config.init_fresh(vs, name, model.architecture())?;
        let report = model.load_weights(vs, &encoder.prefix)?;
        if let Some(dense) = model.modules().and_then(|m| m.dense.as_ref()) {
            load_dense(vs, &format!("{name}.projection"), &dense.dir.join("model.safetensors"), dense.bias)?;
        }
        Ok((encoder, report))
    }

    /// Builds a freshly initialised encoder of `architecture` under
    /// `vs.root() / name` (no pretrained weights): for tests and benchmarks.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`], e.g. rust-bert asked to run
    /// ModernBERT.
    pub fn init_fresh(&self, vs: &nn::VarStore, name: &str, architecture: &Architecture) -> Result<TextEncoder> {
        self.validate()?;
        let path = vs.root() / name;
        let (body, body_name) = match (architecture, self.implementation) {
            (Architecture::Bert { config, layer_norm_eps, positions }, BertImplementation::Fused) => {
                let body_name = body_name(*positions);
                let fused = FusedBert::new(&(&path / body_name), config, *layer_norm_eps, *positions)?;
                (Body::Fused(Box::new(fused)), body_name)
            }
            (Architecture::Bert { config, positions, .. }, BertImplementation::RustBert) => {
                let body_name = body_name(*positions);
                let p = &path / body_name;
                let body = match positions {
                    PositionIds::FromZero => {
                        Body::RustBert(Box::new(BertModel::<BertEmbeddings>::new_with_optional_pooler(p, config, false)))
                    }
                    PositionIds::AfterPadding { .. } => {
                        Body::RustRoberta(Box::new(BertModel::<RobertaEmbeddings>::new_with_optional_pooler(p, config, false)))
                    }
                };
                (body, body_name)
            }
            (Architecture::ModernBert(c), BertImplementation::Fused) => {
                let body = Body::ModernBert(Box::new(ModernBert::new(&(&path / "modernbert"), c)?));
                (body, "modernbert")
            }
            (Architecture::ModernBert(_), BertImplementation::RustBert) => {
                return Err(GradCacheError::InvalidConfig {
                    field: "implementation",
                    reason: "rust_bert runs BERT-layout models only; ModernBERT runs fused",
                })
            }
        };
        let projection =
            self.projection.map(|d| nn::linear(&path / "projection", architecture.hidden_size() as i64, d as i64, Default::default()));
        let prefix = if name.is_empty() { body_name.to_string() } else { format!("{name}.{body_name}") };
        let top_layer = match body {
            Body::ModernBert(_) => None,
            _ => Some(format!("{prefix}.encoder.layer.{}", architecture.layers() - 1)),
        };
        Ok(TextEncoder { body, projection, config: self.clone(), prefix, top_layer, architecture: architecture.clone() })
    }
}

/// Where a BERT-layout body lives in the store: `bert` as transformers'
/// `BertModel` is prefixed, `roberta` for the RoBERTa family.
fn body_name(positions: PositionIds) -> &'static str {
    match positions {
        PositionIds::FromZero => "bert",
        PositionIds::AfterPadding { .. } => "roberta",
    }
}

/// Loads a sentence-transformers Dense module (`linear.weight`, and
/// `linear.bias` when it has one; zeros when not) into the linear layer
/// under `prefix`.
fn load_dense(vs: &nn::VarStore, prefix: &str, file: &std::path::Path, bias: bool) -> Result<()> {
    let tensors: std::collections::HashMap<String, Tensor> = read_safetensors(file)?.into_iter().collect();
    let vars = vs.variables();
    for (part, key) in [("weight", "linear.weight"), ("bias", "linear.bias")] {
        let Some(var) = vars.get(&format!("{prefix}.{part}")) else { continue };
        let source = match tensors.get(key) {
            Some(t) => t.shallow_clone(),
            None if part == "bias" && !bias => var.f_zeros_like()?,
            None => return Err(GradCacheError::MissingWeights { path: file.to_path_buf(), missing: vec![key.to_string()] }),
        };
        if source.size() != var.size() {
            return Err(GradCacheError::WeightShape {
                path: file.to_path_buf(),
                name: key.to_string(),
                expected: var.size(),
                got: source.size(),
            });
        }
        tch::no_grad(|| var.shallow_clone().f_copy_(&source.f_to_kind(var.kind())?.f_to_device(var.device())?))?;
    }
    Ok(())
}

enum Body {
    Fused(Box<FusedBert>),
    RustBert(Box<BertModel<BertEmbeddings>>),
    RustRoberta(Box<BertModel<RobertaEmbeddings>>),
    ModernBert(Box<ModernBert>),
}

/// A pretrained transformer encoder with pooling, optional projection and
/// normalisation.
pub struct TextEncoder {
    body: Body,
    projection: Option<nn::Linear>,
    config: TextEncoderConfig,
    prefix: String,
    top_layer: Option<String>,
    architecture: Architecture,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder").field("config", &self.config).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl TextEncoder {
    /// The `VarStore` prefix of the transformer body (for export):
    /// `{name}.bert`, `{name}.roberta` or `{name}.modernbert`.
    pub fn body_prefix(&self) -> &str {
        &self.prefix
    }

    /// The `VarStore` prefix of the last transformer layer of a
    /// BERT-layout body (`{prefix}.encoder.layer.{n - 1}`), e.g. for
    /// [`crate::models::heads::copy_bert_layer`].
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] for ModernBERT, whose layers have
    /// another layout than BERT's.
    pub fn top_layer_prefix(&self) -> Result<&str> {
        self.top_layer.as_deref().ok_or(GradCacheError::InvalidConfig {
            field: "init",
            reason: "copying the encoder's top layer needs a BERT-layout encoder (BERT, RoBERTa, XLM-RoBERTa); ModernBERT's layers differ: use \"init\": \"random\"",
        })
    }

    /// Attention heads per layer.
    pub fn attention_heads(&self) -> usize {
        self.architecture.attention_heads()
    }

    /// The projection of token states, when the encoder has one.
    pub fn projection(&self) -> Option<&nn::Linear> {
        self.projection.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &TextEncoderConfig {
        &self.config
    }
}

fn l2_normalize(t: &Tensor) -> Result<Tensor> {
    let norm = t.f_norm_scalaropt_dim(2, [-1], true)?.f_clamp_min(1e-12)?;
    Ok(t.f_div(&norm)?)
}

impl Encoder for TextEncoder {
    type Input = TokenBatch;

    fn encode(&self, input: &TokenBatch, train: bool) -> Result<Representation> {
        let (ids, mask) = (input.ids(), input.mask());
        let mut hidden = match &self.body {
            Body::Fused(b) => b.forward(ids, mask, train)?,
            Body::RustBert(b) => b.forward_t(Some(ids), Some(mask), None, None, None, None, None, train)?.hidden_state,
            Body::RustRoberta(b) => b.forward_t(Some(ids), Some(mask), None, None, None, None, None, train)?.hidden_state,
            Body::ModernBert(b) => b.forward(ids, mask, train)?,
        };
        if let Some(p) = &self.projection {
            hidden = crate::util::linear(&hidden, p)?;
        }
        let rep = pool(&hidden, mask, self.config.pooling())?;
        if !self.config.normalize() {
            return Ok(rep);
        }
        let normalized = l2_normalize(rep.tensor())?;
        Ok(match &rep {
            Representation::Vector(_) => rep.with_tensor(normalized),
            Representation::Tokens { mask, .. } => rep.with_tensor(normalized.f_mul(&mask.f_unsqueeze(2)?)?),
        })
    }

    /// The transformer's ([`Architecture::forward_flops`]) and the
    /// projection's, over the input's padded tokens.
    fn forward_flops(&self, input: &TokenBatch) -> Option<f64> {
        let size = input.ids().size();
        let (items, len) = (size[0] as usize, *size.get(1)? as usize);
        let projection = self.config.projection.map_or(0.0, |p| 2.0 * (items * len * self.architecture.hidden_size() * p) as f64);
        Some(self.architecture.forward_flops(items, len) + projection)
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
pub fn write_random_bert(
    base: &ModelDir,
    out: &std::path::Path,
    hidden: usize,
    heads: usize,
    layers: usize,
    seed: i64,
) -> Result<ModelDir> {
    let bert = base.write_resized(out, hidden, heads, layers)?;
    tch::manual_seed(seed);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let eps = match base.architecture() {
        Architecture::Bert { layer_norm_eps, .. } => *layer_norm_eps,
        Architecture::ModernBert(_) => 1e-12,
    };
    let encoder = TextEncoderConfig::default().init_fresh(&vs, "random", &Architecture::bert(bert, eps))?;
    crate::models::weights::save_safetensors(&vs, encoder.body_prefix(), &out.join("model.safetensors"))?;
    ModelDir::open(out)
}
