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
mod poly;
mod weighted_maxsim;

pub use bilinear::{BilinearHead, BilinearHeadConfig};
pub use cosine::{CosineHead, CosineHeadConfig};
pub use dot::DotHead;
pub use interaction::{InteractionConfig, InteractionHead};
pub use maxsim::MaxSimHead;
pub use mlp::{MlpHead, MlpHeadConfig};
pub use poly::{PolyEncoderConfig, PolyEncoderHead};
pub use weighted_maxsim::{WeightedMaxSimConfig, WeightedMaxSimHead};

use tch::Tensor;

use crate::error::{GradCacheError, Result};
use crate::representation::Representation;

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
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig::Mlp(MlpHeadConfig::default())
    }
}

impl HeadConfig {
    /// The names accepted as `kind`.
    pub const KINDS: [&'static str; 8] = ["dot", "cosine", "bilinear", "mlp", "max_sim", "weighted_max_sim", "poly", "interaction"];

    /// The head named `kind` with its default settings and width `dim`.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] for an unknown name.
    pub fn named(kind: &str, dim: usize, dropout: f64) -> Result<Self> {
        Ok(match kind {
            "dot" => HeadConfig::Dot,
            "cosine" => HeadConfig::Cosine(CosineHeadConfig::default()),
            "bilinear" => HeadConfig::Bilinear(BilinearHeadConfig { dim, rank: None, dropout }),
            "mlp" => HeadConfig::Mlp(MlpHeadConfig { dim, hidden: 2 * dim, dropout }),
            "max_sim" => HeadConfig::MaxSim,
            "weighted_max_sim" => HeadConfig::WeightedMaxSim(WeightedMaxSimConfig { dim }),
            "poly" => HeadConfig::Poly(PolyEncoderConfig { dim, codes: 8, dropout }),
            "interaction" => {
                let heads = [8, 6, 4, 2, 1].into_iter().find(|h| dim.is_multiple_of(*h)).unwrap_or(1);
                HeadConfig::Interaction(InteractionConfig { dim, heads, ffn: 2 * dim, dropout })
            }
            _ => return Err(GradCacheError::InvalidConfig { field: "kind", reason: "must be one of dot, cosine, bilinear, mlp, max_sim, weighted_max_sim, poly, interaction" }),
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
        }
    }

    /// Creates the head's weights under `path`.
    ///
    /// # Errors
    /// The head's own config errors.
    pub fn init(&self, path: &tch::nn::Path) -> Result<Box<dyn crate::head::ScoringHead>> {
        Ok(match self {
            HeadConfig::Dot => Box::new(DotHead),
            HeadConfig::Cosine(c) => Box::new(c.init(path)?),
            HeadConfig::Bilinear(c) => Box::new(c.init(path)?),
            HeadConfig::Mlp(c) => Box::new(c.init(path)?),
            HeadConfig::MaxSim => Box::new(MaxSimHead),
            HeadConfig::WeightedMaxSim(c) => Box::new(c.init(path)?),
            HeadConfig::Poly(c) => Box::new(c.init(path)?),
            HeadConfig::Interaction(c) => Box::new(c.init(path)?),
        })
    }
}
