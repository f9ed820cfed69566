//! Checkpoints: `checkpoints/step-NNNNNN/` holding `model.safetensors`
//! (every variable), `optimizer.safetensors` and `state.json` (the step,
//! the training configuration, the run's fingerprint and a SHA-256 of each
//! weights file). Each is written into a temporary folder that is renamed
//! into place when complete, so a crash never leaves a half-written
//! checkpoint; damage after the fact is caught by the checksums.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::nn;

use super::optim::AdamW;
use super::TrainConfig;
use crate::app::error::{AppError, Result};
use crate::app::settings::{differing_fields, flatten};
use crate::error::{io_error as io, GradCacheError};
use crate::models::weights::{load_safetensors, save_safetensors, write_bytes_atomically};

/// The files of a checkpoint that carry a checksum.
const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "optimizer.safetensors"];

/// Training settings that may change when a run is resumed.
pub const MAY_CHANGE_ON_RESUME: [&str; 5] = ["steps", "eval_every", "checkpoint_every", "keep_checkpoints", "progress"];

/// What a run is beyond its training configuration (the resolved model and
/// data settings, checksums of the model and the data), as flat
/// `name → value` pairs; compared on resume.
pub type RunFingerprint = BTreeMap<String, serde_json::Value>;

/// What `state.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointState {
    /// Completed training steps.
    pub step: usize,
    /// The training configuration of the run.
    pub config: TrainConfig,
    /// The rest of the run's identity.
    #[serde(default)]
    pub run: RunFingerprint,
    /// SHA-256 (hex) of each weights file, by file name.
    #[serde(default)]
    pub checksums: BTreeMap<String, String>,
}

/// SHA-256 of a file, in hex.
///
/// # Errors
/// [`GradCacheError::Io`].
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io(path))?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// The checkpoints under `dir`, oldest first (complete ones: a folder is
/// renamed into place only once written).
///
/// # Errors
/// [`GradCacheError::Io`] for an unreadable folder.
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

/// Writes a checkpoint of `vs` and `optimizer` after `state.step` steps,
/// with the checksums of its weights files, and keeps only the newest
/// `keep`.
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
    stop_point_for_tests("checkpoint");
    optimizer.save(&tmp.join("optimizer.safetensors"))?;
    let mut state = state.clone();
    for file in WEIGHT_FILES {
        state.checksums.insert(file.to_string(), sha256_file(&tmp.join(file))?);
    }
    let json = serde_json::to_vec_pretty(&state).map_err(|source| GradCacheError::Json { path: tmp.join("state.json"), source })?;
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

/// The environment variable naming where a test wants the trainer to stop
/// itself (SIGSTOP), so that it can kill it there and not at a moment it
/// has to race for: `checkpoint` is half-way through a checkpoint write.
pub const STOP_AT_ENV: &str = "GRADCACHE_TEST_STOP_AT";

/// Stops this process with SIGSTOP when [`STOP_AT_ENV`] names `point`.
fn stop_point_for_tests(point: &str) {
    #[cfg(unix)]
    if std::env::var(STOP_AT_ENV).as_deref() == Ok(point) {
        // SAFETY: raise() has no preconditions; SIGSTOP cannot be caught.
        unsafe {
            libc::raise(libc::SIGSTOP);
        }
    }
}

/// Reads a checkpoint's state and checks every weights file against its
/// checksum: whether the checkpoint is intact, before anything is loaded.
///
/// # Errors
/// [`AppError::Checkpoint`] naming the file that is missing,
/// unreadable, corrupt or changed.
pub fn verify(path: &Path) -> Result<CheckpointState> {
    let bad = |file: &Path, reason: String| AppError::Checkpoint { path: file.to_path_buf(), reason };
    let state_path = path.join("state.json");
    let bytes = std::fs::read(&state_path).map_err(|e| bad(&state_path, format!("unreadable: {e}")))?;
    let state: CheckpointState = serde_json::from_slice(&bytes).map_err(|e| bad(&state_path, format!("state.json is corrupt ({e})")))?;
    for file in WEIGHT_FILES {
        let p = path.join(file);
        if !p.is_file() {
            return Err(bad(&p, "missing".into()));
        }
        match state.checksums.get(file) {
            Some(want) => {
                let got = sha256_file(&p).map_err(|e| bad(&p, format!("unreadable: {e}")))?;
                if &got != want {
                    return Err(bad(&p, "checksum mismatch: the file was changed or damaged after it was written".into()));
                }
            }
            None if !state.checksums.is_empty() => return Err(bad(&p, "no checksum recorded for it".into())),
            // A checkpoint from before checksums: loading checks what it can.
            None => {}
        }
    }
    Ok(state)
}

/// Whether a run with `config` and `run` may resume a checkpoint with
/// `state`: every differing field, as `name: checkpoint -> requested`
/// (empty when it may). Only [`MAY_CHANGE_ON_RESUME`] may differ in the
/// training configuration.
pub fn differences(state: &CheckpointState, config: &TrainConfig, run: &RunFingerprint) -> Vec<String> {
    let flat = |c: &TrainConfig| flatten(&serde_json::to_value(c).unwrap_or_default());
    let mut out: Vec<String> =
        differing_fields(&flat(&state.config), &flat(config), &MAY_CHANGE_ON_RESUME).into_iter().map(|d| format!("train.{d}")).collect();
    out.extend(differing_fields(&state.run, run, &[]));
    out
}

/// Restores the intact checkpoint at `path` (see [`verify`]) into `vs` and
/// `optimizer` and returns its state, after checking it was made by the
/// same run.
///
/// # Errors
/// As [`verify`]; [`AppError::ResumeMismatch`] naming every setting
/// that differs; [`AppError::Checkpoint`] for a model with other
/// variables; [`GradCacheError::MissingWeights`] /
/// [`GradCacheError::WeightShape`] for weights that do not fit. On error,
/// no variable has changed.
pub fn restore(
    path: &Path,
    vs: &nn::VarStore,
    optimizer: &mut AdamW,
    config: &TrainConfig,
    run: &RunFingerprint,
) -> Result<CheckpointState> {
    let state = verify(path)?;
    let fields = differences(&state, config, run);
    if !fields.is_empty() {
        return Err(AppError::ResumeMismatch { path: path.to_path_buf(), fields });
    }
    // Check the optimizer file before touching any weight.
    let mut restored = AdamW::new(optimizer.weight_decay);
    restored.load(vs, &path.join("optimizer.safetensors"))?;
    let report = load_safetensors(vs, "", &path.join("model.safetensors"))?;
    if !report.unused.is_empty() {
        return Err(AppError::Checkpoint { path: path.to_path_buf(), reason: "holds weights this model does not have".into() });
    }
    *optimizer = restored;
    Ok(state)
}
