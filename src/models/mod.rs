//! Models: what the core's [`crate::core::encoder::Encoder`] and
//! [`crate::core::head::ScoringHead`] traits are implemented by, and how
//! they are read from and written to disk.
//!
//! - [`encoders`]: BERT-family encoders (fused layers or rust-bert's) and a
//!   tiny test encoder;
//! - [`heads`]: the built-in scoring heads and their configs;
//! - [`text`]: tokenizers; [`pretrained`]: Hugging Face model folders;
//!   [`weights`]: safetensors and atomic file writes.

pub mod encoders;
pub mod heads;
pub mod pretrained;
pub mod text;
pub mod weights;
