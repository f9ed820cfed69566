//! What a step reports: its loss, the time of each pass, how it cut the
//! batch and what it kept, and one line or one JSON object of that.

use std::time::Duration;

use crate::core::config::RetainCounts;

/// Wall time of each phase of a step.
///
/// For [`GradCache::full_batch_step`](crate::GradCache::full_batch_step) and [`GradCache::accumulation_step`](crate::GradCache::accumulation_step),
/// `representation` and `score` are the forward passes with graph, `head` is
/// zero, and `encoder` is the single backward pass.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseTimings {
    /// Encoders over every chunk (without graph in the cached step).
    pub representation: Duration,
    /// Head over every block (without graph in the cached step).
    pub score: Duration,
    /// Loss and `W = ∂L/∂S`.
    pub distance_gradient: Duration,
    /// Head pass: every block again, with graph, backpropagating `W`.
    pub head: Duration,
    /// Encoder pass: every chunk again, with graph, backpropagating ∂L/∂U, ∂L/∂V.
    pub encoder: Duration,
}

/// Runs `pass`, recording its wall time in `slot` (whether it succeeds or
/// not).
///
/// # Errors
/// `pass`'s.
pub(crate) fn timed<T>(slot: &mut Duration, pass: impl FnOnce() -> crate::error::Result<T>) -> crate::error::Result<T> {
    let started = std::time::Instant::now();
    let out = pass();
    *slot = started.elapsed();
    out
}

impl PhaseTimings {
    /// The sum of all phases.
    pub fn total(&self) -> Duration {
        self.representation + self.score + self.distance_gradient + self.head + self.encoder
    }
}

/// How the step cut the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepSizes {
    /// Queries `N`.
    pub num_queries: usize,
    /// Passages `M`.
    pub num_passages: usize,
    /// Encoder chunks on the query side.
    pub query_chunks: usize,
    /// Encoder chunks on the passage side.
    pub passage_chunks: usize,
    /// Blocks of the `N × M` pair grid.
    pub head_blocks: usize,
    /// Items in the largest query chunk and passage chunk (the sizes the
    /// step used: the config's, or those chosen from a budget).
    pub chunk_items: (usize, usize),
    /// Query rows and passage columns of the largest head block.
    pub block_pairs: (usize, usize),
    /// Whether the head gave closed-form gradients, so no head pass ran.
    pub closed_form_head: bool,
}

/// What a step returns. Gradients are in the parameters' `.grad()`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutput {
    /// The batch loss.
    pub loss: f64,
    /// Time per phase.
    pub timings: PhaseTimings,
    /// How the batch was cut.
    pub sizes: StepSizes,
    /// How many chunks and blocks kept their first-pass graph (zero under
    /// the default `{"recompute": "all"}`).
    pub retained: RetainCounts,
    /// Under a memory budget: the budget and the plan's estimate.
    pub budget: Option<BudgetReport>,
    /// What each pass computed (counted by the two-cache step; the
    /// reference steps leave it unset).
    pub flops: PassFlops,
}

impl StepOutput {
    /// One line on how the step cut the batch and what it kept, e.g.
    /// `step plan: 64 queries in 4 chunks of up to 16, 128 passages in 8
    /// chunks of up to 16, 8 head blocks of up to 32×32; retained query
    /// chunks / passage chunks / head blocks: 4 / 3 / 0 (budget 500 MB,
    /// estimated peak 487 MB)`.
    pub fn describe_plan(&self) -> String {
        let (s, r) = (&self.sizes, &self.retained);
        let head = if s.closed_form_head { " (closed-form head: no head pass)" } else { "" };
        let budget = self
            .budget
            .map(|b| {
                let measured = b.measured_peak_mb.map(|m| format!(", measured {m:.0} MB")).unwrap_or_default();
                format!(" (budget {:.0} MB, estimated peak {:.0} MB{measured})", b.budget_mb, b.estimated_peak_mb)
            })
            .unwrap_or_default();
        let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        format!(
            "step plan: {} queries in {} of up to {}, {} passages in {} of up to {}, {} of up to {}×{}{head}; retained query chunks / passage chunks / head blocks: {} / {} / {}{budget}",
            s.num_queries,
            count(s.query_chunks, "chunk"),
            s.chunk_items.0,
            s.num_passages,
            count(s.passage_chunks, "chunk"),
            s.chunk_items.1,
            count(s.head_blocks, "head block"),
            s.block_pairs.0,
            s.block_pairs.1,
            r.query_chunks,
            r.passage_chunks,
            r.head_blocks
        )
    }

    /// The rate each pass achieved, in GFLOP/s, and as a fraction of
    /// `matmul` (this machine's measured matrix-multiply rate in the step's
    /// precision, [`crate::runtime::matmul_gflops`]) when given, e.g. `GFLOP/s:
    /// representation 84 (0.69×), score 2 (0.02×), head 5 (0.04×), encoder
    /// 80 (0.66×) of a 121 GFLOP/s matmul`; passes whose FLOPs are not
    /// counted are left out.
    pub fn describe_rates(&self, matmul: Option<crate::runtime::MatmulRate>) -> String {
        describe_rates(&self.flops.gflops_per_second(&self.timings), matmul)
    }

