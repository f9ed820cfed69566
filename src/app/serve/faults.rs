//! Fault injection for the server's tests, so that they wait for events
//! instead of racing a clock: with `GRADCACHE_SERVE_FAULTS=1` in its
//! environment (never settable over HTTP), the server listens for
//!
//! - `SIGUSR1`: hold the model thread before its next command (a batch or
//!   a health check), or release it; prints `fault: model held` or
//!   `fault: model released` on stdout once in force;
//! - `SIGUSR2`: make the model thread panic at its next command; prints
//!   `fault: model will panic`.
//!
//! A held model is how a test fills the queue, keeps a request in flight
//! across a SIGTERM, or makes `/health` time out; a panic is how it kills
//! the backend inside a running server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// The environment variable that turns fault injection on.
pub const FAULTS_ENV: &str = "GRADCACHE_SERVE_FAULTS";

/// The faults the test has asked for.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    held: Mutex<bool>,
    released: Condvar,
    panic_next: AtomicBool,
}

impl Faults {
    /// `Some` when the environment asks for fault injection.
    pub(crate) fn from_env() -> Option<Arc<Faults>> {
        (std::env::var(FAULTS_ENV).as_deref() == Ok("1")).then(|| Arc::new(Faults::default()))
    }

    /// Called by the model thread before each command: waits while held,
    /// panics when asked to.
    pub(crate) fn before_command(&self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while *held {
            held = self.released.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        drop(held);
        if self.panic_next.swap(false, Ordering::SeqCst) {
            panic!("fault injection: the model thread panics as the test asked ({FAULTS_ENV})");
        }
    }

    fn toggle_hold(&self) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        *held = !*held;
        if !*held {
            self.released.notify_all();
        }
        *held
    }

    /// Serves the signals until the runtime ends.
    #[cfg(unix)]
    pub(crate) async fn listen(self: Arc<Self>) {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut hold), Ok(mut panic)) = (signal(SignalKind::user_defined1()), signal(SignalKind::user_defined2())) else {
            eprintln!("fault injection: cannot listen for SIGUSR1/SIGUSR2");
            return;
        };
        loop {
            let line = tokio::select! {
                _ = hold.recv() => if self.toggle_hold() { "fault: model held" } else { "fault: model released" },
                _ = panic.recv() => {
                    self.panic_next.store(true, Ordering::SeqCst);
                    "fault: model will panic"
                }
            };
            super::say(line);
        }
    }

    /// No signals to listen for.
    #[cfg(not(unix))]
    pub(crate) async fn listen(self: Arc<Self>) {}
}
