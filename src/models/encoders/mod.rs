//! Built-in encoders and the pooling they share.

mod fused_bert;
mod layers;
mod modernbert;
mod text_encoder;
mod tiny;

pub use text_encoder::{write_random_bert, BertImplementation, TextEncoder, TextEncoderConfig};
pub use tiny::{TinyEncoder, TinyEncoderConfig};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::core::representation::Representation;
use crate::error::{GradCacheError, Result};

/// How token states become a representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over real tokens → one vector.
    #[default]
    Mean,
    /// The first token's state → one vector.
    Cls,
    /// Every token's state, padding zeroed → token matrix with mask.
    Tokens,
}

/// Pools token states.
///
/// # Shapes
/// `hidden`: `[n, L, d]`; `mask`: `[n, L]` (1 = token, any numeric kind).
/// Returns `[n, d]` vectors or `[n, L, d]` tokens.
///
/// # Errors
/// [`GradCacheError::Shape`] when the shapes disagree.
pub fn pool(hidden: &Tensor, mask: &Tensor, pooling: Pooling) -> Result<Representation> {
    let hs = hidden.size();
    if hs.len() != 3 || mask.size() != hs[..2] {
        return Err(GradCacheError::Shape { what: "pooling input", expected: "hidden [n, L, d] with mask [n, L]", got: hs });
    }
    let kind = hidden.kind();
    let m = mask.f_to_kind(kind)?.f_unsqueeze(2)?; // [n, L, 1]
    match pooling {
        Pooling::Mean => {
            let sum = hidden.f_mul(&m)?.f_sum_dim_intlist(1, false, kind)?;
            let count = m.f_sum_dim_intlist(1, false, kind)?.f_clamp_min(1.0)?;
            Representation::vector(sum.f_div(&count)?)
        }
        Pooling::Cls => Representation::vector(hidden.f_select(1, 0)?),
        Pooling::Tokens => Representation::tokens(hidden.f_mul(&m)?, &mask.f_to_kind(Kind::Int64)?),
    }
}
