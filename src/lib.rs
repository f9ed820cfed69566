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
//! ## Start here
//!
//! Train a model, then use it. A [`Scorer`] owns the encoders, the head and
//! the tokenizer; [`GradCache`] borrows them for the two-cache step; the
//! optimizer stays with the caller ([`app::train::Trainer`] is one):
//!
//! ```no_run
//! use gradcache::models::heads::{HeadConfig, MlpHeadConfig};
//! use gradcache::models::pretrained::ModelDir;
//! use gradcache::app::scorer::ModelConfig;
//! use gradcache::{GradCache, InfoNce, Layout, Scorer, StepConfig, Targets};
//!
//! # fn main() -> Result<(), gradcache::AppError> {
//! let model = ModelDir::open(".models/all-MiniLM-L6-v2")?; // scripts/gradcache.sh setup
//! let head = HeadConfig::Mlp(MlpHeadConfig::default());     // residual MLP over pooled vectors
//! let config = ModelConfig::new(Default::default(), 48, true, head, Layout::default());
//! let scorer = Scorer::from_pretrained(config, &model, tch::Device::Cpu)?;
//!
//! let loss = InfoNce::default();
//! let mut gc = GradCache::new(StepConfig::default(), scorer.query_encoder(), scorer.passage_encoder(), scorer.head(), &loss)?;
//! let tok = scorer.tokenizer();
//! let queries = tok.encode(&["where does a river end", "borrowing money"])?;
//! let passages = tok.encode(&["the sea", "a desert", "a loan from a bank", "the bank of a river"])?;
//! let targets = Targets::grouped(2, 4, 2)?; // each query's group: its positive, then a negative
//! let out = gc.step(&queries, &passages, &targets)?; // gradients as one full-batch backward pass
//! println!("loss {}", out.loss);
//! // ... an optimizer update over scorer.var_store() ...
//!
//! let ranked = scorer.rerank("where does a river end", &["a desert", "the sea"])?;
//! scorer.save("my-model".as_ref())?; // a bundle: `gradcache eval / rerank --model my-model`
//! # Ok(()) }
//! ```
//!
//! The command line does the same without code: `gradcache train`,
//! `gradcache eval`, `gradcache rerank`, `gradcache encode` (README).
//!
//! ## Layers
//!
//! The modules stand in layers; a module imports only from its own layer
//! and those below it, and no two modules import each other
//! (`tests/layers.rs` checks both on every build of the suite;
//! docs/architecture.md has the map):
//!
//! 1. foundation: [`error`] ([`GradCacheError`]), and the crate's private
//!    tensor helpers;
//! 2. [`runtime`]: devices, allocator tuning and memory, the GPU shim,
//!    autocast [`runtime::precision`];
//! 3. [`core`]: the algorithm — batches, representations, the
//!    [`Encoder`] and [`ScoringHead`] traits, targets, losses, the
//!    [`StepConfig`], the plan of a step, budgets, the step itself
//!    ([`GradCache`]), the full-batch reference and the distributed step;
//! 4. [`models`]: encoders, heads, tokenizers, model folders and weights;
//!    [`check`]: the exactness checker (beside `models`: neither imports
//!    the other);
//! 5. [`app`]: a model in use ([`Scorer`], retrieval, evaluation — none of
//!    which imports training) and in training (the trainer and the
//!    recipe), data formats;
//! 6. [`cli`]: the command line's arguments and console output (the
//!    `gradcache` binary and the main job's example are thin over it).
#![deny(missing_docs)]

// 1. foundation
pub mod error;
mod util;
// 2. runtime
pub mod runtime;
// 3. the algorithm
pub mod core;
// 4. models, and the exactness checker
pub mod check;
pub mod models;
// 5. the application
pub mod app;
// 6. the command line
pub mod cli;

pub use crate::app::error::AppError;
pub use crate::app::scorer::{ModelConfig, Scorer};
pub use crate::core::batch::{Chunk, TokenBatch};
pub use crate::core::config::StepConfig;
pub use crate::core::encoder::Encoder;
pub use crate::core::head::{RepresentationGradients, ScoringHead};
pub use crate::core::layout::Layout;
pub use crate::core::loss::{ContrastiveLoss, InfoNce, ListwiseKl};
pub use crate::core::output::{BudgetReport, StepOutput};
pub use crate::core::representation::Representation;
pub use crate::core::step::GradCache;
pub use crate::core::targets::Targets;
pub use crate::error::{GradCacheError, Result};
