//! A small randomly initialised encoder for tests, examples and benchmarks.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use super::{pool, Pooling};
use crate::core::batch::TokenBatch;
use crate::core::encoder::Encoder;
use crate::core::representation::Representation;
use crate::error::{GradCacheError, Result};
use crate::util::{embed, linear};

/// Configuration of [`TinyEncoder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TinyEncoderConfig {
    /// Token ids must be below this.
    pub vocab_size: usize,
    /// Longest input.
    pub max_len: usize,
    /// Width `d`.
    pub dim: usize,
    /// Dropout on the token states (train mode only).
    pub dropout: f64,
    /// How token states become the representation.
    pub pooling: Pooling,
}

impl Default for TinyEncoderConfig {
    fn default() -> Self {
        TinyEncoderConfig { vocab_size: 1000, max_len: 64, dim: 32, dropout: 0.1, pooling: Pooling::Mean }
    }
}

impl TinyEncoderConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [("vocab_size", self.vocab_size), ("max_len", self.max_len), ("dim", self.dim)] {
            if v == 0 {
                return Err(GradCacheError::InvalidConfig { field, reason: "must be at least 1" });
            }
        }
        crate::util::check_dropout(self.dropout)?;
        Ok(())
    }

    /// Creates the weights under `path`: `token.weight` `[vocab, d]`,
    /// `position.weight` `[max_len, d]`, `mix.weight` `[d, d]`, `mix.bias` `[d]`.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] from [`TinyEncoderConfig::validate`].
    pub fn init(&self, path: &nn::Path) -> Result<TinyEncoder> {
        self.validate()?;
        let d = self.dim as i64;
        Ok(TinyEncoder {
            token: nn::embedding(path / "token", self.vocab_size as i64, d, Default::default()),
            position: nn::embedding(path / "position", self.max_len as i64, d, Default::default()),
            mix: nn::linear(path / "mix", d, d, Default::default()),
            config: self.clone(),
        })
    }
}

/// Token + position embeddings, one residual tanh layer, dropout, pooling:
/// `h = dropout(e + tanh(W e + b))`.
#[derive(Debug)]
pub struct TinyEncoder {
    token: nn::Embedding,
    position: nn::Embedding,
    mix: nn::Linear,
    config: TinyEncoderConfig,
}

impl Encoder for TinyEncoder {
    type Input = TokenBatch;

    fn encode(&self, input: &TokenBatch, train: bool) -> Result<Representation> {
        let ids = input.ids();
        let len = ids.size()[1];
        if len as usize > self.config.max_len {
            return Err(GradCacheError::Shape { what: "TinyEncoder input", expected: "at most max_len tokens", got: ids.size() });
        }
        let positions = Tensor::f_arange(len, (Kind::Int64, ids.device()))?;
        let e = embed(ids, &self.token)?.f_add(&embed(&positions, &self.position)?)?;
        let h = e.f_add(&linear(&e, &self.mix)?.f_tanh()?)?.f_dropout(self.config.dropout, train)?;
        pool(&h, input.mask(), self.config.pooling)
    }
}
