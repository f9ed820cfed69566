//! What the recipe trains on: the records, and each step's batch of them.

use tch::Device;

use super::config::RerankerConfig;
use crate::app::data::wordnet::WordSenseData;
use crate::app::data::{grouped_batch, GroupedBatch, Malformed, TrainingRecord};
use crate::app::error::{AppError, Result};
use crate::app::reporter::Reporter;
use crate::app::train::sample_indices;
use crate::core::batch::TokenBatch;
use crate::core::targets::Targets;
use crate::models::text::TextTokenizer;

/// The records a run on `c` trains on: `c.train_jsonl` (JSONL or Parquet),
/// else `task`'s training split; skipped malformed lines are reported to `say`.
///
/// # Errors
/// [`AppError::NoRecords`] when there are none; reading errors of
/// [`crate::app::data::parquet::read_training_file`].
pub fn training_records(c: &RerankerConfig, task: &WordSenseData, say: &dyn Reporter) -> Result<Vec<TrainingRecord>> {
    let records = match &c.train_jsonl {
        Some(path) => {
            let malformed = if c.skip_malformed { Malformed::Skip } else { Malformed::Fail };
            let read = crate::app::data::parquet::read_training_file(path, malformed)?;
            if read.skipped > 0 {
                say.warn(&format!("skipped {} malformed lines of {}", read.skipped, path.display()));
            }
            read.items
        }
        None => task.training_records(),
    };
    if records.is_empty() {
        let path = c.train_jsonl.clone().unwrap_or_else(|| c.data_dir.clone());
        return Err(AppError::NoRecords { path, what: "training records" });
    }
    Ok(records)
}

/// The texts of batch `step` of a run on `c`: `batch_size` records drawn
/// by the seed, each with its positive and `group_size - 1` hard negatives
/// ([`grouped_batch`]). The one source of a run's batch order, also for
/// peers trained on the same examples (`benchmarks/common/write_batches.rs`).
///
/// # Errors
/// As [`grouped_batch`].
pub fn batch_texts<'a>(records: &'a [TrainingRecord], c: &RerankerConfig, step: usize) -> Result<GroupedBatch<'a>> {
    let picks = sample_indices(records.len(), c.batch_size, step, c.train.seed);
    grouped_batch(records, &picks, c.group_size, step)
}

/// Batch `step` ([`batch_texts`]), tokenized.
pub(super) fn batch(
    records: &[TrainingRecord],
    c: &RerankerConfig,
    tok: &TextTokenizer,
    step: usize,
    device: Device,
) -> Result<(TokenBatch, TokenBatch, Targets)> {
    let b = batch_texts(records, c, step)?;
    let targets = Targets::from_positives(b.passages.len(), b.positives)?;
    Ok((tok.encode(&b.queries)?.to_device(device)?, tok.encode(&b.passages)?.to_device(device)?, targets))
}
