//! Inputs that the step splits into encoder chunks.

use tch::{Kind, Tensor};

use crate::error::{GradCacheError, Result};

/// An input batch that can be cut into contiguous chunks of items.
///
/// The step calls [`Chunk::chunk`] with the same arguments in the
/// representation pass and the encoder pass, so an implementation must be a
/// pure function of `self` and its arguments.
pub trait Chunk: Sized {
    /// The number of items.
    fn len(&self) -> usize;

    /// Whether there are no items.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items `start .. start + len`.
    ///
    /// # Errors
    /// Any error of the implementation; out-of-range requests never come from
    /// the step itself.
    fn chunk(&self, start: usize, len: usize) -> Result<Self>;

    /// The encoder work of these items in the unit a memory budget prices:
    /// padded tokens for token batches (items × longest item), items
    /// otherwise.
    fn padded_tokens(&self) -> usize {
        self.len()
    }

    /// Each item's length, for length-sorted chunking
    /// (`StepConfig::sort_by_length`); `None` (the default) when items
    /// have no length to sort by.
    fn lengths(&self) -> Result<Option<Vec<usize>>> {
        Ok(None)
    }

    /// The items at `indices`, in that order.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] by default: an input type that
    /// cannot be reordered cannot be cut by length.
    fn select(&self, indices: &[usize]) -> Result<Self> {
        let _ = indices;
        Err(GradCacheError::InvalidConfig { field: "sort_by_length", reason: "this input type cannot be reordered" })
    }
}

/// A plain tensor is chunked along its first axis.
impl Chunk for Tensor {
    fn len(&self) -> usize {
        self.size().first().copied().unwrap_or(0) as usize
    }

    fn chunk(&self, start: usize, len: usize) -> Result<Self> {
        Ok(self.f_narrow(0, start as i64, len as i64)?)
    }

    fn select(&self, indices: &[usize]) -> Result<Self> {
        let index = Tensor::from_slice(&indices.iter().map(|&i| i as i64).collect::<Vec<_>>()).f_to_device(self.device())?;
        Ok(self.f_index_select(0, &index)?)
    }
}

/// Right-padded token ids with their attention mask.
///
/// Chunking trims the padding columns that no item of the chunk uses, so a
/// chunk is only as long as its longest item (dynamic padding).
///
/// # Shapes
/// `ids`: `[n, L]` int64; `mask`: `[n, L]` int64, 1 for a token, 0 for padding,
/// each row a run of ones followed by zeros.
#[derive(Debug)]
pub struct TokenBatch {
    ids: Tensor,
    mask: Tensor,
}

impl TokenBatch {
    /// Validates and wraps ids and mask.
    ///
    /// # Shapes
    /// `ids`: `[n, L]` int64; `mask`: `[n, L]` (any kind; stored as int64).
    ///
    /// # Errors
    /// [`GradCacheError::Shape`] when the shapes disagree or ids are not int64.
    pub fn new(ids: Tensor, mask: Tensor) -> Result<Self> {
        if ids.dim() != 2 || ids.kind() != Kind::Int64 {
            return Err(GradCacheError::Shape { what: "token ids", expected: "[n, L] int64", got: ids.size() });
        }
        if mask.size() != ids.size() {
            return Err(GradCacheError::Shape { what: "attention mask", expected: "[n, L] matching the ids", got: mask.size() });
        }
        let mask = mask.f_to_kind(Kind::Int64)?;
        Ok(TokenBatch { ids, mask })
    }

