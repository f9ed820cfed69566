//! Built-in scoring heads.
//!
//! | head | representations | parameters | closed form |
//! |---|---|---|---|
//! | [`DotHead`] | vectors | none | yes: `∂L/∂U = W V`, `∂L/∂V = Wᵀ U` |
//! | [`CosineHead`] | vectors | temperature | no |
//! | [`BilinearHead`] | vectors | `W` or `A`, `B` | no |
//! | [`MlpHead`] | vectors | two linear layers | no |
//! | [`MaxSimHead`] | tokens | none | no (the max is data-dependent) |
//! | [`WeightedMaxSimHead`] | tokens | per-token weight | no |
//! | [`PolyEncoderHead`] | tokens | `m` codes | no |
//! | [`InteractionHead`] | tokens | cross/self attention, FFN | no |
//! | [`MolHead`] | vectors | component projections, gate | no |
//!
//! Every learned head (bilinear, MLP, weighted MaxSim, poly-encoder,
//! interaction, Mixture of Logits) starts as a [`ResidualHead`] by default: the encoders'
//! cosine (or MaxSim) plus a gated correction that is zero at step 0.
//!
//! `docs/heads.md` gives each head's formula, cost per pair and activation
//! memory per block.

mod attention;
mod bilinear;
mod cosine;
mod dot;
mod interaction;
mod maxsim;
mod mlp;
mod mol;
mod poly;
mod residual;
mod weighted_maxsim;

pub use bilinear::{BilinearHead, BilinearHeadConfig};
pub use cosine::{CosineHead, CosineHeadConfig};
pub use dot::DotHead;
pub use interaction::{copy_bert_layer, InteractionConfig, InteractionHead, InteractionInit};
pub use maxsim::MaxSimHead;
pub use mlp::{MlpHead, MlpHeadConfig};
pub use mol::{MolGate, MolHead, MolHeadConfig};
pub use poly::{PolyEncoderConfig, PolyEncoderHead};
pub use residual::{ResidualBase, ResidualConfig, ResidualHead};
pub use weighted_maxsim::{WeightedMaxSimConfig, WeightedMaxSimHead};

use tch::Tensor;

use crate::core::representation::Representation;
use crate::error::{GradCacheError, Result};

/// The `[n, d]` tensor of a vector representation, or a typed error naming
/// the head.
pub(crate) fn expect_vectors<'r>(rep: &'r Representation, head: &'static str) -> Result<&'r Tensor> {
    match rep {
        Representation::Vector(v) => Ok(v),
        other => Err(GradCacheError::RepresentationKind { what: head, expected: "vector", got: other.kind_name() }),
    }
}

/// The `[n, L, d]` tokens and `[n, L]` mask of a token representation.
pub(crate) fn expect_tokens<'r>(rep: &'r Representation, head: &'static str) -> Result<(&'r Tensor, &'r Tensor)> {
    match rep {
        Representation::Tokens { tokens, mask } => Ok((tokens, mask)),
        other => Err(GradCacheError::RepresentationKind { what: head, expected: "tokens", got: other.kind_name() }),
    }
}

/// Any built-in head, as a config: `{"kind": "interaction", "dim": 384, …}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HeadConfig {
    /// [`DotHead`].
    Dot,
    /// [`CosineHead`].
    Cosine(CosineHeadConfig),
    /// [`BilinearHead`].
    Bilinear(BilinearHeadConfig),
    /// [`MlpHead`].
    Mlp(MlpHeadConfig),
    /// [`MaxSimHead`].
    MaxSim,
    /// [`WeightedMaxSimHead`].
    WeightedMaxSim(WeightedMaxSimConfig),
    /// [`PolyEncoderHead`].
    Poly(PolyEncoderConfig),
    /// [`InteractionHead`].
    Interaction(InteractionConfig),
    /// [`MolHead`].
    Mol(MolHeadConfig),
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig::Mlp(MlpHeadConfig::default())
    }
}

