//! Text → token ids, with BERT's WordPiece tokenizer.

use std::path::Path;

use rust_tokenizers::tokenizer::{BertTokenizer, MultiThreadedTokenizer, TruncationStrategy};
use tch::{Kind, Tensor};

use crate::core::batch::TokenBatch;
use crate::error::{GradCacheError, Result};

/// A WordPiece tokenizer that turns texts into right-padded [`TokenBatch`]es
/// (`[CLS] … [SEP]`, truncated to `max_len` tokens).
pub struct TextTokenizer {
    inner: BertTokenizer,
    max_len: usize,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").field("max_len", &self.max_len).finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Reads a `vocab.txt`. `lowercase` also strips accents, as Hugging
    /// Face's uncased BERT tokenizers do.
    ///
    /// # Errors
    /// [`GradCacheError::Io`] for a missing file, [`GradCacheError::Tokenizer`]
    /// for an unreadable vocabulary, [`GradCacheError::InvalidConfig`] for
    /// `max_len < 2`.
    pub fn from_vocab(vocab: &Path, lowercase: bool, max_len: usize) -> Result<Self> {
        if max_len < 2 {
            return Err(GradCacheError::InvalidConfig { field: "max_len", reason: "must be at least 2 ([CLS] and [SEP])" });
        }
        if !vocab.is_file() {
            return Err(crate::error::not_found(vocab, "no such file"));
        }
        Ok(TextTokenizer { inner: BertTokenizer::from_file(vocab, lowercase, lowercase)?, max_len })
    }

    /// The longest tokenized text.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Tokenizes texts into one padded batch.
    ///
    /// # Shapes
    /// Returns ids and mask `[n, L]`, `L` the longest tokenized text (≤ `max_len`).
    ///
    /// # Errors
    /// [`GradCacheError::EmptyInput`] for no texts.
    pub fn encode<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<TokenBatch> {
        if texts.is_empty() {
            return Err(GradCacheError::EmptyInput { what: "texts to tokenize" });
        }
        let encoded =
            MultiThreadedTokenizer::encode_list(&self.inner, texts, self.max_len, &TruncationStrategy::LongestFirst, 0);
        let width = encoded.iter().map(|e| e.token_ids.len()).max().unwrap_or(0).max(1);
        let n = encoded.len();
        let mut ids = vec![0i64; n * width];
        let mut mask = vec![0i64; n * width];
        for (i, e) in encoded.iter().enumerate() {
            for (j, &t) in e.token_ids.iter().enumerate() {
                ids[i * width + j] = t;
                mask[i * width + j] = 1;
            }
        }
        let shape = [n as i64, width as i64];
        TokenBatch::new(
            Tensor::f_from_slice(&ids)?.f_view(shape)?,
            Tensor::f_from_slice(&mask)?.f_view(shape)?.f_to_kind(Kind::Int64)?,
        )
    }
}
