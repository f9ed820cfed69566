//! The step's configuration.

use serde::{Deserialize, Serialize};

use crate::error::{GradCacheError, Result};

/// How the two-cache step cuts a batch.
///
/// Chunk sizes bound the encoder activations held at once, block sizes bound
/// the head activations held at once; they are set independently. Any batch
/// size works: the last chunk or block is simply shorter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepConfig {
    /// Queries encoded together in one encoder chunk.
    pub query_chunk_size: usize,
    /// Passages encoded together in one encoder chunk.
    pub passage_chunk_size: usize,
    /// Query rows in one head block of the pair grid.
    pub head_block_queries: usize,
    /// Passage columns in one head block of the pair grid.
    pub head_block_passages: usize,
    /// Train mode (dropout on) for encoders and head.
    pub train: bool,
    /// Compare every recomputation in the head and encoder passes with the
    /// first pass and fail with [`GradCacheError::ReplayMismatch`] when they
    /// differ by more than `replay_tolerance` (relative to the cached values'
    /// largest magnitude, at least 1). Costs one subtraction per chunk/block.
    pub check_replay: bool,
    /// Relative tolerance of the replay check.
    pub replay_tolerance: f64,
    /// Which first-pass graphs the step keeps instead of recomputing
    /// ([`crate::plan::MemoryConfig`]; default: recompute all).
    pub memory: crate::plan::MemoryConfig,
    /// Cut encoder chunks from the items sorted by length, longest first,
    /// so that each chunk pads only to lengths like its own (less padding,
    /// less work and memory for mixed lengths); representations and
    /// gradients come back in the batch's order. Needs an input that knows
    /// its items' lengths ([`crate::Chunk::lengths`], e.g.
    /// [`crate::TokenBatch`]). Default: off.
    pub sort_by_length: bool,
    /// With a memory budget, choose the four sizes above for each batch
    /// from the budget, the measured activation costs and the batch's
    /// lengths ([`crate::plan::Plan::sized_for_budget`]) instead of taking
    /// them as given. Needs `memory` to be a budget. Default: off (the sizes
    /// as written win).
    pub auto_sizes: bool,
    /// The encoders' and the head's forward passes under autocast
    /// ([`crate::precision::Precision`]): `f32` (default) or `bf16`; `f16`
    /// is refused (no loss scaling).
    pub precision: crate::precision::Precision,
}

impl Default for StepConfig {
    fn default() -> Self {
        StepConfig {
            query_chunk_size: 32,
            passage_chunk_size: 32,
            head_block_queries: 32,
            head_block_passages: 128,
            train: true,
            check_replay: true,
            replay_tolerance: 1e-4,
            memory: crate::plan::MemoryConfig::default(),
            sort_by_length: false,
            auto_sizes: false,
            precision: crate::precision::Precision::F32,
        }
    }
}

impl StepConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("query_chunk_size", self.query_chunk_size),
            ("passage_chunk_size", self.passage_chunk_size),
            ("head_block_queries", self.head_block_queries),
            ("head_block_passages", self.head_block_passages),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(GradCacheError::InvalidConfig { field, reason: "must be at least 1" });
            }
        }
        if !(self.replay_tolerance.is_finite() && self.replay_tolerance >= 0.0) {
            return Err(GradCacheError::InvalidConfig {
                field: "replay_tolerance",
                reason: "must be finite and non-negative",
            });
        }
        if self.auto_sizes && !self.memory.is_budget() {
            return Err(GradCacheError::InvalidConfig {
                field: "auto_sizes",
                reason: "needs a memory budget (memory: a number of MB or auto) to choose sizes from",
            });
        }
        self.precision.validate()?;
        self.memory.validate()
    }

    /// How the step's forward passes run: train mode and precision.
    pub(crate) fn forward(&self) -> Forward {
        Forward { train: self.train, precision: self.precision }
    }

    /// The same config with every chunk and block as large as `n`: with
    /// `n` ≥ the batch, the representation and score passes run in one piece.
    pub fn whole_batch(&self, n: usize) -> StepConfig {
        StepConfig {
            query_chunk_size: n,
            passage_chunk_size: n,
            head_block_queries: n,
            head_block_passages: n,
            ..self.clone()
        }
    }
}