    /// The same as JSON (the trainer's first log line carries it).
    pub fn plan_json(&self) -> serde_json::Value {
        let s = &self.sizes;
        serde_json::json!({
            "queries": s.num_queries, "passages": s.num_passages,
            "query_chunks": s.query_chunks, "passage_chunks": s.passage_chunks, "head_blocks": s.head_blocks,
            "query_chunk_items": s.chunk_items.0, "passage_chunk_items": s.chunk_items.1,
            "block_queries": s.block_pairs.0, "block_passages": s.block_pairs.1,
            "closed_form_head": s.closed_form_head, "retained": self.retained,
            "budget_mb": self.budget.map(|b| b.budget_mb), "estimated_peak_mb": self.budget.map(|b| b.estimated_peak_mb),
            "measured_peak_mb": self.budget.and_then(|b| b.measured_peak_mb),
        })
    }
}

/// One line of per-pass rates (GFLOP/s), as [`StepOutput::describe_rates`]
/// gives for one step (and a trainer for the median over its steps).
pub fn describe_rates(rates: &PassFlops, matmul: Option<crate::runtime::MatmulRate>) -> String {
    let passes = [("representation", rates.representation), ("score", rates.score), ("head", rates.head), ("encoder", rates.encoder)];
    let shown: Vec<String> = passes
        .iter()
        .filter_map(|(name, r)| {
            r.map(|r| match matmul {
                Some(m) => format!("{name} {r:.1} ({:.2}×)", r / m.gflops),
                None => format!("{name} {r:.1}"),
            })
        })
        .collect();
    let of = matmul.map(|m| format!(" of a {:.0} GFLOP/s{} matmul", m.gflops, m.label())).unwrap_or_default();
    format!("GFLOP/s: {}{of}", if shown.is_empty() { "not counted".to_string() } else { shown.join(", ") })
}

/// A budgeted step's memory figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetReport {
    /// The budget in MB (resolved, for `{"budget": "auto"}`).
    pub budget_mb: f64,
    /// The plan's estimated activation peak in MB ([`crate::core::plan::Plan::estimate_peak`]),
    /// never above the budget.
    pub estimated_peak_mb: f64,
    /// The step's measured peak in MB above what was allocated when it
    /// began, on a GPU: from the CUDA caching allocator, whose peak counter
    /// the step resets ([`crate::runtime::gpu::reset_peak`]). `None` on the CPU,
    /// where glibc keeps no peak of bytes in use (the benchmarks read the
    /// process's resident peak instead).
    pub measured_peak_mb: Option<f64>,
}

/// FLOPs of each pass of one step; `None` where an encoder or the head
/// does not count its own.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PassFlops {
    /// The representation pass: every chunk forward, both sides.
    pub representation: Option<f64>,
    /// The score pass: every block forward.
    pub score: Option<f64>,
    /// The head pass: each recomputed block forward again, and every
    /// block backward ([`crate::core::flops::BACKWARD_FACTOR`]); for a closed-form head its
    /// two products `W·V` and `Wᵀ·U`, a backward of the score pass.
    pub head: Option<f64>,
    /// The encoder pass: each recomputed chunk forward again, and every
    /// chunk backward.
    pub encoder: Option<f64>,
}

impl PassFlops {
    /// The rate each pass achieved, in GFLOP/s, over its wall time.
    pub fn gflops_per_second(&self, timings: &PhaseTimings) -> PassFlops {
        let rate = |f: Option<f64>, t: std::time::Duration| f.filter(|_| t.as_secs_f64() > 0.0).map(|f| f / t.as_secs_f64() / 1e9);
        PassFlops {
            representation: rate(self.representation, timings.representation),
            score: rate(self.score, timings.score),
            head: rate(self.head, timings.head),
            encoder: rate(self.encoder, timings.encoder),
        }
    }

    /// Per pass, the median over `steps` of the finite values counted
    /// (`None` where no step counted that pass): a run's typical rates.
    pub fn median(steps: &[PassFlops]) -> PassFlops {
        let median = |pick: fn(&PassFlops) -> Option<f64>| -> Option<f64> {
            let mut v: Vec<f64> = steps.iter().filter_map(pick).filter(|r| r.is_finite()).collect();
            v.sort_by(f64::total_cmp);
            match v.len() {
                0 => None,
                n if n % 2 == 1 => Some(v[n / 2]),
                n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
            }
        };
        PassFlops {
            representation: median(|r| r.representation),
            score: median(|r| r.score),
            head: median(|r| r.head),
            encoder: median(|r| r.encoder),
        }
    }

    /// Whether any pass is counted.
    pub fn any(&self) -> bool {
        [self.representation, self.score, self.head, self.encoder].iter().any(Option::is_some)
    }

    /// The whole step's FLOPs, when every pass is counted.
    pub fn total(&self) -> Option<f64> {
        Some(self.representation? + self.score? + self.head? + self.encoder?)
    }
}