impl HeadConfig {
    /// The names accepted as `kind`.
    pub const KINDS: [&'static str; 9] = ["dot", "cosine", "bilinear", "mlp", "max_sim", "weighted_max_sim", "poly", "interaction", "mol"];

    /// The names [`HeadConfig::named`] knows, one per built-in head.
    pub const NAMES: [&'static str; 9] = ["dot", "cosine", "bilinear", "mlp", "max_sim", "weighted_max_sim", "poly", "interaction", "mol"];

    /// The head named `kind` with its default settings and width `dim`.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] for an unknown name.
    pub fn named(kind: &str, dim: usize, dropout: f64) -> Result<Self> {
        Ok(match kind {
            "dot" => HeadConfig::Dot,
            "cosine" => HeadConfig::Cosine(CosineHeadConfig::default()),
            "bilinear" => HeadConfig::Bilinear(BilinearHeadConfig { dim, rank: None, dropout, residual: residual_default() }),
            "mlp" => HeadConfig::Mlp(MlpHeadConfig { dim, hidden: 2 * dim, dropout, residual: residual_default() }),
            "max_sim" => HeadConfig::MaxSim,
            "weighted_max_sim" => HeadConfig::WeightedMaxSim(WeightedMaxSimConfig { dim, residual: residual_default() }),
            "poly" => HeadConfig::Poly(PolyEncoderConfig { dim, codes: 8, dropout, residual: residual_default() }),
            "interaction" => {
                let heads = [8, 6, 4, 2, 1].into_iter().find(|h| dim.is_multiple_of(*h)).unwrap_or(1);
                HeadConfig::Interaction(InteractionConfig { dim, heads, ffn: 2 * dim, dropout, ..InteractionConfig::default() })
            }
            "mol" => HeadConfig::Mol(MolHeadConfig { dim, dropout, ..MolHeadConfig::default() }),
            _ => {
                return Err(GradCacheError::InvalidConfig {
                    field: "kind",
                    reason: "must be one of dot, cosine, bilinear, mlp, max_sim, weighted_max_sim, poly, interaction, mol",
                })
            }
        })
    }

    /// Whether the head reads token matrices (else one vector per item).
    pub fn reads_tokens(&self) -> bool {
        matches!(self, HeadConfig::MaxSim | HeadConfig::WeightedMaxSim(_) | HeadConfig::Poly(_) | HeadConfig::Interaction(_))
    }

    /// The representation width the head was configured for, if it has one.
    pub fn dim(&self) -> Option<usize> {
        match self {
            HeadConfig::Dot | HeadConfig::Cosine(_) | HeadConfig::MaxSim => None,
            HeadConfig::Bilinear(c) => Some(c.dim),
            HeadConfig::Mlp(c) => Some(c.dim),
            HeadConfig::WeightedMaxSim(c) => Some(c.dim),
            HeadConfig::Poly(c) => Some(c.dim),
            HeadConfig::Interaction(c) => Some(c.dim),
            HeadConfig::Mol(c) => Some(c.dim),
        }
    }

    /// The same head over representations of width `dim` (heads without a
    /// width are returned as they are).
    pub fn with_dim(mut self, dim: usize) -> Self {
        match &mut self {
            HeadConfig::Dot | HeadConfig::Cosine(_) | HeadConfig::MaxSim => {}
            HeadConfig::Bilinear(c) => c.dim = dim,
            HeadConfig::Mlp(c) => c.dim = dim,
            HeadConfig::WeightedMaxSim(c) => c.dim = dim,
            HeadConfig::Poly(c) => c.dim = dim,
            HeadConfig::Interaction(c) => c.dim = dim,
            HeadConfig::Mol(c) => c.dim = dim,
        }
        self
    }

    /// Creates the head's weights under `path`: Φ's as the head's own
    /// config names them, and with the residual start on, `residual.log_scale`
    /// and `residual.gate` around them ([`ResidualHead`]). This is the one
    /// place the residual start is applied: a head config's own `init`
    /// builds Φ alone.
    ///
    /// # Errors
    /// The head's own config errors; [`GradCacheError::InvalidConfig`] for
    /// an interaction block that starts from the encoder's weights (use
    /// [`HeadConfig::init_with_encoder`]).
    pub fn init(&self, path: &tch::nn::Path) -> Result<Box<dyn crate::core::head::ScoringHead>> {
        if let HeadConfig::Interaction(InteractionConfig { init: InteractionInit::EncoderTopLayer, .. }) = self {
            return Err(GradCacheError::InvalidConfig {
                field: "init",
                reason: "\"encoder_top_layer\" reads the encoder's weights: create the head with HeadConfig::init_with_encoder",
            });
        }
        self.init_weights(path)
    }

    /// Creates the head under `vs.root() / name` as [`HeadConfig::init`]
    /// does, then applies what reads the encoder's own weights: an
    /// interaction block with `"init": "encoder_top_layer"` gets the
    /// encoder's top transformer layer ([`copy_bert_layer`]).
    ///
    /// # Errors
    /// As [`HeadConfig::init`]; [`GradCacheError::InvalidConfig`] when the
    /// block's `heads` differ from the encoder's attention heads;
    /// [`GradCacheError::LayerInit`] when the shapes differ (e.g. `dim`
    /// against a projection, or `ffn` against the layer's intermediate size).
    pub fn init_with_encoder(
        &self,
        vs: &tch::nn::VarStore,
        name: &str,
        encoder: &crate::models::encoders::TextEncoder,
    ) -> Result<Box<dyn crate::core::head::ScoringHead>> {
        let head = self.init_weights(&(vs.root() / name))?;
        if let HeadConfig::Interaction(c @ InteractionConfig { init: InteractionInit::EncoderTopLayer, .. }) = self {
            if c.heads != encoder.attention_heads() {
                return Err(GradCacheError::InvalidConfig {
                    field: "heads",
                    reason: "an interaction block initialised from the encoder's top layer needs the encoder's number of attention heads",
                });
            }
            copy_bert_layer(vs, encoder.top_layer_prefix()?, name)?;
        }
        Ok(head)
    }

    fn init_weights(&self, path: &tch::nn::Path) -> Result<Box<dyn crate::core::head::ScoringHead>> {
        let head: Box<dyn crate::core::head::ScoringHead> = match self {
            HeadConfig::Dot => Box::new(DotHead),
            HeadConfig::Cosine(c) => Box::new(c.init(path)?),
            HeadConfig::Bilinear(c) => Box::new(c.init(path)?),
            HeadConfig::Mlp(c) => Box::new(c.init(path)?),
            HeadConfig::MaxSim => Box::new(MaxSimHead),
            HeadConfig::WeightedMaxSim(c) => Box::new(c.init(path)?),
            HeadConfig::Poly(c) => Box::new(c.init(path)?),
            HeadConfig::Interaction(c) => Box::new(c.init(path)?),
            HeadConfig::Mol(c) => Box::new(c.init(path)?),
        };
        Ok(match self.residual() {
            Some(r) => Box::new(r.init(&(path / "residual"), ResidualBase::for_tokens(self.reads_tokens()), head)?),
            None => head,
        })
    }

    /// The same head as the exactness checker should see it: a residual
    /// gate of 0 opened to 0.5 (a closed gate zeroes Φ's gradients, so the
    /// check would compare zeros), and an interaction block that reads the
    /// encoder's layer started randomly instead (the check has no encoder).
    pub fn for_checking(&self) -> HeadConfig {
        let mut c = self.clone();
        if let HeadConfig::Interaction(i) = &mut c {
            i.init = InteractionInit::Random;
        }
        if let Some(r) = c.residual_slot().and_then(Option::as_mut).filter(|r| r.gate == 0.0) {
            r.gate = 0.5;
        }
        c
    }

    /// The `residual` field of a learned head's config, to read or set
    /// (`None` for the heads that have no such field).
    pub fn residual_slot(&mut self) -> Option<&mut Option<ResidualConfig>> {
        match self {
            HeadConfig::Dot | HeadConfig::Cosine(_) | HeadConfig::MaxSim => None,
            HeadConfig::Bilinear(c) => Some(&mut c.residual),
            HeadConfig::Mlp(c) => Some(&mut c.residual),
            HeadConfig::WeightedMaxSim(c) => Some(&mut c.residual),
            HeadConfig::Poly(c) => Some(&mut c.residual),
            HeadConfig::Interaction(c) => Some(&mut c.residual),
            HeadConfig::Mol(c) => Some(&mut c.residual),
        }
    }

    /// The residual start of a learned head, if it is on (never for the
    /// parameter-free heads and the cosine head, which are bases themselves).
    pub fn residual(&self) -> Option<&ResidualConfig> {
        match self {
            HeadConfig::Dot | HeadConfig::Cosine(_) | HeadConfig::MaxSim => None,
            HeadConfig::Bilinear(c) => c.residual.as_ref(),
            HeadConfig::Mlp(c) => c.residual.as_ref(),
            HeadConfig::WeightedMaxSim(c) => c.residual.as_ref(),
            HeadConfig::Poly(c) => c.residual.as_ref(),
            HeadConfig::Interaction(c) => c.residual.as_ref(),
            HeadConfig::Mol(c) => c.residual.as_ref(),
        }
    }
}

/// The residual start every learned head has unless its config says
/// `"residual": null`: the one source of that default.
pub(crate) fn residual_default() -> Option<ResidualConfig> {
    Some(ResidualConfig::default())
}

/// A random-weight BERT of shape `bert` under `vs` (path `encoder`), made
/// for `head` (mean pooling for vector heads, token states for token heads,
/// 32-d token projections for the interaction block), and that built-in
/// head by name (path `head`, width the BERT's).
///
/// # Errors
/// [`GradCacheError::InvalidConfig`] for an unknown head name; libtorch
/// errors.
pub fn bert_with_head(
    vs: &tch::nn::VarStore,
    bert: &rust_bert::bert::BertConfig,
    head: &str,
) -> Result<(crate::models::encoders::TextEncoder, Box<dyn crate::core::head::ScoringHead>)> {
    use crate::models::encoders::{Pooling, TextEncoderConfig};
    let head_config = match head {
        "interaction" => HeadConfig::named("interaction", 32, 0.1)?,
        name => HeadConfig::named(name, bert.hidden_size as usize, 0.1)?,
    };
    let (pooling, projection) = match (&head_config, head_config.reads_tokens()) {
        (HeadConfig::Interaction(c), _) => (Pooling::Tokens, Some(c.dim)),
        (_, true) => (Pooling::Tokens, None),
        (_, false) => (Pooling::Mean, None),
    };
    let architecture = crate::models::pretrained::Architecture::bert(bert.clone(), 1e-12);
    let encoder =
        TextEncoderConfig { pooling: Some(pooling), projection, ..Default::default() }.init_fresh(vs, "encoder", &architecture)?;
    let head = head_config.init(&(vs.root() / "head"))?;
    Ok((encoder, head))
}

/// A representation's items, tokens per item (1 for a vector) and width:
/// what a head's FLOP count reads.
pub(crate) fn dims(rep: &Representation) -> (f64, f64, f64) {
    match rep.tensor().size().as_slice() {
        [n, d] => (*n as f64, 1.0, *d as f64),
        [n, l, d] => (*n as f64, *l as f64, *d as f64),
        _ => (0.0, 0.0, 0.0),
    }
}
