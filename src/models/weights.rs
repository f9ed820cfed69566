//! Moving weights between a `VarStore` and safetensors files.
//!
//! Loading is by name: every variable of the store under `prefix` must find
//! its name (without the prefix) in the file, with the same shape. Extra
//! tensors in the file are reported, not loaded (e.g. BERT's
//! `embeddings.position_ids` buffer).

use std::path::{Path, PathBuf};

use tch::{nn, Tensor};

use crate::error::{GradCacheError, Result};

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Variables loaded.
    pub loaded: usize,
    /// Tensors in the file that no variable took.
    pub unused: Vec<String>,
}

fn strip<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        Some(name)
    } else {
        name.strip_prefix(prefix)?.strip_prefix('.')
    }
}

/// Reads every tensor of a safetensors file.
///
/// # Errors
/// [`GradCacheError::Io`] when the file is missing; [`GradCacheError::Torch`]
/// when it is not a valid safetensors file.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        return Err(crate::error::not_found(path, "no such file"));
    }
    Ok(Tensor::read_safetensors(path)?)
}

/// Loads the variables of `vs` under `prefix` (`""` for all) from `file`,
/// converting each tensor to the variable's kind and device.
///
/// # Errors
/// [`GradCacheError::MissingWeights`] when the file lacks a variable;
/// [`GradCacheError::WeightShape`] for a shape mismatch; file errors as
/// [`read_safetensors`]. On error no variable has been changed.
pub fn load_safetensors(vs: &nn::VarStore, prefix: &str, file: &Path) -> Result<LoadReport> {
    let mut tensors: std::collections::HashMap<String, Tensor> = read_safetensors(file)?.into_iter().collect();
    let variables = vs.variables();
    let mut plan = Vec::new();
    let mut missing = Vec::new();
    for (name, var) in &variables {
        let Some(key) = strip(name, prefix) else { continue };
        match tensors.remove(key) {
            None => missing.push(key.to_string()),
            Some(t) if t.size() != var.size() => {
                return Err(GradCacheError::WeightShape {
                    path: file.to_path_buf(),
                    name: key.to_string(),
                    expected: var.size(),
                    got: t.size(),
                })
            }
            Some(t) => plan.push((var, t)),
        }
    }
    if !missing.is_empty() {
        missing.sort();
        return Err(GradCacheError::MissingWeights { path: file.to_path_buf(), missing });
    }
    tch::no_grad(|| -> Result<()> {
        for (var, t) in &plan {
            let mut var = (*var).shallow_clone();
            var.f_copy_(&t.f_to_kind(var.kind())?.f_to_device(var.device())?)?;
        }
        Ok(())
    })?;
    let mut unused: Vec<String> = tensors.into_keys().collect();
    unused.sort();
    Ok(LoadReport { loaded: plan.len(), unused })
}

/// Writes the variables of `vs` under `prefix` to a safetensors file, named
/// without the prefix, atomically (a temporary file renamed into place).
///
/// # Errors
/// [`GradCacheError::Io`] or [`GradCacheError::Torch`] on write failure.
pub fn save_safetensors(vs: &nn::VarStore, prefix: &str, file: &Path) -> Result<usize> {
    let named = named_variables(vs, prefix);
    let bytes = encode_safetensors(&named, &[])?;
    write_bytes_atomically(file, &bytes)?;
    Ok(named.len())
}

/// The variables of `vs` under `prefix`, named without it, sorted by name.
pub fn named_variables(vs: &nn::VarStore, prefix: &str) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> =
        vs.variables().into_iter().filter_map(|(name, var)| strip(&name, prefix).map(|k| (k.to_string(), var))).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

fn dtype_of(kind: tch::Kind) -> Result<safetensors::Dtype> {
    use safetensors::Dtype;
    use tch::Kind::*;
    Ok(match kind {
        Float => Dtype::F32,
        Double => Dtype::F64,
        Half => Dtype::F16,
        BFloat16 => Dtype::BF16,
        Int64 => Dtype::I64,
        Int => Dtype::I32,
        Int8 => Dtype::I8,
        Uint8 => Dtype::U8,
        Bool => Dtype::BOOL,
        _ => return Err(GradCacheError::Shape { what: "tensor to save", expected: "a float, integer or bool kind", got: vec![] }),
    })
}

/// One tensor's bytes as the `safetensors` crate reads them.
struct TensorBytes {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for TensorBytes {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Serialises named tensors in the safetensors format with the
/// `safetensors` crate, with `metadata` plus `"format": "pt"` (which
/// Hugging Face transformers requires) in the header.
///
/// # Errors
/// [`GradCacheError::Torch`] copying a tensor; [`GradCacheError::Shape`] for
/// a kind safetensors has no name for or a failed serialisation.
pub fn encode_safetensors(named: &[(String, Tensor)], metadata: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut views = Vec::with_capacity(named.len());
    for (name, t) in named {
        let t = t.f_detach()?.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        views.push((name.clone(), TensorBytes { dtype: dtype_of(t.kind())?, shape, bytes }));
    }
    let mut info: std::collections::HashMap<String, String> = metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    info.insert("format".into(), "pt".into());
    safetensors::serialize(views, &Some(info)).map_err(|_| GradCacheError::Shape {
        what: "safetensors serialisation",
        expected: "tensors the format can hold",
        got: vec![named.len() as i64],
    })
}

/// Writes `file` through `write(tmp)` on a sibling temporary path, then
/// renames it into place, so readers never see a half-written file. A
/// missing parent folder is created first.
///
/// # Errors
/// [`GradCacheError::Io`] for the folder or the rename; whatever `write`
/// returns.
pub fn write_atomically(file: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        std::fs::create_dir_all(parent).map_err(crate::error::io_error(parent))?;
    }
    let tmp = temporary_sibling(file);
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, file).map_err(crate::error::io_error(file))
}

/// Writes bytes atomically (see [`write_atomically`]).
///
/// # Errors
/// [`GradCacheError::Io`].
pub fn write_bytes_atomically(file: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(file, |tmp| std::fs::write(tmp, bytes).map_err(crate::error::io_error(tmp)))
}

fn temporary_sibling(file: &Path) -> PathBuf {
    let mut name = file.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{}.tmp", std::process::id()));
    file.with_file_name(name)
}
