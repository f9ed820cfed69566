//! The algorithm: the two-cache step and what it is made of. Nothing here
//! knows a model family, a file format or a training run.
//!
//! - inputs and outputs of the pieces: [`batch`] (what is cut into
//!   chunks), [`representation`] (vectors or token matrices),
//!   [`encoder`] and [`head`] (the two traits a model implements),
//!   [`targets`] and [`loss`] (what is positive, and the losses over `S`);
//! - how a step is cut: [`config`] ([`config::StepConfig`]), [`layout`]
//!   (chunk and block sizes), [`plan`] (the pieces of one step, retained or
//!   recomputed), [`budget`] (a plan fitted to a memory budget);
//! - the step: [`model`] (what it trains: two encoders and a head),
//!   [`step`] (the five passes), [`passes`] (the loops over
//!   chunks they share with the reference and the distributed step),
//!   [`scoring`] (the one block-scoring routine, also inference's),
//!   [`replay`] (identical dropout in both passes), [`output`] (what a step
//!   reports), [`flops`] (what each pass computed, for its FLOP rate);
//! - the step's peers: [`reference`](mod@reference) (full batch, gradient accumulation),
//!   [`distributed`] (one batch across processes).

pub mod balance;
pub mod batch;
pub mod budget;
pub mod config;
pub mod distributed;
pub mod encoder;
pub mod flops;
pub mod head;
pub mod layout;
pub mod loss;
pub mod model;
pub mod output;
pub mod passes;
pub mod plan;
pub mod reference;
pub mod replay;
pub mod representation;
pub mod scoring;
pub mod step;
pub mod targets;
