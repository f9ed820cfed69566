//! A bundle's first stage in the formats other tools read:
//!
//! - **sentence-transformers** (`gradcache export --format
//!   sentence-transformers`), which sentence-transformers and
//!   text-embeddings-inference load: the encoder (transformer weights as
//!   transformers names them, its `config.json` and tokenizer files), a
//!   `Pooling` module (the legacy `pooling_mode_*` booleans, which TEI's
//!   parser requires), a `Dense` module for a projection (identity
//!   activation: gradcache projects token states before pooling, which for
//!   mean and first-token pooling is the same vector as projecting after),
//!   and a `Normalize` module when the encoder normalises.
//! - **PyLate** (`--format pylate`), for a MaxSim bundle: the encoder and a
//!   `Dense` module (the projection, or the identity when there is none, as
//!   PyLate adds a random one to a folder without it), with PyLate's
//!   settings written so that it tokenises as gradcache trained: no
//!   `[Q]`/`[D]` marker, no query expansion, no skip list, both sides cut
//!   at the bundle's `max_len`. PyLate normalises token vectors, so the
//!   bundle's encoder must too.
//!
//! The learned head is not part of either: it stays in the bundle, served
//! by `gradcache serve` or run by `gradcache rerank` (docs/models.md).

use std::path::Path;

use serde_json::json;
use tch::Tensor;

use crate::app::error::{AppError, Result};
use crate::app::scorer::Scorer;
use crate::core::layout::Side;
use crate::error::GradCacheError;
use crate::models::encoders::{Pooling, TextEncoder};
use crate::models::heads::HeadConfig;
use crate::models::weights::{encode_safetensors, write_bytes_atomically};

/// The folder layouts [`export`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExportFormat {
    /// A sentence-transformers folder of a pooled encoder.
    SentenceTransformers,
    /// PyLate's ColBERT folder of a MaxSim bundle's token encoder.
    Pylate,
}

impl ExportFormat {
    /// The name `gradcache export --format` takes.
    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::SentenceTransformers => "sentence-transformers",
            ExportFormat::Pylate => "pylate",
        }
    }

    /// What a text becomes in this format, for messages: `embeddings`, or
    /// `token vectors` for PyLate.
    pub fn vectors(self) -> &'static str {
        match self {
            ExportFormat::SentenceTransformers => "embeddings",
            ExportFormat::Pylate => "token vectors",
        }
    }

    /// Every format.
    pub const ALL: [ExportFormat; 2] = [ExportFormat::SentenceTransformers, ExportFormat::Pylate];

    /// The format named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// What [`export`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    /// The modules, in order (`Transformer`, `Pooling`, …).
    pub modules: Vec<&'static str>,
    /// The width of the exported embeddings (of each token's, for PyLate).
    pub dim: usize,
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| GradCacheError::Json { path: path.to_path_buf(), source })?;
    Ok(write_bytes_atomically(path, text.as_bytes())?)
}

fn create_dir(dir: &Path) -> Result<()> {
    Ok(std::fs::create_dir_all(dir).map_err(crate::error::io_error(dir))?)
}

/// Why a bundle cannot be written in `format`, or `None` when it can.
fn unsupported(scorer: &Scorer, encoder: &TextEncoder, format: ExportFormat) -> Option<&'static str> {
    let config = scorer.config();
    let tokens = encoder.config().pooling() == Pooling::Tokens;
    match format {
        ExportFormat::SentenceTransformers if tokens => {
            Some("a token encoder (MaxSim, interaction) has no pooled vector: export a MaxSim bundle with --format pylate; the token vectors of any bundle are served by `gradcache serve` (/embed_all)")
        }
        ExportFormat::SentenceTransformers => None,
        ExportFormat::Pylate if !tokens => Some("PyLate reads token vectors and this bundle's encoder pools one vector per text: use --format sentence-transformers"),
        ExportFormat::Pylate if !matches!(config.head, HeadConfig::MaxSim) => {
            Some("PyLate scores with plain MaxSim and this bundle's head is another function of the token vectors; serve the bundle with `gradcache serve`")
        }
        ExportFormat::Pylate if !config.tied => Some("PyLate runs one encoder for queries and documents and this bundle's two encoders are not tied"),
        ExportFormat::Pylate if !encoder.config().normalize() => {
            Some("PyLate L2-normalises token vectors and this bundle's encoder does not (train MaxSim with \"encoder\": {\"normalize\": true})")
        }
        ExportFormat::Pylate => None,
    }
}

