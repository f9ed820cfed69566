//! Representations: what an encoder returns and what a scoring head reads.

use tch::{Kind, Tensor};

use crate::error::{GradCacheError, Result};

/// The output of an encoder for `n` inputs.
///
/// # Shapes
/// - [`Representation::Vector`]: `vectors` is `[n, d]`.
/// - [`Representation::Tokens`]: `tokens` is `[n, L, d]`, `mask` is `[n, L]`
///   with 1 for a real token and 0 for padding, in the float kind of `tokens`.
#[derive(Debug)]
pub enum Representation {
    /// One vector per item.
    Vector(Tensor),
    /// A token matrix per item, with a padding mask (multi-vector, ColBERT-style).
    Tokens {
        /// `[n, L, d]`.
        tokens: Tensor,
        /// `[n, L]`, 1 for a token, 0 for padding; same kind as `tokens`.
        mask: Tensor,
    },
}

impl Representation {
    /// Wraps one vector per item.
    ///
    /// # Shapes
    /// `vectors`: `[n, d]`.
    ///
    /// # Errors
    /// [`GradCacheError::Shape`] if `vectors` is not 2-D.
    pub fn vector(vectors: Tensor) -> Result<Self> {
        if vectors.dim() != 2 {
            return Err(GradCacheError::Shape { what: "vector representation", expected: "[n, d]", got: vectors.size() });
        }
        Ok(Representation::Vector(vectors))
    }

    /// Wraps token matrices and their padding mask. The mask is converted to
    /// the kind of `tokens` (any numeric or bool mask is accepted).
    ///
    /// # Shapes
    /// `tokens`: `[n, L, d]`; `mask`: `[n, L]`.
    ///
    /// # Errors
    /// [`GradCacheError::Shape`] if the shapes do not agree.
    pub fn tokens(tokens: Tensor, mask: &Tensor) -> Result<Self> {
        let (ts, ms) = (tokens.size(), mask.size());
        if ts.len() != 3 {
            return Err(GradCacheError::Shape { what: "token representation", expected: "[n, L, d]", got: ts });
        }
        if ms.len() != 2 || ms[..] != ts[..2] {
            return Err(GradCacheError::Shape { what: "token mask", expected: "[n, L] matching the tokens", got: ms });
        }
        let mask = mask.f_to_kind(tokens.kind())?;
        Ok(Representation::Tokens { tokens, mask })
    }

