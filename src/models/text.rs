//! Text → token ids: Hugging Face `tokenizers` for every model folder with a
//! `tokenizer.json` (BERT, XLM-RoBERTa, ModernBERT, …), BERT's WordPiece
//! (rust_tokenizers) for folders that ship only a `vocab.txt`.

use std::path::Path;
use std::sync::Arc;

use rust_tokenizers::tokenizer::{BertTokenizer, MultiThreadedTokenizer, Tokenizer, TruncationStrategy};

use crate::core::batch::TokenBatch;
use crate::error::{GradCacheError, Result};

#[derive(Clone)]
enum Backend {
    /// `vocab.txt` only: BERT's WordPiece.
    WordPiece(Arc<BertTokenizer>),
    /// `tokenizer.json`: `truncating` cuts to `max_len` (as transformers'
    /// `truncation=True, max_length=max_len` does), `whole` does not cut.
    Json { truncating: Arc<tokenizers::Tokenizer>, whole: Arc<tokenizers::Tokenizer>, path: Arc<Path> },
}

/// A tokenizer that turns texts into right-padded [`TokenBatch`]es with the
/// model's special tokens (`[CLS] … [SEP]`, `<s> … </s>`), truncated to
/// `max_len` tokens.
///
/// Padding is always on the right, whatever the folder's `padding_side`:
/// the encoders are bidirectional and read the mask, so a text's states do
/// not depend on where its padding is.
#[derive(Clone)]
pub struct TextTokenizer {
    backend: Backend,
    max_len: usize,
    /// Special tokens the tokenizer puts before and after a text's own.
    specials: (usize, usize),
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.backend {
            Backend::WordPiece(_) => "vocab.txt (WordPiece)",
            Backend::Json { .. } => "tokenizer.json",
        };
        f.debug_struct("TextTokenizer").field("kind", &kind).field("max_len", &self.max_len).finish_non_exhaustive()
    }
}