/// Writes the encoder of `side` (the same one for both sides when tied) in
/// `format` as a folder at `out`, which must not exist or be empty. The
/// folder is assembled under a temporary name beside `out` and renamed into
/// place, so a folder that is there is complete.
///
/// # Errors
/// [`AppError::ExportExists`] for a non-empty `out`;
/// [`AppError::UnsupportedExport`] for a bundle the format cannot express
/// (a token encoder as sentence-transformers; for PyLate, a pooled
/// encoder, a head other than MaxSim, untied or unnormalised encoders);
/// file errors.
pub fn export(scorer: &Scorer, format: ExportFormat, side: Side, out: &Path) -> Result<ExportReport> {
    if out.exists() && std::fs::read_dir(out).map_err(crate::error::io_error(out))?.next().is_some() {
        return Err(AppError::ExportExists { path: out.to_path_buf() });
    }
    let encoder = match side {
        Side::Queries => scorer.query_encoder(),
        Side::Passages => scorer.passage_encoder(),
    };
    if let Some(reason) = unsupported(scorer, encoder, format) {
        return Err(AppError::UnsupportedExport { format: format.name(), reason });
    }
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "export".into());
    let staging = out.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let written =
        (|| -> Result<ExportReport> {
            if staging.exists() {
                std::fs::remove_dir_all(&staging).map_err(crate::error::io_error(&staging))?;
            }
            scorer.model_dir().export(scorer.var_store(), encoder.body_prefix(), &staging)?;
            write_json(
                &staging.join("sentence_bert_config.json"),
                &json!({"max_seq_length": scorer.config().max_len, "do_lower_case": false}),
            )?;
            let report = match format {
                ExportFormat::SentenceTransformers => write_sentence_transformers(scorer, encoder, &staging)?,
                ExportFormat::Pylate => write_pylate(scorer, encoder, &staging)?,
            };
            let readme =
                format!(
            "# Exported by gradcache\n\nThe {} encoder of a gradcache bundle ({} model), as a {} folder: {}. Its {} are of width {}. \
             The bundle's learned scoring head is not part of this folder: serve the bundle with `gradcache serve` for reranking.\n",
            if scorer.config().tied { "shared" } else if side == Side::Queries { "query" } else { "passage" },
            scorer.model_dir().architecture().family(),
            format.name(),
            match format {
                ExportFormat::SentenceTransformers => format!("`SentenceTransformer(\"{name}\")`"),
                ExportFormat::Pylate => format!("`pylate.models.ColBERT(\"{name}\")`"),
            },
            format.vectors(),
            report.dim,
        );
            write_bytes_atomically(&staging.join("README.md"), readme.as_bytes())?;
            Ok(report)
        })();
    let report = match written {
        Ok(report) => report,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if out.exists() {
        std::fs::remove_dir(out).map_err(crate::error::io_error(out))?;
    }
    std::fs::rename(&staging, out).map_err(crate::error::io_error(out))?;
    Ok(report)
}

fn cpu_f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_detach()?.f_to_kind(tch::Kind::Float)?.f_to_device(tch::Device::Cpu)?.f_contiguous()?)
}

/// Writes a `Dense` module (identity activation) of `weight` `[out, in]`
/// and `bias` at `dir`: the files sentence-transformers' `Dense` and
/// PyLate's read.
fn write_dense(dir: &Path, weight: &Tensor, bias: Option<&Tensor>) -> Result<()> {
    create_dir(dir)?;
    let (width, hidden) = (weight.size()[0], weight.size()[1]);
    write_json(
        &dir.join("config.json"),
        &json!({"in_features": hidden, "out_features": width, "bias": bias.is_some(), "activation_function": "torch.nn.modules.linear.Identity"}),
    )?;
    let mut tensors = vec![("linear.weight".to_string(), cpu_f32(weight)?)];
    if let Some(b) = bias {
        tensors.push(("linear.bias".to_string(), cpu_f32(b)?));
    }
    Ok(write_bytes_atomically(&dir.join("model.safetensors"), &encode_safetensors(&tensors, &[])?)?)
}

