//! What a long job says while it runs, apart from where it is shown: the
//! library reports, and the caller decides what reaches a screen. The
//! command line's console (`cli::console::Console`) prints settings on
//! stdout and progress on stderr; a test keeps the lines; [`Silent`]
//! drops them.

/// Receives a training run's words as they happen. Methods take `&self`:
/// a run reports from inside its evaluation and step callbacks, which may
/// hold other borrows of the caller's state at that time.
pub trait Reporter {
    /// A line about the run: its settings, what it resumed from, a choice
    /// made for the user (the console's stdout).
    fn say(&self, line: &str);

    /// A problem the run steps over: skipped input lines, a damaged
    /// checkpoint (the console's stderr).
    fn warn(&self, line: &str);

    /// A training step is done: how far the run is.
    fn step(&self, progress: &StepProgress);

    /// A line while training runs: the step plan, an evaluation's metrics
    /// (the console prints it without breaking its progress bar).
    fn note(&self, line: &str);

    /// `done` of `total` items of a long pass named `what` (encoding a
    /// corpus, reranking); a new `what` starts a new pass.
    fn work(&self, what: &str, done: usize, total: usize);
}

/// A [`Reporter`] that drops everything: a library caller that wants a
/// quiet run, and the processes of a distributed run other than rank 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Reporter for Silent {
    fn say(&self, _: &str) {}
    fn warn(&self, _: &str) {}
    fn step(&self, _: &StepProgress) {}
    fn note(&self, _: &str) {}
    fn work(&self, _: &str, _: usize, _: usize) {}
}

/// One report of a training run's progress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepProgress {
    /// The step this session started from (a resumed run's earlier steps
    /// are not counted in its rate).
    pub first: usize,
    /// Steps of the run done (a resumed run's earlier ones included).
    pub done: usize,
    /// Steps of the whole run.
    pub total: usize,
    /// The loss, smoothed over the last steps (an exponential average
    /// weighting each new step by 0.1).
    pub smoothed_loss: f64,
    /// Steps per second since this session's first step began.
    pub steps_per_second: f64,
    /// Seconds left at that rate.
    pub eta_seconds: f64,
}
