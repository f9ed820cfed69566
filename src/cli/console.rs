//! The terminal's side of a run: a [`Reporter`] that prints settings on
//! stdout and progress on stderr, a bar rewritten in place on a terminal
//! and a line every tenth of the work otherwise (logs stay short).

use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use crate::app::reporter::{Reporter, StepProgress};

/// `1m05s`, or `1h02m` from an hour on.
fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// The progress bar's line for one training step.
pub fn step_line(p: &StepProgress) -> String {
    let width = 24;
    let filled = width * p.done / p.total.max(1);
    format!(
        "step {}/{} [{}{}] loss {:.4} | {:.2} steps/s | ETA {}",
        p.done,
        p.total,
        "=".repeat(filled),
        " ".repeat(width - filled),
        p.smoothed_loss,
        p.steps_per_second,
        duration(p.eta_seconds)
    )
}

/// Progress of passes over many items on stderr, with rate and ETA:
/// rewritten in place on a terminal, a line per tenth otherwise; nothing
/// when `quiet`. The `progress` argument of
/// [`crate::app::retrieval::evaluate_two_stage`] and the other long passes.
pub fn stderr_progress(quiet: bool) -> impl FnMut(&str, usize, usize) {
    // A pass's clock starts when the previous pass last reported (the
    // first report comes after the first block's work).
    let mut started = Instant::now();
    let mut previous_report = started;
    let tty = std::io::stderr().is_terminal();
    let mut last = (String::new(), 0usize);
    move |what: &str, done: usize, total: usize| {
        if quiet {
            return;
        }
        if last.0 != what {
            last = (what.to_string(), 0);
            started = previous_report;
        }
        previous_report = Instant::now();
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let eta = (total - done.min(total)) as f64 / rate.max(1e-9);
        let line = format!("{what}: {done}/{total} ({rate:.0}/s, ETA {eta:.0} s)");
        let tenth = (total / 10).max(1);
        if tty {
            eprint!("\r{line}\x1b[K");
            if done >= total {
                eprintln!();
            }
        } else if done >= total || done / tenth > last.1 / tenth {
            eprintln!("{line}");
        }
        last.1 = done;
    }
}

/// A pass's progress printer ([`stderr_progress`]).
type WorkPrinter = Box<dyn FnMut(&str, usize, usize)>;

/// The command line's [`Reporter`].
pub struct Console {
    tty: bool,
    work: RefCell<WorkPrinter>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("tty", &self.tty).finish_non_exhaustive()
    }
}

impl Default for Console {
    fn default() -> Self {
        Console::new()
    }
}

impl Console {
    /// A console on this process's stdout and stderr.
    pub fn new() -> Self {
        Console { tty: std::io::stderr().is_terminal(), work: RefCell::new(Box::new(stderr_progress(false))) }
    }
}

impl Reporter for Console {
    fn say(&self, line: &str) {
        println!("{line}");
    }

    fn warn(&self, line: &str) {
        eprintln!("{line}");
    }

    fn step(&self, p: &StepProgress) {
        let line = step_line(p);
        let mut err = std::io::stderr();
        let tenth = (p.total / 10).max(1);
        if self.tty {
            let _ = write!(err, "\r{line}");
            if p.done == p.total {
                let _ = writeln!(err);
            }
        } else if p.done.is_multiple_of(tenth) || p.done == p.total || p.done == p.first + 1 {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    fn note(&self, line: &str) {
        // On a terminal, clear the bar's line first.
        let prefix = if self.tty { "\r\x1b[2K" } else { "" };
        eprintln!("{prefix}{line}");
    }

    fn work(&self, what: &str, done: usize, total: usize) {
        // A pass reports from inside the run's evaluation, never from
        // inside another pass's report: the borrow is free.
        if let Ok(mut work) = self.work.try_borrow_mut() {
            work(what, done, total);
        }
    }
}
