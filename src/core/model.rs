//! The model a step trains, borrowed: its two encoders (the same one when
//! tied) and its head.

use crate::core::encoder::Encoder;
use crate::core::head::ScoringHead;

/// The query encoder, the passage encoder and the head of a step.
pub struct StepModel<'m, QE: Encoder + ?Sized, PE: Encoder + ?Sized> {
    /// Encodes the queries.
    pub query_encoder: &'m QE,
    /// Encodes the passages (the query encoder when tied).
    pub passage_encoder: &'m PE,
    /// Scores query/passage pairs.
    pub head: &'m dyn ScoringHead,
}

impl<QE: Encoder + ?Sized, PE: Encoder + ?Sized> Clone for StepModel<'_, QE, PE> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<QE: Encoder + ?Sized, PE: Encoder + ?Sized> Copy for StepModel<'_, QE, PE> {}
