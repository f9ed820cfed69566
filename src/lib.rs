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
//! optimizer stays with the caller ([`train::Trainer`] is one):
//!
//! ```no_run
//! use gradcache::heads::{HeadConfig, MlpHeadConfig};
//! use gradcache::pretrained::ModelDir;
//! use gradcache::scorer::{ModelConfig, ScoringLayout};
//! use gradcache::{GradCache, InfoNce, Scorer, StepConfig, Targets};
//!
//! # fn main() -> gradcache::Result<()> {
//! let model = ModelDir::open(".models/all-MiniLM-L6-v2")?; // scripts/gradcache.sh setup
//! let head = HeadConfig::Mlp(MlpHeadConfig::default());     // residual MLP over pooled vectors
//! let config = ModelConfig::new(Default::default(), 48, true, head, ScoringLayout::default());
//! let scorer = Scorer::from_pretrained(config, &model, tch::Device::Cpu)?;
//!
//! let loss = InfoNce::default();
//! let gc = GradCache::new(StepConfig::default(), scorer.query_encoder(), scorer.passage_encoder(), scorer.head(), &loss)?;
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
//! ## Modules, one concept each
//! - [`step`]: the two-cache step ([`GradCache`]); [`reference`](mod@reference): the full-batch and
//!   gradient-accumulation baselines; [`replay`]: identical dropout masks in both passes;
//! - [`batch`]: inputs the step cuts into chunks ([`Chunk`], [`TokenBatch`]);
//! - [`representation`]: vectors `[n, d]` or token matrices `[n, L, d]` + mask;
//! - [`encoder`], [`encoders`]: the [`Encoder`] trait and built-in encoders (BERT, a tiny test encoder);
//! - [`head`], [`heads`]: the [`ScoringHead`] trait and the built-in heads;
//! - [`targets`], [`loss`]: what is positive, and the losses over `S`;
//! - [`scorer`]: a trained model ([`Scorer`]) and its bundle on disk; [`retrieval`]: two-stage
//!   retrieval (streaming top-k, then the head) and TREC run files;
//! - [`train`]: the [`train::Trainer`] (AdamW, schedule, checkpoints, bit-exact resume) and the
//!   training recipe behind `gradcache train` ([`train::reranker`]);
//! - [`data`]: training records (JSONL), BEIR folders, rerank requests, the WordNet task;
//!   [`eval`], [`metrics`]: ranking metrics;
//! - [`check`]: gradient comparison; [`config`]: [`StepConfig`] and config layering;
//! - [`text`], [`pretrained`], [`weights`]: tokenizers, BERT model folders, safetensors;
//!   [`runtime`]: devices, allocator tuning, peak memory; [`error`]: [`GradCacheError`].
#![deny(missing_docs)]

pub mod batch;
pub mod check;
pub mod config;
pub mod data;
pub mod distributed;
pub mod encoder;
pub mod encoders;
pub mod error;
pub mod eval;
pub mod gpu;
pub mod head;
pub mod heads;
pub mod loss;
pub mod metrics;
pub mod plan;
pub mod precision;
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
pub use step::{BudgetReport, GradCache, StepOutput};
pub use targets::Targets;