    /// `n` right-padded random sequences, for tests and benchmarks: each
    /// length drawn uniformly from `lengths` (`max` = the batch's width),
    /// then every id from `ids`, padding set to id 0 — both from libtorch's
    /// global generator, so `tch::manual_seed` fixes the batch.
    ///
    /// # Shapes
    /// `[n, lengths.end()]`.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] for an empty range; libtorch errors.
    pub fn random(n: usize, lengths: std::ops::RangeInclusive<usize>, ids: std::ops::Range<i64>) -> Result<Self> {
        if lengths.is_empty() || *lengths.start() == 0 || ids.is_empty() {
            return Err(GradCacheError::InvalidConfig {
                field: "random token batch",
                reason: "needs lengths from at least 1 and a non-empty id range",
            });
        }
        let (n, width) = (n as i64, *lengths.end() as i64);
        let cpu = (Kind::Int64, tch::Device::Cpu);
        let drawn = Tensor::f_randint_low(*lengths.start() as i64, width + 1, [n, 1], cpu)?;
        let mask = Tensor::f_arange(width, cpu)?.f_unsqueeze(0)?.f_lt_tensor(&drawn)?.f_to_kind(Kind::Int64)?;
        let ids = Tensor::f_randint_low(ids.start, ids.end, [n, width], cpu)?.f_mul(&mask)?;
        TokenBatch::new(ids, mask)
    }

    /// Rows of token ids, right-padded with id 0 to the longest (mask 1 on
    /// each row's own ids).
    ///
    /// # Shapes
    /// `[rows.len(), longest row]` (at least 1 wide).
    ///
    /// # Errors
    /// [`GradCacheError::EmptyBatch`] for no rows; libtorch errors.
    pub fn from_ids<R: AsRef<[i64]>>(rows: &[R]) -> Result<Self> {
        if rows.is_empty() {
            return Err(GradCacheError::EmptyInput { what: "token rows" });
        }
        let width = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0).max(1);
        let n = rows.len();
        let mut ids = vec![0i64; n * width];
        let mut mask = vec![0i64; n * width];
        for (i, row) in rows.iter().map(AsRef::as_ref).enumerate() {
            ids[i * width..i * width + row.len()].copy_from_slice(row);
            mask[i * width..i * width + row.len()].fill(1);
        }
        let shape = [n as i64, width as i64];
        TokenBatch::new(Tensor::f_from_slice(&ids)?.f_view(shape)?, Tensor::f_from_slice(&mask)?.f_view(shape)?)
    }

    /// Token ids, `[n, L]` int64.
    pub fn ids(&self) -> &Tensor {
        &self.ids
    }

    /// Attention mask, `[n, L]` int64.
    pub fn mask(&self) -> &Tensor {
        &self.mask
    }

    /// Moves both tensors to `device`.
    pub fn to_device(&self, device: tch::Device) -> Result<TokenBatch> {
        Ok(TokenBatch { ids: self.ids.f_to_device(device)?, mask: self.mask.f_to_device(device)? })
    }
}

impl Chunk for TokenBatch {
    fn len(&self) -> usize {
        self.ids.size()[0] as usize
    }

    fn padded_tokens(&self) -> usize {
        (self.ids.size()[0] * self.ids.size()[1]) as usize
    }

    fn lengths(&self) -> Result<Option<Vec<usize>>> {
        let lengths = self.mask.f_sum_dim_intlist(1, false, Kind::Int64)?.f_to_device(tch::Device::Cpu)?;
        Ok(Some(Vec::<i64>::try_from(&lengths)?.into_iter().map(|l| l as usize).collect()))
    }

    fn select(&self, indices: &[usize]) -> Result<Self> {
        let index = Tensor::from_slice(&indices.iter().map(|&i| i as i64).collect::<Vec<_>>()).f_to_device(self.ids.device())?;
        let picked = TokenBatch { ids: self.ids.f_index_select(0, &index)?, mask: self.mask.f_index_select(0, &index)? };
        // Trim the padding columns no picked item uses, as `chunk` does.
        picked.chunk(0, indices.len())
    }

    fn chunk(&self, start: usize, len: usize) -> Result<Self> {
        let (s, l) = (start as i64, len as i64);
        let ids = self.ids.f_narrow(0, s, l)?;
        let mask = self.mask.f_narrow(0, s, l)?;
        // Longest item in the chunk (right padding): trim the columns after it.
        let width = if len == 0 { 0 } else { mask.f_sum_dim_intlist(1, false, Kind::Int64)?.f_max()?.f_int64_value(&[])? };
        let width = width.max(1);
        Ok(TokenBatch { ids: ids.f_narrow(1, 0, width)?, mask: mask.f_narrow(1, 0, width)? })
    }
}
