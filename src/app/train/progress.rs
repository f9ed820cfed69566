//! Progress on stderr: a bar with loss, steps/s and ETA on a terminal, a
//! line every tenth of the run otherwise.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Progress of a training run.
#[derive(Debug)]
pub struct Progress {
    total: usize,
    first: usize,
    started: Instant,
    tty: bool,
    enabled: bool,
    smoothed_loss: Option<f64>,
}

fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

impl Progress {
    /// Progress from step `first` to `total`; `enabled = false` prints nothing.
    pub fn new(first: usize, total: usize, enabled: bool) -> Self {
        Progress { total, first, started: Instant::now(), tty: std::io::stderr().is_terminal(), enabled, smoothed_loss: None }
    }

    /// Reports that `done` steps are complete, the last with `loss`.
    pub fn update(&mut self, done: usize, loss: f64) {
        let s = self.smoothed_loss.map_or(loss, |s| 0.9 * s + 0.1 * loss);
        self.smoothed_loss = Some(s);
        if !self.enabled {
            return;
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = (done - self.first) as f64 / elapsed.max(1e-9);
        let eta = (self.total - done) as f64 / rate.max(1e-9);
        let width = 24;
        let filled = width * done / self.total.max(1);
        let line = format!(
            "step {done}/{} [{}{}] loss {s:.4} | {rate:.2} steps/s | ETA {}",
            self.total,
            "=".repeat(filled),
            " ".repeat(width - filled),
            duration(eta)
        );
        let tenth = (self.total / 10).max(1);
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r{line}");
            if done == self.total {
                let _ = writeln!(err);
            }
        } else if done.is_multiple_of(tenth) || done == self.total || done == self.first + 1 {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Prints a message on its own line, without breaking the bar.
    pub fn message(&self, text: &str) {
        if self.enabled {
            let prefix = if self.tty { "\r\x1b[2K" } else { "" };
            eprintln!("{prefix}{text}");
        }
    }
}
