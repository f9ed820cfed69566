//! The step's configuration: how it cuts a batch ([`Layout`]), what it
//! keeps of the first passes ([`MemoryConfig`]), train mode, the replay
//! check and precision.

use serde::{Deserialize, Serialize};

use crate::core::layout::{chunk_tokens_field, ChunkRule, Layout, Side};
use crate::error::{GradCacheError, Result};
use crate::runtime::precision::Precision;

/// How the two-cache step runs.
///
/// JSON: the [`Layout`]'s four sizes (flat, as before the layout had a type
/// of its own) and the fields below, each optional; any other field is
/// refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, remote = "Self")]
pub struct StepConfig {
    /// Chunk and block sizes.
    #[serde(flatten)]
    pub layout: Layout,
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
    /// ([`MemoryConfig`]; default: recompute all).
    pub memory: MemoryConfig,
    /// Cut encoder chunks from the items sorted by length, longest first,
    /// so that each chunk pads only to lengths like its own (less padding,
    /// less work and memory for mixed lengths); representations and
    /// gradients come back in the batch's order. Needs an input that knows
    /// its items' lengths ([`crate::Chunk::lengths`], e.g.
    /// [`crate::TokenBatch`]). Default: off.
    pub sort_by_length: bool,
    /// Cut query chunks by a budget of padded tokens instead of by items:
    /// each chunk takes, from the queries sorted by length (longest first),
    /// as many as keep its items × its longest item within this many
    /// tokens (at least one), so short texts go in large chunks and long
    /// ones in small ([`ChunkRule::Tokens`](crate::core::layout::ChunkRule)). Sorts the side by length
    /// whatever `sort_by_length` says, and replaces `query_chunk_size`.
    /// Default: unset (chunks of `query_chunk_size` items).
    pub query_chunk_tokens: Option<usize>,
    /// The same for passage chunks (replaces `passage_chunk_size`).
    pub passage_chunk_tokens: Option<usize>,
    /// Size head blocks by their cost: each block keeps
    /// `head_block_queries` rows and takes as many passage columns as keep
    /// its scoring FLOPs (the head's own count,
    /// [`ScoringHead::score_flops`](crate::ScoringHead::score_flops), at this batch's representation
    /// shapes) within this many, at least one; so a dear head (token
    /// interaction) gets narrow blocks and a cheap one wide blocks, each
    /// about as much work. Replaces `head_block_passages`. Needs a head that
    /// counts its FLOPs; not with a memory budget yet.
    /// Default: unset.
    pub head_block_flops: Option<f64>,
    /// With a memory budget, choose the layout for each batch from the
    /// budget, the measured activation costs and the batch's lengths
    /// ([`Plan::sized_for_budget`](crate::core::plan::Plan::sized_for_budget)) instead of taking it as
    /// given. Needs `memory` to be a budget. Default: off (the sizes as
    /// written win).
    pub auto_sizes: bool,
    /// The encoders' and the head's forward passes under autocast
    /// ([`Precision`]): `f32` (default) or `bf16`; `auto` in a config
    /// that a run resolves for its device ([`Precision::resolve`]) before it
    /// builds the step; `f16` is refused (no loss scaling).
    pub precision: Precision,
}

impl Default for StepConfig {
    fn default() -> Self {
        StepConfig {
            layout: Layout::default(),
            train: true,
            check_replay: true,
            replay_tolerance: 1e-4,
            memory: MemoryConfig::default(),
            sort_by_length: false,
            query_chunk_tokens: None,
            passage_chunk_tokens: None,
            head_block_flops: None,
            auto_sizes: false,
            precision: Precision::F32,
        }
    }
}

// serde's `flatten` ignores unknown fields even under
// `deny_unknown_fields`: they are refused here, against the fields the
// default config serializes (every field always does), so the list of
// fields has no second copy.
impl<'de> Deserialize<'de> for StepConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let fields = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let known = match StepConfig::serialize(&StepConfig::default(), serde_json::value::Serializer) {
            Ok(serde_json::Value::Object(known)) => known,
            _ => return Err(D::Error::custom("StepConfig does not serialize to an object")),
        };
        if let Some(unknown) = fields.keys().find(|k| !known.contains_key(*k)) {
            let expected: Vec<&str> = known.keys().map(String::as_str).collect();
            return Err(D::Error::custom(format!("unknown field `{unknown}`, expected one of {}", expected.join(", "))));
        }
        StepConfig::deserialize(serde_json::Value::Object(fields)).map_err(D::Error::custom)
    }
}

impl Serialize for StepConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        StepConfig::serialize(self, serializer)
    }
}

