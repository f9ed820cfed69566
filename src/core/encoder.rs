//! The encoder trait: inputs → representations.

use crate::core::batch::Chunk;
use crate::core::representation::Representation;
use crate::error::Result;

/// Turns a chunk of inputs into representations.
///
/// The step calls [`Encoder::encode`] twice per chunk: once under
/// `tch::no_grad` (representation pass) and once with autograd on (encoder
/// pass), each time right after seeding libtorch's generator with the same
/// value. An encoder is exact under the step when, given the same seed and
/// input, it returns the same representation both times: use libtorch's
/// global generator for any randomness (e.g. `Tensor::dropout`), keep no
/// state across calls, and do not couple items of a chunk (no batch norm).
pub trait Encoder {
    /// The input batch type; the step cuts it with [`Chunk::chunk`].
    type Input: Chunk;

    /// Encodes one chunk.
    ///
    /// # Shapes
    /// Returns `n` items for an input of `n` items: `[n, d]` vectors or
    /// `[n, L, d]` tokens with an `[n, L]` mask.
    ///
    /// # Errors
    /// Any error of the implementation.
    fn encode(&self, input: &Self::Input, train: bool) -> Result<Representation>;

    /// Matrix-multiply FLOPs of one forward pass over `input` (2 per
    /// multiply-add), when the encoder knows them: what the step's
    /// achieved FLOP rate is computed from. `None` (the default): unknown.
    fn forward_flops(&self, input: &Self::Input) -> Option<f64> {
        let _ = input;
        None
    }
}
