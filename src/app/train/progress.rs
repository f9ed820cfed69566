//! How far a training run is: steps done, a smoothed loss, steps per
//! second and the time left. Computed here and handed to a
//! [`crate::app::reporter::Reporter`], which decides how to show it.

use std::time::Instant;

use crate::app::reporter::StepProgress;

/// Progress of a training run, from the moment it is made.
#[derive(Debug)]
pub struct Progress {
    total: usize,
    first: usize,
    started: Instant,
    smoothed_loss: Option<f64>,
}

impl Progress {
    /// Progress from step `first` to `total`, the clock starting now.
    pub fn new(first: usize, total: usize) -> Self {
        Progress { total, first, started: Instant::now(), smoothed_loss: None }
    }

    /// `done` steps are complete, the last with `loss`.
    pub fn update(&mut self, done: usize, loss: f64) -> StepProgress {
        let smoothed_loss = self.smoothed_loss.map_or(loss, |s| 0.9 * s + 0.1 * loss);
        self.smoothed_loss = Some(smoothed_loss);
        let steps_per_second = (done - self.first) as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let eta_seconds = (self.total - done) as f64 / steps_per_second.max(1e-9);
        StepProgress { first: self.first, done, total: self.total, smoothed_loss, steps_per_second, eta_seconds }
    }
}