impl StepConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        self.layout.validate()?;
        for side in [Side::Queries, Side::Passages] {
            if self.chunk_rule(side) == ChunkRule::Tokens(0) {
                return Err(GradCacheError::InvalidConfig { field: chunk_tokens_field(side), reason: "must be at least 1 token" });
            }
        }
        if let Some(f) = self.head_block_flops {
            if !(f.is_finite() && f >= 1.0) {
                return Err(GradCacheError::InvalidConfig {
                    field: "head_block_flops",
                    reason: "must be a finite number of FLOPs, at least 1",
                });
            }
            if self.memory.is_budget() {
                return Err(GradCacheError::InvalidConfig {
                    field: "head_block_flops",
                    reason: "cannot be combined with a memory budget yet (the budget fits the configured blocks)",
                });
            }
        }
        if !(self.replay_tolerance.is_finite() && self.replay_tolerance >= 0.0) {
            return Err(GradCacheError::InvalidConfig { field: "replay_tolerance", reason: "must be finite and non-negative" });
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

    /// How a side's encoder chunks are cut: by its token budget when set,
    /// else by its chunk size.
    pub fn chunk_rule(&self, side: Side) -> ChunkRule {
        let tokens = match side {
            Side::Queries => self.query_chunk_tokens,
            Side::Passages => self.passage_chunk_tokens,
        };
        match tokens {
            Some(t) => ChunkRule::Tokens(t),
            None => ChunkRule::Items(self.layout.chunk_size(side)),
        }
    }

    /// Whether a side's chunks are cut from its items sorted by length:
    /// asked for, or needed by a token budget.
    pub fn sorts(&self, side: Side) -> bool {
        self.sort_by_length || matches!(self.chunk_rule(side), ChunkRule::Tokens(_))
    }

    /// How the step's forward passes run: train mode and precision.
    pub fn forward(&self) -> crate::core::scoring::Forward {
        crate::core::scoring::Forward { train: self.train, precision: self.precision }
    }

    /// The replay check's tolerance, `None` when the check is off.
    pub fn replay(&self) -> Option<f64> {
        self.check_replay.then_some(self.replay_tolerance)
    }

    /// The same config with every chunk and block as large as `n`: with
    /// `n` ≥ the batch, the representation and score passes run in one piece.
    pub fn whole_batch(&self, n: usize) -> StepConfig {
        StepConfig { layout: Layout::whole(n), ..self.clone() }
    }
}

/// How much of the first passes' graphs a step keeps.
///
/// JSON: `{"recompute": "all"}` (the default: flat memory, every chunk and
/// block runs twice), `{"recompute": "none"}` (every graph kept: the cost of
/// the full-batch step), `{"retain": {"query_chunks": 2,
/// "passage_chunks": 4, "head_blocks": 8}}` (the first so many of each kept,
/// the rest recomputed), `{"budget_mb": 500}`: keep what fits when the
/// step's activation memory may grow by at most that many MB (see
/// [`Plan::fit`](crate::core::plan::Plan::fit)), or `{"budget": "auto"}`: the same with half the memory
/// the system reports available (`MemAvailable` in `/proc/meminfo`) when the
/// first step runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MemoryConfig {
    /// Recompute all or none.
    Recompute {
        /// `all` or `none`.
        recompute: Recompute,
    },
    /// Keep the first so many chunks and blocks.
    Retain {
        /// How many of each.
        retain: RetainCounts,
    },
    /// Keep what fits in a budget.
    Budget {
        /// Megabytes (2^20 bytes) the step's activations may take at most.
        budget_mb: f64,
    },
    /// Keep what fits in half the available memory.
    Auto {
        /// `auto`.
        budget: AutoBudget,
    },
}

/// The command-line form: `all` (recompute all), `none` (recompute none),
/// `auto`, a budget in MB (`2000`), or the JSON forms.
impl std::str::FromStr for MemoryConfig {
    type Err = GradCacheError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = GradCacheError::InvalidConfig {
            field: "memory",
            reason: "must be all, none, auto, a budget in MB, or StepConfig.memory's JSON",
        };
        let config = match s.trim() {
            "all" => MemoryConfig::Recompute { recompute: Recompute::All },
            "none" => MemoryConfig::Recompute { recompute: Recompute::None },
            "auto" => MemoryConfig::Auto { budget: AutoBudget::Auto },
            other => match other.parse::<f64>() {
                Ok(budget_mb) => MemoryConfig::Budget { budget_mb },
                Err(_) => serde_json::from_str(other).map_err(|_| bad)?,
            },
        };
        config.validate()?;
        Ok(config)
    }
}

/// The one value of `{"budget": "auto"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoBudget {
    /// Half of `MemAvailable`.
    Auto,
}

impl MemoryConfig {
    /// Checks a budget: finite and positive.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] naming `memory.budget_mb`.
    pub fn validate(&self) -> Result<()> {
        match self {
            MemoryConfig::Budget { budget_mb } if !(budget_mb.is_finite() && *budget_mb > 0.0) => {
                Err(GradCacheError::InvalidConfig { field: "memory.budget_mb", reason: "must be a positive number of MB" })
            }
            _ => Ok(()),
        }
    }

    /// Whether the plan is fitted to a budget (and needs a [`CostModel`](crate::core::budget::CostModel)).
    pub fn is_budget(&self) -> bool {
        matches!(self, MemoryConfig::Budget { .. } | MemoryConfig::Auto { .. })
    }
}

/// Which graphs to recompute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recompute {
    /// Every chunk and block (flat memory).
    All,
    /// None: every graph is kept from the first pass.
    None,
}

/// How many chunks and blocks keep their graphs (the first ones in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetainCounts {
    /// Query chunks.
    pub query_chunks: usize,
    /// Passage chunks.
    pub passage_chunks: usize,
    /// Head blocks (row by row).
    pub head_blocks: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig::Recompute { recompute: Recompute::All }
    }
}
