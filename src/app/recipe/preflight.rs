//! Every check before anything is written, so that a run that fails here
//! leaves an existing run folder as it was; and the config resolved as the
//! run records it (config.json, the resume fingerprint, the bundle).

use std::path::Path;

use tch::Device;

use super::config::{RerankerConfig, Start};
use crate::app::error::{AppError, Result};
use crate::app::reporter::Reporter;
use crate::core::config::StepConfig;
use crate::core::distributed::Collective;
use crate::error::GradCacheError;
use crate::models::pretrained::ModelDir;
use crate::runtime::parse_device;
use crate::runtime::precision::PrecisionChoice;

/// A run's settings once checked and resolved.
pub(super) struct Resolved {
    /// The config as the run records it: `auto` precision decided for the
    /// device, the encoder's unset fields from the model folder, the
    /// head's width following the encoder's vectors.
    pub c: RerankerConfig,
    pub device: Device,
    /// What `step.precision` asked and what it became.
    pub precision: PrecisionChoice,
    pub model: ModelDir,
    /// The metric `select_best` keeps by, resolved
    /// ([`RerankerConfig::selected_metric`]).
    pub selected: Option<String>,
}

/// Whether a folder holds a run (its config, checkpoints or log).
fn holds_run(dir: &Path) -> bool {
    dir.join("config.json").exists() || dir.join("checkpoints").exists() || dir.join("metrics.jsonl").exists()
}

/// Checks `c` for a run started as `start` over `world`'s processes and
/// resolves it. Says when the head's width changes to the model's.
///
/// # Errors
/// [`GradCacheError::InvalidConfig`] for a bad setting or a batch smaller
/// than the number of processes; [`AppError::RunExists`] for a new run in
/// a folder that holds one; a missing or unreadable model folder.
pub(super) fn preflight(c: &RerankerConfig, start: Start, world: &dyn Collective, say: &dyn Reporter) -> Result<Resolved> {
    c.validate()?;
    let device = parse_device(&c.device)?;
    // `auto` is decided here, once, for the device.
    let precision = c.step.precision.resolve(device);
    let c = RerankerConfig { step: StepConfig { precision: precision.chosen, ..c.step.clone() }, ..c.clone() };
    if c.batch_size < world.world_size() {
        return Err(GradCacheError::InvalidConfig { field: "batch_size", reason: "must be at least the number of processes" }.into());
    }
    if start == Start::New && holds_run(&c.output_dir) {
        return Err(AppError::RunExists { path: c.output_dir.clone() });
    }
    // Every process has looked at the folder before rank 0 writes to it.
    world.barrier();
    if !c.model_dir.is_dir() {
        let why = if c.model_dir == RerankerConfig::default().model_dir {
            "model folder missing: run scripts/gradcache.sh setup in the gradcache checkout, or pass --model-dir"
        } else {
            "model folder missing (a BERT folder: config.json, vocab.txt, model.safetensors)"
        };
        return Err(crate::error::not_found(&c.model_dir, why).into());
    }
    let model = ModelDir::open(&c.model_dir)?;
    // The default head is sized for MiniLM's 384.
    let encoder = c.encoder.resolved(&model)?;
    let width = encoder.projection.unwrap_or_else(|| model.hidden_size());
    let head = match c.head.dim() {
        Some(dim) if dim != width => {
            say.say(&format!("head.dim {dim} -> {width}: the width of {}'s vectors", model.architecture().family()));
            c.head.clone().with_dim(width)
        }
        _ => c.head.clone(),
    };
    let c = RerankerConfig { encoder, head, ..c };
    let selected = c.selected_metric()?;
    Ok(Resolved { c, device, precision, model, selected })
}
