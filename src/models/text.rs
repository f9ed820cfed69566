//! Text → token ids, with BERT's WordPiece tokenizer.

use std::path::Path;

use rust_tokenizers::tokenizer::{BertTokenizer, MultiThreadedTokenizer, Tokenizer, TruncationStrategy};

use crate::core::batch::TokenBatch;
use crate::error::{GradCacheError, Result};

/// A WordPiece tokenizer that turns texts into right-padded [`TokenBatch`]es
/// (`[CLS] … [SEP]`, truncated to `max_len` tokens).
#[derive(Clone)]
pub struct TextTokenizer {
    inner: std::sync::Arc<BertTokenizer>,
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
        Ok(TextTokenizer { inner: std::sync::Arc::new(BertTokenizer::from_file(vocab, lowercase, lowercase)?), max_len })
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
            MultiThreadedTokenizer::encode_list(self.inner.as_ref(), texts, self.max_len, &TruncationStrategy::LongestFirst, 0);
        let rows: Vec<Vec<i64>> = encoded.into_iter().map(|e| e.token_ids).collect();
        TokenBatch::from_ids(&rows)
    }

    /// One text's token ids with the special tokens (`[CLS] … [SEP]`),
    /// **not** truncated: what [`TextTokenizer::truncate`] cuts to
    /// `max_len`.
    pub fn ids_untruncated(&self, text: &str) -> Vec<i64> {
        Tokenizer::encode(self.inner.as_ref(), text, None, usize::MAX, &TruncationStrategy::DoNotTruncate, 0).token_ids
    }

    /// Ids from [`TextTokenizer::ids_untruncated`] cut to `max_len`, keeping
    /// the special tokens at both ends and the first (`from_left: false`,
    /// what [`TextTokenizer::encode`] does) or the last tokens of the text.
    pub fn truncate(&self, mut ids: Vec<i64>, from_left: bool) -> Vec<i64> {
        if ids.len() <= self.max_len || ids.len() < 2 {
            return ids;
        }
        let last = ids.pop().unwrap_or_default();
        let keep = self.max_len - 2;
        let body: Vec<i64> = if from_left { ids[ids.len() - keep..].to_vec() } else { ids[1..1 + keep].to_vec() };
        let mut out = Vec::with_capacity(self.max_len);
        out.push(ids[0]);
        out.extend(body);
        out.push(last);
        out
    }
}
