//! Keeping the best model of a run (`select_best`): which evaluation is
//! the best so far, decided in one place.

use std::collections::BTreeMap;
use std::path::Path;

use crate::app::error::Result;

/// The best evaluation so far by one metric (higher is better; the
/// first of equal values stays).
#[derive(Debug, Clone)]
pub(super) struct Best {
    metric: Option<String>,
    kept: Option<(usize, f64)>,
}

impl Best {
    /// Keeps by `metric`; `None` keeps nothing (every offer is refused).
    pub fn new(metric: Option<String>) -> Self {
        Best { metric, kept: None }
    }

    /// Offers the evaluation of `step`: whether it is the new best. An
    /// evaluation without the metric counts as NaN, which nothing beats
    /// only when it came first.
    pub fn offer(&mut self, step: usize, metrics: &BTreeMap<String, f64>) -> bool {
        let Some(key) = &self.metric else { return false };
        let value = metrics.get(key).copied().unwrap_or(f64::NAN);
        let better = self.kept.is_none_or(|(_, best)| value > best);
        if better {
            self.kept = Some((step, value));
        }
        better
    }

    /// Whether the run keeps a best model (`select_best` is set).
    pub fn keeps(&self) -> bool {
        self.metric.is_some()
    }

    /// The metric, the kept step and its value.
    pub fn kept(&self) -> Option<(String, usize, f64)> {
        self.metric.clone().zip(self.kept).map(|(k, (step, value))| (k, step, value))
    }

    /// A resumed run's best so far must still be in `bundle`.
    ///
    /// # Errors
    /// [`crate::GradCacheError::Io`] (not found) naming the step whose
    /// model is missing.
    pub fn require_bundle(&self, bundle: &Path) -> Result<()> {
        match self.kept {
            Some((step, _)) if !bundle.join(crate::app::scorer::BUNDLE_FILE).is_file() => Err(crate::error::not_found(
                bundle,
                &format!("the best model so far (step {step}) is missing: resume needs it, or start over with --overwrite"),
            )
            .into()),
            _ => Ok(()),
        }
    }
}
