//! The application: a trained model in use and in training.
//!
//! - inference: [`scorer`] (a model bundle: encode, score, rerank),
//!   [`retrieval`] (two-stage retrieval, TREC runs), [`eval`] and
//!   [`metrics`] (ranking metrics), [`export`] (a bundle as a
//!   sentence-transformers folder), [`mine`] (hard negatives); none of
//!   these imports training;
//! - training: [`train`] (the trainer: AdamW, schedule, checkpoints,
//!   resume) and [`recipe`] (the run behind `gradcache train`);
//! - [`data`]: training records, BEIR folders, rerank requests, the
//!   WordNet task; [`settings`]: JSON config files laid over defaults.

pub mod data;
pub mod error;
pub mod eval;
pub mod export;
pub mod metrics;
pub mod mine;
pub mod plot;
pub mod recipe;
pub mod reporter;
pub mod retrieval;
pub mod scorer;
pub mod serve;
pub mod settings;
pub mod train;
