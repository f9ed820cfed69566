//! # gradcache
//!
//! Exact large-batch contrastive training for models whose similarity is a
//! learned network: the two-cache form of Gradient Cache (Gao et al. 2021,
//! §5). Encoders produce representations chunk by chunk, a scoring head
//! scores query/passage pairs block by block, and a loss reads the whole
//! score matrix; [`GradCache::step`] fills the same gradients as one
//! full-batch backward pass while holding one encoder chunk or one head block
//! of activations at a time.
//!
//! ```text
//! representation pass → score pass → distance-gradient cache → head pass → encoder pass
//!   U, V (no graph)      S (no graph)     W = ∂L/∂S               dU, dV, ∂L/∂Ω   ∂L/∂θ
//! ```
//!
//! Modules, one concept each:
//! - [`batch`]: inputs the step cuts into chunks ([`Chunk`], [`TokenBatch`]);
//! - [`representation`]: vectors `[n, d]` or token matrices `[n, L, d]` + mask;
//! - [`encoder`], [`encoders`]: the [`Encoder`] trait and built-in encoders;
//! - [`head`], [`heads`]: the [`ScoringHead`] trait and built-in heads;
//! - [`targets`], [`loss`]: what is positive, and the losses over `S`;
//! - [`replay`]: identical dropout masks in both passes;
//! - [`step`]: the two-cache step; [`reference`](mod@reference): the full-batch and
//!   gradient-accumulation baselines;
//! - [`check`]: gradient comparison; [`config`]: [`StepConfig`];
//! - [`text`], [`pretrained`], [`weights`]: tokenizers, BERT model folders, safetensors.
#![deny(missing_docs)]

pub mod batch;
pub mod check;
pub mod config;
pub mod data;
pub mod encoder;
pub mod encoders;
pub mod error;
pub mod eval;
pub mod head;
pub mod heads;
pub mod loss;
pub mod metrics;
pub mod pretrained;
pub mod reference;
pub mod replay;
pub mod representation;
pub mod retrieval;
pub mod runtime;
pub mod scorer;
pub mod step;
pub mod targets;
pub mod text;
pub mod train;
mod util;
pub mod weights;

pub use batch::{Chunk, TokenBatch};
pub use config::StepConfig;
pub use encoder::Encoder;
pub use error::{GradCacheError, Result};
pub use head::{RepresentationGradients, ScoringHead};
pub use loss::{ContrastiveLoss, InfoNce, ListwiseKl};
pub use representation::Representation;
pub use scorer::{ModelConfig, Scorer};
pub use step::{GradCache, StepOutput};
pub use targets::Targets;
