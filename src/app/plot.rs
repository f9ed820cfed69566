//! `gradcache plot`: a run's loss and a dev metric against the step, as a
//! PNG, from its `metrics.jsonl` (what TensorBoard also shows, without one).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::app::error::{AppError, Result};

/// What a run logged: the loss per step, and per evaluation each metric.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunCurves {
    /// `(step, loss)`.
    pub loss: Vec<(f64, f64)>,
    /// `(step, metrics)` of every evaluation, in order.
    pub evals: Vec<(f64, std::collections::BTreeMap<String, f64>)>,
}

impl RunCurves {
    /// Reads `RUN/metrics.jsonl` (torn or unparseable lines skipped, as a
    /// resume does).
    ///
    /// # Errors
    /// [`crate::GradCacheError::Io`] naming the file;
    /// [`AppError::NoRecords`] when it holds no step.
    pub fn read(run: &Path) -> Result<RunCurves> {
        let path = run.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path).map_err(crate::error::io_error(&path))?;
        let mut curves = RunCurves::default();
        for e in text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
            let Some(step) = e["step"].as_f64() else { continue };
            if let Some(loss) = e["loss"].as_f64() {
                curves.loss.push((step, loss));
            }
            if let Ok(m) = serde_json::from_value(e["eval"].clone()) {
                curves.evals.push((step, m));
            }
        }
        if curves.loss.is_empty() {
            return Err(AppError::NoRecords { path, what: "training step" });
        }
        Ok(curves)
    }

    /// The metric to draw: `asked`, or else the run's `select_best` metric
    /// (`config.json`), or else the first of `reranked.mrr10`, `mrr10`
    /// that it logs; `None` for a run without evaluations.
    ///
    /// # Errors
    /// [`AppError::UnknownMetric`] for an `asked` metric the run does not log.
    pub fn metric(&self, run: &Path, asked: Option<&str>) -> Result<Option<String>> {
        let known: Vec<String> =
            self.evals.iter().flat_map(|(_, m)| m.keys().cloned()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        if let Some(name) = asked {
            return match known.iter().any(|k| k == name) {
                true => Ok(Some(name.to_string())),
                false => Err(AppError::UnknownMetric { name: name.to_string(), known }),
            };
        }
        let selected = std::fs::read_to_string(run.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|c| c["select_best"].as_str().map(str::to_string));
        let candidates = selected.into_iter().chain(["reranked.mrr10".to_string(), "mrr10".to_string()]);
        Ok(candidates.into_iter().find(|c| known.contains(c)).or_else(|| known.first().cloned()))
    }
}

fn plot_error(path: &Path) -> impl Fn(String) -> AppError + '_ {
    move |reason| AppError::Plot { path: path.to_path_buf(), reason }
}

/// Draws the loss (top) and `metric` at each evaluation (bottom, when the
/// run has one) against the step into `output`, a PNG of 1000 × 700.
///
/// # Errors
/// [`AppError::Plot`] naming the file; [`crate::GradCacheError::Io`].
pub fn draw(curves: &RunCurves, metric: Option<&str>, title: &str, output: &Path) -> Result<PathBuf> {
    // The font travels in the binary: no system fonts needed.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let err = plot_error(output);
    // Written beside, then renamed; the encoder goes by the extension.
    let name = output.file_name().map_or("plot".into(), |n| n.to_string_lossy().into_owned());
    let tmp = output.with_file_name(format!(".{name}.tmp.png"));
    {
        let root = BitMapBackend::new(&tmp, (1000, 700)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let root = root.titled(title, ("sans-serif", 22)).map_err(|e| err(e.to_string()))?;
        let points: Vec<(f64, f64)> = match metric {
            Some(m) => curves.evals.iter().filter_map(|(s, v)| v.get(m).map(|x| (*s, *x))).collect(),
            None => Vec::new(),
        };
        let (top, bottom) = match points.is_empty() {
            true => (root.clone(), None),
            false => {
                let (a, b) = root.split_vertically(350);
                (a, Some(b))
            }
        };
        let last = curves.loss.iter().map(|p| p.0).fold(1.0, f64::max);
        let range = |ys: &mut dyn Iterator<Item = f64>| {
            let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| (lo.min(y), hi.max(y)));
            let pad = ((hi - lo) * 0.05).max(1e-6);
            (lo - pad)..(hi + pad)
        };
        let mut chart = ChartBuilder::on(&top)
            .margin(12)
            .caption("training loss", ("sans-serif", 18))
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..last, range(&mut curves.loss.iter().map(|p| p.1)))
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        chart.draw_series(LineSeries::new(curves.loss.iter().copied(), &BLUE)).map_err(|e| err(e.to_string()))?;
        if let (Some(area), Some(m)) = (bottom, metric) {
            let mut chart = ChartBuilder::on(&area)
                .margin(12)
                .caption(format!("dev {m} at each evaluation"), ("sans-serif", 18))
                .x_label_area_size(36)
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..last, range(&mut points.iter().map(|p| p.1)))
                .map_err(|e| err(e.to_string()))?;
            chart
                .configure_mesh()
                .x_desc("step")
                .y_desc(m)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .draw()
                .map_err(|e| err(e.to_string()))?;
            chart.draw_series(LineSeries::new(points.iter().copied(), &RED)).map_err(|e| err(e.to_string()))?;
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, RED.filled()))).map_err(|e| err(e.to_string()))?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, output).map_err(crate::error::io_error(output))?;
    Ok(output.to_path_buf())
}
