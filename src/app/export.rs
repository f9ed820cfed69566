//! A bundle's first stage in the formats other tools read: a
//! sentence-transformers folder (`gradcache export --format
//! sentence-transformers`), which sentence-transformers, PyLate's
//! dependencies and text-embeddings-inference load.
//!
//! The folder holds the encoder (transformer weights as transformers names
//! them, its `config.json` and tokenizer files), a `Pooling` module (the
//! legacy `pooling_mode_*` booleans, which TEI's parser requires), a
//! `Dense` module for a projection (identity activation: gradcache
//! projects token states before pooling, which for mean and first-token
//! pooling is the same vector as projecting after), and a `Normalize`
//! module when the encoder normalises. The learned head is not part of it:
//! it stays in the bundle, served by `gradcache serve` or run by
//! `gradcache rerank` (docs/models.md).

use std::path::Path;

use serde_json::json;
use tch::Tensor;

use crate::app::error::{AppError, Result};
use crate::app::scorer::Scorer;
use crate::core::layout::Side;
use crate::error::GradCacheError;
use crate::models::encoders::Pooling;
use crate::models::weights::{encode_safetensors, write_bytes_atomically};

/// What [`export_sentence_transformers`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    /// The modules, in order (`Transformer`, `Pooling`, …).
    pub modules: Vec<&'static str>,
    /// The width of the exported embeddings.
    pub dim: usize,
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| GradCacheError::Json { path: path.to_path_buf(), source })?;
    Ok(write_bytes_atomically(path, text.as_bytes())?)
}

/// Writes the encoder of `side` (the same one for both sides when tied) as a
/// sentence-transformers folder at `out`, which must not exist or be empty.
/// The folder is assembled under a temporary name beside `out` and renamed
/// into place, so a folder that is there is complete.
///
/// # Errors
/// [`AppError::ExportExists`] for a non-empty `out`;
/// [`AppError::UnsupportedExport`] for a token encoder (late interaction:
/// sentence-transformers pools one vector per text); file errors.
pub fn export_sentence_transformers(scorer: &Scorer, side: Side, out: &Path) -> Result<ExportReport> {
    const FORMAT: &str = "sentence-transformers";
    if out.exists() && std::fs::read_dir(out).map_err(crate::error::io_error(out))?.next().is_some() {
        return Err(AppError::ExportExists { path: out.to_path_buf() });
    }
    let config = scorer.config();
    let encoder = match side {
        Side::Queries => scorer.query_encoder(),
        Side::Passages => scorer.passage_encoder(),
    };
    let pooling = encoder.config().pooling();
    if pooling == Pooling::Tokens {
        return Err(AppError::UnsupportedExport {
            format: FORMAT,
            reason: "a token encoder (MaxSim, interaction) has no pooled vector; its token vectors are served by `gradcache serve` (/embed_all)",
        });
    }
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "export".into());
    let staging = out.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let written = (|| -> Result<ExportReport> {
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(crate::error::io_error(&staging))?;
        }
        let vs = scorer.var_store();
        scorer.model_dir().export(vs, encoder.body_prefix(), &staging)?;
        let hidden = scorer.model_dir().hidden_size();
        let mut modules = vec![("Transformer", String::new())];
        write_json(&staging.join("sentence_bert_config.json"), &json!({"max_seq_length": config.max_len, "do_lower_case": false}))?;
        std::fs::create_dir_all(staging.join("1_Pooling")).map_err(crate::error::io_error(&staging))?;
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
        modules.push(("Pooling", "1_Pooling".into()));
        let mut dim = hidden;
        if let Some(linear) = encoder.projection() {
            let width = linear.ws.size()[0] as usize;
            let cpu = |t: &Tensor| -> Result<Tensor> { Ok(t.f_detach()?.f_to_kind(tch::Kind::Float)?.f_to_device(tch::Device::Cpu)?) };
            let bias = match &linear.bs {
                Some(b) => cpu(b)?,
                None => Tensor::f_zeros([width as i64], (tch::Kind::Float, tch::Device::Cpu))?,
            };
            let dir = staging.join(format!("{}_Dense", modules.len()));
            std::fs::create_dir_all(&dir).map_err(crate::error::io_error(&dir))?;
            write_json(
                &dir.join("config.json"),
                &json!({"in_features": hidden, "out_features": width, "bias": true, "activation_function": "torch.nn.modules.linear.Identity"}),
            )?;
            let bytes = encode_safetensors(&[("linear.weight".to_string(), cpu(&linear.ws)?), ("linear.bias".to_string(), bias)], &[])?;
            write_bytes_atomically(&dir.join("model.safetensors"), &bytes)?;
            modules.push(("Dense", format!("{}_Dense", modules.len())));
            dim = width;
        }
        if encoder.config().normalize() {
            let path = format!("{}_Normalize", modules.len());
            std::fs::create_dir_all(staging.join(&path)).map_err(crate::error::io_error(&staging))?;
            modules.push(("Normalize", path));
        }
        let entries: Vec<serde_json::Value> = modules
            .iter()
            .enumerate()
            .map(|(i, (kind, path))| json!({"idx": i, "name": i.to_string(), "path": path, "type": format!("sentence_transformers.models.{kind}")}))
            .collect();
        write_json(&staging.join("modules.json"), &serde_json::Value::Array(entries))?;
        write_json(&staging.join("config_sentence_transformers.json"), &json!({"prompts": {}, "default_prompt_name": null, "similarity_fn_name": "cosine"}))?;
        let readme = format!(
            "# Exported by gradcache\n\nThe {} encoder of a gradcache bundle ({} model), as a sentence-transformers folder: \
             `SentenceTransformer(\"{name}\")`. Embeddings of width {dim}. The bundle's learned scoring head is not part of this \
             folder: serve the bundle with `gradcache serve` for reranking.\n",
            if config.tied { "shared" } else if side == Side::Queries { "query" } else { "passage" },
            scorer.model_dir().architecture().family(),
        );
        write_bytes_atomically(&staging.join("README.md"), readme.as_bytes())?;
        Ok(ExportReport { modules: modules.iter().map(|(k, _)| *k).collect(), dim })
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
