//! Checkpoints: `checkpoints/step-NNNNNN/` holding `model.safetensors`
//! (every variable), `optimizer.safetensors` and `state.json`. Each is
//! written into a temporary folder that is renamed into place when
//! complete, so a crash never leaves a half-written checkpoint.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn;

use super::optim::AdamW;
use super::TrainConfig;
use crate::error::{io_error as io, GradCacheError, Result};
use crate::weights::{load_safetensors, save_safetensors, write_bytes_atomically};

/// What `state.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointState {
    /// Completed training steps.
    pub step: usize,
    /// The training configuration of the run.
    pub config: TrainConfig,
}

/// The complete checkpoints under `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let step = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("step-")).and_then(|s| s.parse().ok());
        if let Some(step) = step {
            found.push((step, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Writes a checkpoint of `vs` and `optimizer` after `step` steps and keeps
/// only the newest `keep`.
///
/// # Errors
/// [`GradCacheError::Io`], [`GradCacheError::Torch`].
pub fn save(dir: &Path, vs: &nn::VarStore, optimizer: &AdamW, state: &CheckpointState, keep: usize) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let final_path = dir.join(format!("step-{:06}", state.step));
    let tmp = dir.join(format!(".step-{:06}.tmp-{}", state.step, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    save_safetensors(vs, "", &tmp.join("model.safetensors"))?;
    optimizer.save(&tmp.join("optimizer.safetensors"))?;
    let json = serde_json::to_vec_pretty(state).map_err(|source| GradCacheError::Json { path: tmp.join("state.json"), source })?;
    write_bytes_atomically(&tmp.join("state.json"), &json)?;
    if final_path.exists() {
        std::fs::remove_dir_all(&final_path).map_err(io(&final_path))?;
    }
    std::fs::rename(&tmp, &final_path).map_err(io(&final_path))?;
    let all = list(dir)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(old).map_err(io(old))?;
    }
    Ok(final_path)
}

/// Restores the checkpoint at `path` into `vs` and `optimizer` and returns
/// its state, after checking it was made by a compatible run.
///
/// # Errors
/// [`GradCacheError::Checkpoint`] for an unreadable state, a model with
/// other variables, or an incompatible training configuration;
/// [`GradCacheError::MissingWeights`] / [`GradCacheError::WeightShape`] for
/// weights that do not fit.
pub fn restore(path: &Path, vs: &nn::VarStore, optimizer: &mut AdamW, config: &TrainConfig) -> Result<CheckpointState> {
    let state_path = path.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    let state: CheckpointState = serde_json::from_str(&text)
        .map_err(|_| GradCacheError::Checkpoint { path: state_path.clone(), reason: "state.json is corrupt" })?;
    if !state.config.compatible_with(config) {
        return Err(GradCacheError::Checkpoint {
            path: path.to_path_buf(),
            reason: "made with another training configuration (only steps, eval_every, checkpoint_every, keep_checkpoints and progress may change on resume)",
        });
    }
    // Check the optimizer file before touching any weight.
    let mut restored = AdamW::new(optimizer.weight_decay);
    restored.load(vs, &path.join("optimizer.safetensors"))?;
    let report = load_safetensors(vs, "", &path.join("model.safetensors"))?;
    if !report.unused.is_empty() {
        return Err(GradCacheError::Checkpoint { path: path.to_path_buf(), reason: "holds weights this model does not have" });
    }
    *optimizer = restored;
    Ok(state)
}