fn check_max_len(max_len: usize) -> Result<()> {
    if max_len < 2 {
        return Err(GradCacheError::InvalidConfig { field: "max_len", reason: "must be at least 2 (the special tokens)" });
    }
    Ok(())
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
        check_max_len(max_len)?;
        if !vocab.is_file() {
            return Err(crate::error::not_found(vocab, "no such file"));
        }
        let backend = Backend::WordPiece(Arc::new(BertTokenizer::from_file(vocab, lowercase, lowercase)?));
        Ok(TextTokenizer { backend, max_len, specials: (1, 1) })
    }

    /// Reads a Hugging Face `tokenizer.json` (its normaliser, pre-tokeniser,
    /// model and post-processor, so its special tokens); its own truncation
    /// and padding settings are replaced by `max_len` and no padding.
    ///
    /// # Errors
    /// [`GradCacheError::Io`] for a missing file,
    /// [`GradCacheError::TokenizerJson`] for one `tokenizers` cannot read,
    /// [`GradCacheError::InvalidConfig`] for `max_len` not above the special
    /// tokens the tokenizer adds.
    pub fn from_tokenizer_json(path: &Path, max_len: usize) -> Result<Self> {
        check_max_len(max_len)?;
        if !path.is_file() {
            return Err(crate::error::not_found(path, "no such file"));
        }
        let failed = |e: tokenizers::Error| GradCacheError::TokenizerJson { path: path.to_path_buf(), reason: e.to_string() };
        let mut whole = tokenizers::Tokenizer::from_file(path).map_err(failed)?;
        whole.with_padding(None);
        whole.with_truncation(None).map_err(failed)?;
        // Which of a text's tokens are the tokenizer's own: those before the
        // first and after the last token of a one-word text.
        let probe = whole.encode("a", true).map_err(failed)?;
        let mask = probe.get_special_tokens_mask();
        let before = mask.iter().take_while(|&&m| m == 1).count();
        let after = mask.iter().rev().take_while(|&&m| m == 1).count().min(mask.len() - before);
        if max_len <= before + after {
            return Err(GradCacheError::InvalidConfig {
                field: "max_len",
                reason: "must leave room for a token besides the special tokens",
            });
        }
        let mut truncating = whole.clone();
        truncating
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len,
                strategy: tokenizers::TruncationStrategy::LongestFirst,
                stride: 0,
                direction: tokenizers::TruncationDirection::Right,
            }))
            .map_err(failed)?;
        let backend = Backend::Json { truncating: Arc::new(truncating), whole: Arc::new(whole), path: Arc::from(path) };
        Ok(TextTokenizer { backend, max_len, specials: (before, after) })
    }

    /// The longest tokenized text.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Tokenizes texts into one padded batch (texts tokenized in parallel).
    ///
    /// # Shapes
    /// Returns ids and mask `[n, L]`, `L` the longest tokenized text (≤ `max_len`).
    ///
    /// # Errors
    /// [`GradCacheError::EmptyInput`] for no texts;
    /// [`GradCacheError::TokenizerJson`] when `tokenizers` fails on a text.
    pub fn encode<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<TokenBatch> {
        if texts.is_empty() {
            return Err(GradCacheError::EmptyInput { what: "texts to tokenize" });
        }
        let rows: Vec<Vec<i64>> = match &self.backend {
            Backend::WordPiece(inner) => {
                MultiThreadedTokenizer::encode_list(inner.as_ref(), texts, self.max_len, &TruncationStrategy::LongestFirst, 0)
                    .into_iter()
                    .map(|e| e.token_ids)
                    .collect()
            }
            Backend::Json { truncating, path, .. } => {
                let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
                let encoded = truncating
                    .encode_batch_fast(inputs, true)
                    .map_err(|e| GradCacheError::TokenizerJson { path: path.to_path_buf(), reason: e.to_string() })?;
                encoded.iter().map(|e| e.get_ids().iter().map(|&id| i64::from(id)).collect()).collect()
            }
        };
        TokenBatch::from_ids(&rows)
    }

    /// How many token ids the vocabulary holds (added tokens included):
    /// every id a text can tokenize to is below it.
    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::WordPiece(inner) => {
                use rust_tokenizers::vocab::Vocab;
                Tokenizer::vocab(inner.as_ref()).values().len()
            }
            Backend::Json { whole, .. } => whole.get_vocab_size(true),
        }
    }

    /// One text's token ids with the special tokens, **not** truncated: what
    /// [`TextTokenizer::truncate`] cuts to `max_len`.
    ///
    /// # Errors
    /// [`GradCacheError::TokenizerJson`] when `tokenizers` fails on the text.
    pub fn ids_untruncated(&self, text: &str) -> Result<Vec<i64>> {
        Ok(match &self.backend {
            Backend::WordPiece(inner) => {
                Tokenizer::encode(inner.as_ref(), text, None, usize::MAX, &TruncationStrategy::DoNotTruncate, 0).token_ids
            }
            Backend::Json { whole, path, .. } => whole
                .encode(text, true)
                .map_err(|e| GradCacheError::TokenizerJson { path: path.to_path_buf(), reason: e.to_string() })?
                .get_ids()
                .iter()
                .map(|&id| i64::from(id))
                .collect(),
        })
    }

    /// Ids from [`TextTokenizer::ids_untruncated`] cut to `max_len`, keeping
    /// the special tokens at both ends and the first (`from_left: false`,
    /// what [`TextTokenizer::encode`] does) or the last tokens of the text.
    pub fn truncate(&self, ids: Vec<i64>, from_left: bool) -> Vec<i64> {
        self.truncate_to(ids, self.max_len, from_left)
    }

    /// As [`TextTokenizer::truncate`], to `max_len` tokens instead of the
    /// tokenizer's own (a server that clamps its input length); a
    /// `max_len` below the special tokens' count is raised to it.
    pub fn truncate_to(&self, ids: Vec<i64>, max_len: usize, from_left: bool) -> Vec<i64> {
        let (before, after) = self.specials;
        let max_len = max_len.max(before + after);
        if ids.len() <= max_len || ids.len() < before + after {
            return ids;
        }
        let keep = max_len - before - after;
        let body = &ids[before..ids.len() - after];
        let body = if from_left { &body[body.len() - keep..] } else { &body[..keep] };
        let mut out = Vec::with_capacity(max_len);
        out.extend_from_slice(&ids[..before]);
        out.extend_from_slice(body);
        out.extend_from_slice(&ids[ids.len() - after..]);
        out
    }
}