    /// The number of items `n`.
    pub fn len(&self) -> usize {
        self.tensor().size().first().copied().unwrap_or(0) as usize
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The differentiable part: `[n, d]` vectors or `[n, L, d]` tokens.
    pub fn tensor(&self) -> &Tensor {
        match self {
            Representation::Vector(v) => v,
            Representation::Tokens { tokens, .. } => tokens,
        }
    }

    /// The padding mask `[n, L]` of token representations, `None` for vectors.
    pub fn mask(&self) -> Option<&Tensor> {
        match self {
            Representation::Vector(_) => None,
            Representation::Tokens { mask, .. } => Some(mask),
        }
    }

    /// The element kind of the representation.
    pub fn kind(&self) -> Kind {
        self.tensor().kind()
    }

    /// `"vector"` or `"tokens"`, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Representation::Vector(_) => "vector",
            Representation::Tokens { .. } => "tokens",
        }
    }

    /// The same representation with another differentiable tensor (same
    /// shape), keeping the mask.
    pub fn with_tensor(&self, tensor: Tensor) -> Representation {
        match self {
            Representation::Vector(_) => Representation::Vector(tensor),
            Representation::Tokens { mask, .. } => Representation::Tokens { tokens: tensor, mask: mask.shallow_clone() },
        }
    }

    /// The same representation in float32 when it is in a half precision
    /// (bf16, f16); itself (shallow) otherwise. What ranking scores are
    /// computed from: see [`crate::core::scoring::score_for_ranking`].
    ///
    /// # Errors
    /// libtorch errors.
    pub fn to_float(&self) -> Result<Representation> {
        Ok(match self.kind() {
            Kind::BFloat16 | Kind::Half => self.with_tensor(self.tensor().f_to_kind(Kind::Float)?),
            _ => self.with_tensor(self.tensor().shallow_clone()),
        })
    }

    /// The same representation on `device` (tensor and mask).
    ///
    /// # Errors
    /// [`GradCacheError::Torch`].
    pub fn to_device(&self, device: tch::Device) -> Result<Representation> {
        Ok(match self {
            Representation::Vector(v) => Representation::Vector(v.f_to_device(device)?),
            Representation::Tokens { tokens, mask } => {
                Representation::Tokens { tokens: tokens.f_to_device(device)?, mask: mask.f_to_device(device)? }
            }
        })
    }

    /// Rows `start .. start + len` (a view, no copy).
    ///
    /// # Errors
    /// [`GradCacheError::Torch`] if the range is out of bounds.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Representation> {
        let (s, l) = (start as i64, len as i64);
        Ok(match self {
            Representation::Vector(v) => Representation::Vector(v.f_narrow(0, s, l)?),
            Representation::Tokens { tokens, mask } => {
                Representation::Tokens { tokens: tokens.f_narrow(0, s, l)?, mask: mask.f_narrow(0, s, l)? }
            }
        })
    }

    /// The rows at `indices` (an `Int64` tensor on the same device), in
    /// that order: a copy.
    ///
    /// # Errors
    /// [`GradCacheError::Torch`] for an index out of range.
    pub fn select(&self, indices: &Tensor) -> Result<Representation> {
        Ok(match self {
            Representation::Vector(v) => Representation::Vector(v.f_index_select(0, indices)?),
            Representation::Tokens { tokens, mask } => {
                Representation::Tokens { tokens: tokens.f_index_select(0, indices)?, mask: mask.f_index_select(0, indices)? }
            }
        })
    }

    /// A detached copy whose tensor is a fresh autograd leaf that requires
    /// grad: the input of one head block in the head pass.
    pub fn detached_leaf(&self) -> Result<Representation> {
        let leaf = self.tensor().f_detach()?.set_requires_grad(true);
        Ok(self.with_tensor(leaf))
    }

    /// A detached copy (no autograd history).
    pub fn detach(&self) -> Result<Representation> {
        Ok(self.with_tensor(self.tensor().f_detach()?))
    }

    /// Concatenates chunks along the item axis. Token chunks of different
    /// lengths are right-padded with zeros (mask 0) to the longest.
    ///
    /// # Errors
    /// [`GradCacheError::RepresentationKind`] when chunks mix vectors and
    /// tokens; [`GradCacheError::EmptyBatch`]-free: an empty slice gives a
    /// [`GradCacheError::Shape`] error.
    pub fn cat(parts: &[Representation]) -> Result<Representation> {
        let first =
            parts.first().ok_or(GradCacheError::Shape { what: "representation chunks", expected: "at least one chunk", got: vec![0] })?;
        if let Some(other) = parts.iter().find(|p| p.kind_name() != first.kind_name()) {
            return Err(GradCacheError::RepresentationKind {
                what: "concatenating chunks",
                expected: first.kind_name(),
                got: other.kind_name(),
            });
        }
        match first {
            Representation::Vector(_) => {
                let vs: Vec<&Tensor> = parts.iter().map(|p| p.tensor()).collect();
                Ok(Representation::Vector(Tensor::f_cat(&vs, 0)?))
            }
            Representation::Tokens { .. } => {
                let max_len = parts.iter().map(|p| p.tensor().size()[1]).max().unwrap_or(0);
                let mut tokens = Vec::with_capacity(parts.len());
                let mut masks = Vec::with_capacity(parts.len());
                for p in parts {
                    let pad = max_len - p.tensor().size()[1];
                    // Pad order is last dim first: [d_lo, d_hi, L_lo, L_hi].
                    tokens.push(p.tensor().f_constant_pad_nd([0, 0, 0, pad])?);
                    let mask = p.mask().expect("token representation has a mask");
                    masks.push(mask.f_constant_pad_nd([0, pad])?);
                }
                Ok(Representation::Tokens { tokens: Tensor::f_cat(&tokens, 0)?, mask: Tensor::f_cat(&masks, 0)? })
            }
        }
    }

    /// Narrows a slice of a padded batch tensor (`[n, L_batch, d]`) to the
    /// token length of one chunk's own tensor (`[n, L, d]`); vectors pass
    /// through. Used to match a chunk to its cached slice.
    pub(crate) fn narrow_tokens_like(batch_slice: &Tensor, chunk: &Tensor) -> Result<Tensor> {
        if chunk.dim() != 3 {
            return Ok(batch_slice.shallow_clone());
        }
        let len = chunk.size()[1];
        if batch_slice.dim() != 3 || batch_slice.size()[1] < len {
            return Err(GradCacheError::Shape {
                what: "re-encoded chunk",
                expected: "no more tokens than in the representation pass",
                got: chunk.size(),
            });
        }
        Ok(batch_slice.f_narrow(1, 0, len)?)
    }
}
