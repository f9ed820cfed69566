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