fn write_modules(staging: &Path, modules: &[(&str, String)]) -> Result<()> {
    let entries: Vec<serde_json::Value> =
        modules.iter().enumerate().map(|(i, (kind, path))| json!({"idx": i, "name": i.to_string(), "path": path, "type": kind})).collect();
    write_json(&staging.join("modules.json"), &serde_json::Value::Array(entries))
}

const ST_TRANSFORMER: &str = "sentence_transformers.models.Transformer";

fn write_sentence_transformers(scorer: &Scorer, encoder: &TextEncoder, staging: &Path) -> Result<ExportReport> {
    let hidden = scorer.model_dir().hidden_size();
    let pooling = encoder.config().pooling();
    let mut modules = vec![(ST_TRANSFORMER, String::new())];
    create_dir(&staging.join("1_Pooling"))?;
    write_json(
        &staging.join("1_Pooling/config.json"),
        &json!({
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": pooling == Pooling::Cls,
            "pooling_mode_mean_tokens": pooling == Pooling::Mean,
            "pooling_mode_max_tokens": false,
            "pooling_mode_mean_sqrt_len_tokens": false,
            "pooling_mode_weightedmean_tokens": false,
            "pooling_mode_lasttoken": false,
            "include_prompt": true
        }),
    )?;
    modules.push(("sentence_transformers.models.Pooling", "1_Pooling".into()));
    let mut dim = hidden;
    if let Some(linear) = encoder.projection() {
        // sentence-transformers' Dense before 5.x always had a bias: write
        // zeros for a projection without one, so older readers load it too.
        let zeros;
        let bias = match &linear.bs {
            Some(b) => b,
            None => {
                zeros = Tensor::f_zeros([linear.ws.size()[0]], (tch::Kind::Float, tch::Device::Cpu))?;
                &zeros
            }
        };
        let path = format!("{}_Dense", modules.len());
        write_dense(&staging.join(&path), &linear.ws, Some(bias))?;
        modules.push(("sentence_transformers.models.Dense", path));
        dim = linear.ws.size()[0] as usize;
    }
    if encoder.config().normalize() {
        let path = format!("{}_Normalize", modules.len());
        create_dir(&staging.join(&path))?;
        modules.push(("sentence_transformers.models.Normalize", path));
    }
    write_modules(staging, &modules)?;
    write_json(
        &staging.join("config_sentence_transformers.json"),
        &json!({"prompts": {}, "default_prompt_name": null, "similarity_fn_name": "cosine"}),
    )?;
    Ok(ExportReport { modules: modules.iter().map(|(k, _)| short_name(k)).collect(), dim })
}

fn write_pylate(scorer: &Scorer, encoder: &TextEncoder, staging: &Path) -> Result<ExportReport> {
    let hidden = scorer.model_dir().hidden_size() as i64;
    let identity;
    let (weight, bias) = match encoder.projection() {
        Some(linear) => (&linear.ws, linear.bs.as_ref()),
        None => {
            identity = Tensor::f_eye(hidden, (tch::Kind::Float, tch::Device::Cpu))?;
            (&identity, None)
        }
    };
    write_dense(&staging.join("1_Dense"), weight, bias)?;
    let modules = [(ST_TRANSFORMER, String::new()), ("pylate.models.Dense.Dense", "1_Dense".to_string())];
    write_modules(staging, &modules)?;
    let max_len = scorer.config().max_len;
    write_json(
        &staging.join("config_sentence_transformers.json"),
        &json!({
            "prompts": {},
            "default_prompt_name": null,
            "similarity_fn_name": "MaxSim",
            "query_prefix": "",
            "document_prefix": "",
            "query_length": max_len,
            "document_length": max_len,
            "do_query_expansion": false,
            "attend_to_expansion_tokens": false,
            "skiplist_words": []
        }),
    )?;
    Ok(ExportReport { modules: modules.iter().map(|(k, _)| short_name(k)).collect(), dim: weight.size()[0] as usize })
}

/// `Dense` for `pylate.models.Dense.Dense`, and so on.
fn short_name(kind: &str) -> &'static str {
    ["Transformer", "Pooling", "Dense", "Normalize"].into_iter().find(|n| kind.ends_with(n)).unwrap_or("module")
}