/// How a forward pass runs (from [`StepConfig::forward`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Forward {
    /// Train mode (dropout on).
    pub train: bool,
    /// Autocast precision.
    pub precision: crate::precision::Precision,
}

impl Forward {
    /// Eval mode in f32 (inference).
    pub(crate) fn eval() -> Forward {
        Forward { train: false, precision: crate::precision::Precision::F32 }
    }
}

/// Checks a dropout probability: it must lie in `[0, 1)`.
///
/// # Errors
/// [`GradCacheError::InvalidConfig`] naming the field `dropout`.
pub(crate) fn check_dropout(p: f64) -> Result<()> {
    if (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(GradCacheError::InvalidConfig { field: "dropout", reason: "must be in [0, 1)" })
    }
}

/// `(start, len)` of each piece when `total` items are cut into pieces of
/// `size` (the last one shorter).
pub(crate) fn pieces(total: usize, size: usize) -> impl Iterator<Item = (usize, usize)> {
    let size = size.max(1);
    (0..total).step_by(size).map(move |start| (start, size.min(total - start)))
}

/// `user` laid over `defaults`, field by field: a nested object merges into
/// the default object of the same name, so a partial block (`{"train":
/// {"checkpoint_every": 2}}`) changes the fields it names and keeps the
/// documented defaults of the others; any other value (numbers, strings,
/// arrays, `null`) replaces the default. An object whose `"kind"` tag names
/// another variant than the default's (e.g. `{"head": {"kind": "cosine"}}`
/// over an MLP head) replaces it whole, since the default's fields belong to
/// the other variant.
///
/// Deserialize the result into the config type to get its own checks
/// (unknown fields, types).
pub fn layered(defaults: serde_json::Value, user: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (defaults, user) {
        (Value::Object(mut base), Value::Object(over)) => {
            let other_kind = matches!((base.get("kind"), over.get("kind")), (Some(a), Some(b)) if a != b);
            if other_kind {
                return Value::Object(over);
            }
            for (key, value) in over {
                let merged = match base.remove(&key) {
                    Some(default) => layered(default, value),
                    None => value,
                };
                base.insert(key, merged);
            }
            Value::Object(base)
        }
        (_, user) => user,
    }
}

/// A JSON value's leaves by dotted path (`{"train": {"steps": 3}}` →
/// `train.steps: 3`); arrays and `null` are leaves. What a run records
/// about itself and compares on resume.
pub fn flatten(value: &serde_json::Value) -> std::collections::BTreeMap<String, serde_json::Value> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut std::collections::BTreeMap<String, serde_json::Value>) {
        match v {
            serde_json::Value::Object(map) if !map.is_empty() => {
                for (k, child) in map {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, child, out);
                }
            }
            leaf => {
                out.insert(prefix.to_string(), leaf.clone());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk("", value, &mut out);
    out
}

/// The fields whose values differ between two flattened configs (or that
/// one side lacks), as `name: a -> b`, skipping `ignore`d names and any
/// name under an ignored prefix.
pub fn differing_fields(
    a: &std::collections::BTreeMap<String, serde_json::Value>,
    b: &std::collections::BTreeMap<String, serde_json::Value>,
    ignore: &[&str],
) -> Vec<String> {
    let ignored = |k: &str| ignore.iter().any(|i| k == *i || k.starts_with(&format!("{i}.")));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).filter(|k| !ignored(k)).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&serde_json::Value>| v.map_or("(absent)".to_string(), |v| v.to_string());
    keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).map(|k| format!("{k}: {} -> {}", show(a.get(k)), show(b.get(k)))).collect()
}
