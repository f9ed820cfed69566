//! The device check: everything that proves the step on one device, as one
//! report (`examples/device_check` writes it as `report.json` and
//! `report.md`). Run on a GPU it is the CUDA path's evidence; run with
//! `--device cpu --quick` it checks the recipe itself in minutes.
//!
//! 1. the device, its CUDA and libtorch versions;
//! 2. exactness on the device: every built-in head under InfoNCE (and the
//!    symmetric InfoNCE and listwise KL losses for the MLP head), dropout
//!    on, f32 and f64, two-cache against full batch through
//!    [`check_head`] (replay, coupling, gradients); re-seeding reproduces
//!    the device's dropout masks, and the replay check catches a second
//!    pass drawn from other streams;
//! 3. step time and peak memory of the full batch, gradient accumulation
//!    and the two-cache step for the dot, MLP and interaction heads, from
//!    the first batch size up to the largest that fits (or the time limit);
//! 4. bf16 autocast: time, and gradients against f32 and against the full
//!    batch under the same autocast;
//! 5. a few training steps on one batch: the loss must fall.
//!
//! The model is MiniLM-shaped (6 layers, width 384, 12 heads, vocabulary
//! 30,522) with random weights: the weights do not travel to a GPU machine,
//! and exactness, speed and memory do not depend on them.

use std::time::Instant;

use rust_bert::bert::BertConfig;
use serde::Serialize;
use tch::{nn, Device, Kind, Tensor};

use gradcache::check::{check_head, max_abs, zero_grads, GradientSnapshot, Tolerance};
use gradcache::core::head::ScoringHead;
use gradcache::core::loss::{ContrastiveLoss, InfoNce, ListwiseKl};
use gradcache::core::replay::ReplaySeeds;
use gradcache::error::{GradCacheError, Result};
use gradcache::models::encoders::TextEncoder;
use gradcache::models::heads::bert_with_head;
use gradcache::models::heads::HeadConfig;
use gradcache::runtime::gpu::synchronize;
use gradcache::runtime::precision::Precision;
use gradcache::{GradCache, StepConfig, Targets, TokenBatch};

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceCheckConfig {
    /// Where.
    pub device: Device,
    /// A 2-layer, width-32 BERT and batches of a few items: minutes on a
    /// CPU (the recipe's own test), not the GPU evidence.
    pub quick: bool,
    /// Scaling stops after this batch size (queries).
    pub max_batch: usize,
    /// Seconds for the scaling sweep, shared equally by its three heads:
    /// a head starts no new configuration after its share, and a warm-up
    /// step slower than a tenth of the share is that configuration's only
    /// timed run.
    pub scaling_seconds: f64,
}

impl DeviceCheckConfig {
    /// The GPU run's defaults on `device`: 256 queries up to 16,384, at most
    /// 240 s of scaling.
    pub fn new(device: Device) -> DeviceCheckConfig {
        DeviceCheckConfig { device, quick: false, max_batch: 16_384, scaling_seconds: 240.0 }
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// Section 1.
    pub environment: Environment,
    /// Section 2: one row per head, loss and dtype.
    pub exactness: Vec<ExactnessRow>,
    /// Section 2: dropout masks and the replay check on the device.
    pub replay: ReplayEvidence,
    /// Section 3.
    pub scaling: Vec<ScalingRow>,
    /// Section 3, under memory budgets: estimate against measurement.
    pub budgets: Vec<BudgetRow>,
    /// Section 4.
    pub precision: PrecisionEvidence,
    /// Section 5: the loss of each step.
    pub training_losses: Vec<f64>,
    /// Whether every check passed (exactness, replay, bf16, training).
    pub passed: bool,
    /// Wall time of the whole check.
    pub seconds: f64,
}

/// The device and the software on it.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    /// `Cpu` or `Cuda(i)`.
    pub device: String,
    /// The GPU, or `None` on the CPU.
    pub gpu: Option<gradcache::runtime::gpu::CudaDevice>,
    /// libtorch's version.
    pub libtorch: String,
    /// Whether this build reads the CUDA allocator.
    pub cuda_shim: bool,
    /// libtorch's intra-op threads.
    pub threads: i32,
    /// The model's shape.
    pub model: String,
}

/// One exactness case.
#[derive(Debug, Clone, Serialize)]
pub struct ExactnessRow {
    /// Head name.
    pub head: String,
    /// `infonce`, `symmetric infonce` or `listwise kl`.
    pub loss: String,
    /// `f32` or `f64`.
    pub dtype: String,
    /// The replay check's error, if any.
    pub replay_error: Option<String>,
    /// Blocked vs whole scores, relative.
    pub coupling: f64,
    /// Losses of the two-cache and full-batch steps.
    pub losses: (f64, f64),
    /// `‖Δg‖ / ‖g‖` over all parameters.
    pub relative_distance: f64,
    /// The largest share of the tolerance any parameter used (≤ 1: pass).
    pub tolerance_used: f64,
    /// The tolerance applied.
    pub tolerance: (f64, f64),
    /// Replay, coupling and gradients all within tolerance.
    pub passed: bool,
}

/// Dropout masks and the replay check on the device.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayEvidence {
    /// `max |a − b|` of one chunk encoded twice in train mode after the
    /// same `tch::manual_seed`: 0 when re-seeding reproduces the masks.
    pub same_seed_diff: f64,
    /// The same after two different seeds: > 0 shows dropout is on.
    pub other_seed_diff: f64,
    /// The replay check's verdict when the second passes draw from other
    /// streams (it must be a mismatch).
    pub unreplayed: String,
    /// Both as they must be.
    pub passed: bool,
}

/// One configuration of the scaling sweep.
#[derive(Debug, Clone, Serialize)]
pub struct ScalingRow {
    /// Head name.
    pub head: String,
    /// `full batch`, `accumulation` or `two-cache`.
    pub method: String,
    /// Queries (each with 2 passages).
    pub batch: usize,
    /// Median seconds per step, or `None` when it did not run.
    pub seconds: Option<f64>,
    /// Peak bytes the step added on the device (the CUDA allocator's peak
    /// less what was allocated before it); `None` on the CPU.
    pub peak_mb: Option<f64>,
    /// Why it did not run (e.g. out of memory).
    pub error: Option<String>,
}

/// One two-cache step under a memory budget (MLP head).
#[derive(Debug, Clone, Serialize)]
pub struct BudgetRow {
    /// Queries (each with 2 passages).
    pub batch: usize,
    /// The budget.
    pub budget_mb: f64,
    /// The plan's estimate.
    pub estimated_mb: f64,
    /// The allocator's peak above the step's start (GPU only).
    pub measured_mb: Option<f64>,
    /// Chunks and blocks retained, as `query / passage / blocks`.
    pub retained: String,
    /// Median seconds per step.
    pub seconds: f64,
}

/// bf16 against f32, MLP head, two-cache step.
#[derive(Debug, Clone, Serialize)]
pub struct PrecisionEvidence {
    /// Queries.
    pub batch: usize,
    /// Median seconds per step in f32 and in bf16.
    pub seconds: (f64, f64),
    /// `‖Δg‖ / ‖g‖` of bf16 against f32.
    pub vs_f32: f64,
    /// The same of the bf16 two-cache step against the bf16 full batch.
    pub vs_full_batch: f64,
    /// bf16 two-cache equals bf16 full batch (≤ 1e-3 and ≤ a tenth of
    /// `vs_f32`, as `tests/precision.rs` asks on the CPU).
    pub passed: bool,
}

/// The encoder's shape.
fn bert_config(quick: bool) -> BertConfig {
    if quick {
        BertConfig {
            hidden_size: 32,
            intermediate_size: 64,
            num_attention_heads: 2,
            num_hidden_layers: 2,
            vocab_size: 1000,
            max_position_embeddings: 128,
            ..BertConfig::default()
        }
    } else {
        BertConfig {
            hidden_size: 384,
            intermediate_size: 1536,
            num_attention_heads: 12,
            num_hidden_layers: 6,
            vocab_size: 30_522,
            max_position_embeddings: 512,
            ..BertConfig::default()
        }
    }
}

fn model(vs: &nn::VarStore, head: &str, quick: bool) -> Result<(TextEncoder, Box<dyn ScoringHead>)> {
    bert_with_head(vs, &bert_config(quick), head)
}

/// One batch of `batch` queries with 2 passages each (`len` tokens) for a
/// model with `head`, built from `seed`.
struct Workload {
    vs: nn::VarStore,
    encoder: TextEncoder,
    head: Box<dyn ScoringHead>,
    loss: InfoNce,
    queries: TokenBatch,
    passages: TokenBatch,
    targets: Targets,
}

impl Workload {
    fn new(config: &DeviceCheckConfig, head: &str, seed: i64, batch: usize, len: i64) -> Result<Workload> {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(config.device);
        let (encoder, head) = model(&vs, head, config.quick)?;
        let queries = tokens(batch, len, vocab(config.quick), config.device)?;
        let passages = tokens(2 * batch, len, vocab(config.quick), config.device)?;
        let targets = Targets::grouped(batch, 2 * batch, 2)?;
        Ok(Workload { vs, encoder, head, loss: InfoNce { temperature: 0.05, symmetric: false }, queries, passages, targets })
    }

    fn step(&self, config: StepConfig) -> Result<GradCache<'_, TextEncoder, TextEncoder>> {
        GradCache::tied(config, &self.encoder, self.head.as_ref(), &self.loss)
    }
}

/// `n` random token sequences of up to `len` tokens (lengths from `len/2`),
/// on `device`.
fn tokens(n: usize, len: i64, vocab: i64, device: Device) -> Result<TokenBatch> {
    TokenBatch::random(n, (len / 2) as usize..=len as usize, 1000.min(vocab / 2)..vocab)?.to_device(device)
}

fn vocab(quick: bool) -> i64 {
    bert_config(quick).vocab_size
}

/// Runs the check.
///
/// # Errors
/// Errors that stop the check itself (a model that cannot be built, a
/// device that cannot be read); a failed comparison is a row, not an error,
/// and out-of-memory in the scaling sweep is recorded as the row's error.
pub fn run(config: &DeviceCheckConfig, progress: &mut dyn FnMut(&str)) -> Result<DeviceReport> {
    let start = Instant::now();
    let device = config.device;
    let environment = Environment {
        device: format!("{device:?}"),
        gpu: match device {
            Device::Cuda(_) => Some(gradcache::runtime::gpu::device_info(device)?),
            _ => None,
        },
        libtorch: gradcache::runtime::gpu::libtorch_version(),
        cuda_shim: gradcache::runtime::gpu::CUDA_SHIM,
        threads: tch::get_num_threads(),
        model: {
            let b = bert_config(config.quick);
            format!("BERT, {} layers, width {}, {} heads, random weights", b.num_hidden_layers, b.hidden_size, b.num_attention_heads)
        },
    };
    progress(&format!("device check on {} ({})", environment.device, environment.gpu.as_ref().map(|g| g.name.as_str()).unwrap_or("CPU")));
    let exactness = exactness(config, progress)?;
    let replay = replay(config)?;
    progress(&format!(
        "replay: same seed {:.1e}, other seed {:.1e}, unreplayed: {}",
        replay.same_seed_diff, replay.other_seed_diff, replay.unreplayed
    ));
    let precision = precision(config, progress)?;
    let training_losses = training(config)?;
    progress(&format!("training losses: {training_losses:?}"));
    let budgets = budgets(config, progress)?;
    // Last: the one open-ended section (it climbs until out of memory or
    // out of time); every section before it has logged its numbers.
    let scaling = scaling(config, progress)?;
    let trained = training_losses.last() < training_losses.first();
    let passed = exactness.iter().all(|r| r.passed) && replay.passed && precision.passed && trained;
    Ok(DeviceReport {
        environment,
        exactness,
        replay,
        scaling,
        budgets,
        precision,
        training_losses,
        passed,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn exactness(config: &DeviceCheckConfig, progress: &mut dyn FnMut(&str)) -> Result<Vec<ExactnessRow>> {
    let (n, g, len) = if config.quick { (6, 2, 8) } else { (8, 2, 16) };
    let layout = StepConfig {
        layout: gradcache::Layout { query_chunk_size: 3, passage_chunk_size: 5, head_block_queries: 3, head_block_passages: 5 },
        ..StepConfig::default()
    };
    let mut cases: Vec<(&str, &str)> = HeadConfig::NAMES.iter().map(|h| (*h, "infonce")).collect();
    cases.extend([("mlp", "symmetric infonce"), ("mlp", "listwise kl")]);
    let mut rows = Vec::new();
    for kind in [Kind::Float, Kind::Double] {
        // GPU kernels sum in other orders than the CPU's (and atomically in
        // some backward passes), so f32 gets a looser bound than the CPU
        // suite's 2e-6; f64 stays tight.
        let tolerance = if kind == Kind::Double { Tolerance { abs: 1e-12, rel: 1e-10 } } else { Tolerance { abs: 1e-6, rel: 1e-4 } };
        for &(head, loss_name) in &cases {
            tch::manual_seed(11);
            let mut vs = nn::VarStore::new(config.device);
            let (encoder, scoring) = model(&vs, head, config.quick)?;
            if kind == Kind::Double {
                vs.double();
            }
            let queries = tokens(n, len, vocab(config.quick), config.device)?;
            let passages = tokens(n * g, len + 4, vocab(config.quick), config.device)?;
            let mut targets = Targets::grouped(n, n * g, g)?;
            let loss: Box<dyn ContrastiveLoss> = match loss_name {
                "symmetric infonce" => Box::new(InfoNce { temperature: 0.05, symmetric: true }),
                "listwise kl" => {
                    targets = targets.with_teacher_scores(
                        Tensor::f_randn([n as i64, g as i64], (Kind::Float, Device::Cpu))?.f_to_device(config.device)?,
                    )?;
                    Box::new(ListwiseKl { temperature: 0.05, teacher_temperature: 1.0 })
                }
                _ => Box::new(InfoNce { temperature: 0.05, symmetric: false }),
            };
            let gc = GradCache::tied(layout.clone(), &encoder, scoring.as_ref(), loss.as_ref())?;
            let report = check_head(&gc, &vs, &queries, &passages, &targets, tolerance)?;
            let row = ExactnessRow {
                head: head.into(),
                loss: loss_name.into(),
                dtype: if kind == Kind::Double { "f64" } else { "f32" }.into(),
                replay_error: report.replay.as_ref().map(|e| e.to_string()),
                coupling: report.coupling.relative_diff,
                losses: report.losses,
                relative_distance: report.gradient_distance,
                tolerance_used: report.gradients.tolerance_used(tolerance),
                tolerance: (tolerance.abs, tolerance.rel),
                passed: report.passed(),
            };
            progress(&format!(
                "exactness {head} / {loss_name} / {}: ‖Δg‖/‖g‖ {:.1e}, tolerance used {:.2} {}",
                row.dtype,
                row.relative_distance,
                row.tolerance_used,
                if row.passed { "ok" } else { "FAILED" }
            ));
            rows.push(row);
        }
    }
    Ok(rows)
}

fn replay(config: &DeviceCheckConfig) -> Result<ReplayEvidence> {
    use gradcache::Encoder;
    tch::manual_seed(12);
    let vs = nn::VarStore::new(config.device);
    let (encoder, head) = model(&vs, "mlp", config.quick)?;
    let chunk = tokens(4, 16, vocab(config.quick), config.device)?;
    let encode = |seed: i64| -> Result<Tensor> {
        tch::manual_seed(seed);
        Ok(tch::no_grad(|| encoder.encode(&chunk, true))?.tensor().shallow_clone())
    };
    let same_seed_diff = max_abs(&encode(3)?.f_sub(&encode(3)?)?)?;
    let other_seed_diff = max_abs(&encode(3)?.f_sub(&encode(4)?)?)?;
    // The step's replay check with the second passes on other streams.
    let (n, g) = (6, 2);
    let queries = tokens(n, 12, vocab(config.quick), config.device)?;
    let passages = tokens(n * g, 16, vocab(config.quick), config.device)?;
    let targets = Targets::grouped(n, n * g, g)?;
    let loss = InfoNce { temperature: 0.05, symmetric: false };
    let layout = StepConfig {
        layout: gradcache::Layout { query_chunk_size: 2, passage_chunk_size: 4, head_block_queries: 2, head_block_passages: 4 },
        ..StepConfig::default()
    };
    let gc = GradCache::tied(layout, &encoder, head.as_ref(), &loss)?;
    let seeds = ReplaySeeds::draw()?;
    let plan = gradcache::core::plan::Plan::layout_of(gc.config(), &queries, &passages)?;
    let mut reps = gc.representation_pass(&queries, &passages, &plan, &seeds)?;
    let mut scores = gc.score_pass(&reps, &plan, &seeds)?;
    let cache = gc.distance_gradient_cache(&scores, &targets)?;
    let other = seeds.child(777);
    let unreplayed = match gc
        .head_pass(&reps, &mut scores, &cache, &plan, &other)
        .and_then(|h| gc.encoder_pass(&queries, &passages, &mut reps, &h.gradients, &plan, &other))
    {
        Err(e @ GradCacheError::ReplayMismatch { .. }) => format!("caught: {e}"),
        Err(e) => return Err(e),
        Ok(()) => "NOT caught".to_string(),
    };
    zero_grads(&vs);
    let passed = same_seed_diff == 0.0 && other_seed_diff > 0.0 && unreplayed.starts_with("caught");
    Ok(ReplayEvidence { same_seed_diff, other_seed_diff, unreplayed, passed })
}

/// Median seconds of `steps` timed calls after one warm-up, and the peak
/// bytes above the start (CUDA only).
fn time_steps(device: Device, steps: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<(f64, Option<f64>)> {
    time_steps_within(device, steps, f64::INFINITY, f)
}

/// [`time_steps`], except that a warm-up slower than `slow` seconds is the
/// only run (its time is returned): a device run has a hard time limit.
fn time_steps_within(device: Device, steps: usize, slow: f64, f: &mut dyn FnMut() -> Result<()>) -> Result<(f64, Option<f64>)> {
    let base = match device {
        Device::Cuda(_) => {
            synchronize(device);
            gradcache::runtime::gpu::reset_peak(device)?;
            Some(gradcache::runtime::gpu::memory(device)?.allocated)
        }
        _ => None,
    };
    let t = Instant::now();
    f()?;
    synchronize(device);
    let warm_up = t.elapsed().as_secs_f64();
    let mut times = Vec::new();
    for _ in 0..if warm_up > slow { 0 } else { steps } {
        let t = Instant::now();
        f()?;
        synchronize(device);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let peak = match base {
        Some(b) => Some(gradcache::runtime::gpu::memory(device)?.peak.saturating_sub(b) as f64 / (1u64 << 20) as f64),
        None => None,
    };
    Ok((times.get(times.len() / 2).copied().unwrap_or(warm_up), peak))
}

fn is_out_of_memory(e: &GradCacheError) -> bool {
    let text = e.to_string();
    text.contains("out of memory") || text.contains("CUDA error: out of memory")
}

fn scaling(config: &DeviceCheckConfig, progress: &mut dyn FnMut(&str)) -> Result<Vec<ScalingRow>> {
    let (first, len, chunk) = if config.quick { (8, 16, 4) } else { (256, 64, 128) };
    let heads = ["dot", "mlp", "interaction"];
    // Each head gets its share of the time, so that a slow one cannot
    // crowd out the others.
    let per_head = config.scaling_seconds / heads.len() as f64;
    let mut rows = Vec::new();
    for head in heads {
        let start = Instant::now();
        tch::manual_seed(13);
        let vs = nn::VarStore::new(config.device);
        let (encoder, scoring) = model(&vs, head, config.quick)?;
        let loss = InfoNce { temperature: 0.05, symmetric: false };
        let layout = StepConfig { layout: gradcache::Layout::from_chunk_size(chunk), check_replay: false, ..StepConfig::default() };
        let mut stopped = [false; 3];
        let mut batch = first;
        while batch <= config.max_batch && stopped.iter().any(|s| !s) {
            let queries = tokens(batch, len, vocab(config.quick), config.device)?;
            let passages = tokens(2 * batch, len, vocab(config.quick), config.device)?;
            let targets = Targets::grouped(batch, 2 * batch, 2)?;
            for (m, method) in ["full batch", "accumulation", "two-cache"].into_iter().enumerate() {
                if stopped[m] {
                    continue;
                }
                if start.elapsed().as_secs_f64() > per_head {
                    stopped = [true; 3];
                    break;
                }
                let step_config = if m == 0 { layout.whole_batch(2 * batch) } else { layout.clone() };
                let mut gc = GradCache::tied(step_config, &encoder, scoring.as_ref(), &loss)?;
                let mut step = || -> Result<()> {
                    zero_grads(&vs);
                    match m {
                        0 => gc.full_batch_step(&queries, &passages, &targets).map(|_| ()),
                        1 => gc.accumulation_step(&queries, &passages, &targets, chunk).map(|_| ()),
                        _ => gc.step(&queries, &passages, &targets).map(|_| ()),
                    }
                };
                let row = match time_steps_within(config.device, 2, per_head / 10.0, &mut step) {
                    Ok((seconds, peak_mb)) => {
                        ScalingRow { head: head.into(), method: method.into(), batch, seconds: Some(seconds), peak_mb, error: None }
                    }
                    // Out of memory is the sweep's expected end for a
                    // method; any other failure is recorded and ends it
                    // too, so that the other sections' results are kept.
                    Err(e) => {
                        stopped[m] = true;
                        let error = if is_out_of_memory(&e) { "out of memory".to_string() } else { e.to_string() };
                        ScalingRow { head: head.into(), method: method.into(), batch, seconds: None, peak_mb: None, error: Some(error) }
                    }
                };
                zero_grads(&vs);
                // A step slower than a tenth of the head's time ends this
                // method's climb (the next size takes twice as long).
                if row.seconds.is_some_and(|s| s * 3.0 > per_head / 10.0) {
                    stopped[m] = true;
                }
                progress(&format!(
                    "scaling {head} {method} {batch}: {}",
                    match (&row.seconds, &row.peak_mb, &row.error) {
                        (Some(s), Some(p), _) => format!("{s:.3} s, peak {p:.0} MB"),
                        (Some(s), None, _) => format!("{s:.3} s"),
                        (_, _, Some(e)) => e.clone(),
                        _ => String::new(),
                    }
                ));
                rows.push(row);
            }
            batch *= 2;
        }
    }
    Ok(rows)
}

/// The MLP head's two-cache step under budgets of 1.25, 2, 4 and 8 times
/// the least one the plan accepts: the estimate beside the measured peak.
fn budgets(config: &DeviceCheckConfig, progress: &mut dyn FnMut(&str)) -> Result<Vec<BudgetRow>> {
    let (batch, len, chunk) = if config.quick { (16, 16, 4) } else { (1024, 64, 128) };
    let w = Workload::new(config, "mlp", 16, batch, len)?;
    let layout = StepConfig { layout: gradcache::Layout::from_chunk_size(chunk), check_replay: false, ..StepConfig::default() };
    let budgeted = |budget_mb: f64| StepConfig { memory: gradcache::core::config::MemoryConfig::Budget { budget_mb }, ..layout.clone() };
    let least = match w.step(budgeted(1e-3))?.step(&w.queries, &w.passages, &w.targets) {
        Err(GradCacheError::BudgetTooSmall { needed_mb, .. }) => needed_mb,
        Err(e) => return Err(e),
        Ok(_) => return Err(GradCacheError::InvalidConfig { field: "memory", reason: "a budget of 1 kB was accepted" }),
    };
    let mut rows = Vec::new();
    for factor in [1.25, 2.0, 4.0, 8.0] {
        let mut gc = w.step(budgeted(least * factor))?;
        let mut last = None;
        let mut step = || -> Result<()> {
            zero_grads(&w.vs);
            last = Some(gc.step(&w.queries, &w.passages, &w.targets)?);
            Ok(())
        };
        let (seconds, _) = time_steps(config.device, 2, &mut step)?;
        let out = last.ok_or(GradCacheError::EmptyInput { what: "budget steps" })?;
        let b = out.budget.ok_or(GradCacheError::InvalidConfig { field: "memory", reason: "a budgeted step reported no budget" })?;
        let r = out.retained;
        let row = BudgetRow {
            batch,
            budget_mb: b.budget_mb,
            estimated_mb: b.estimated_peak_mb,
            measured_mb: b.measured_peak_mb,
            retained: format!("{} / {} / {}", r.query_chunks, r.passage_chunks, r.head_blocks),
            seconds,
        };
        progress(&format!(
            "budget {:.0} MB: estimate {:.0} MB, measured {:?}, {:.3} s",
            row.budget_mb, row.estimated_mb, row.measured_mb, row.seconds
        ));
        rows.push(row);
    }
    zero_grads(&w.vs);
    Ok(rows)
}

fn precision(config: &DeviceCheckConfig, progress: &mut dyn FnMut(&str)) -> Result<PrecisionEvidence> {
    let (batch, len, chunk) = if config.quick { (8, 16, 4) } else { (256, 64, 64) };
    let w = Workload::new(config, "mlp", 14, batch, len)?;
    let layout = StepConfig { layout: gradcache::Layout::from_chunk_size(chunk), ..StepConfig::default() };
    let run = |precision: Precision, full: bool| -> Result<(f64, GradientSnapshot)> {
        let mut gc = w.step(StepConfig { precision, ..layout.clone() })?;
        let mut step = || -> Result<()> {
            zero_grads(&w.vs);
            tch::manual_seed(99);
            if full {
                gc.full_batch_step(&w.queries, &w.passages, &w.targets).map(|_| ())
            } else {
                gc.step(&w.queries, &w.passages, &w.targets).map(|_| ())
            }
        };
        let (seconds, _) = time_steps(config.device, 2, &mut step)?;
        Ok((seconds, GradientSnapshot::take(&w.vs)?))
    };
    let (f32_s, f32_g) = run(Precision::F32, false)?;
    let (bf16_s, bf16_g) = run(Precision::Bf16, false)?;
    let (_, bf16_full) = run(Precision::Bf16, true)?;
    let vs_f32 = bf16_g.relative_distance(&f32_g)?;
    let vs_full_batch = bf16_g.relative_distance(&bf16_full)?;
    zero_grads(&w.vs);
    progress(&format!("bf16: {bf16_s:.3} s vs f32 {f32_s:.3} s; gradients vs f32 {vs_f32:.1e}, vs bf16 full batch {vs_full_batch:.1e}"));
    Ok(PrecisionEvidence {
        batch,
        seconds: (f32_s, bf16_s),
        vs_f32,
        vs_full_batch,
        passed: vs_full_batch <= 1e-3 && vs_full_batch <= 0.1 * vs_f32,
    })
}

fn training(config: &DeviceCheckConfig) -> Result<Vec<f64>> {
    let (batch, len, steps) = if config.quick { (8, 16, 4) } else { (64, 64, 6) };
    let w = Workload::new(config, "mlp", 15, batch, len)?;
    let mut gc = w.step(StepConfig::default())?;
    let mut optimizer = gradcache::app::train::optim::AdamW::new(0.01);
    let mut losses = Vec::new();
    for _ in 0..steps {
        zero_grads(&w.vs);
        losses.push(gc.step(&w.queries, &w.passages, &w.targets)?.loss);
        optimizer.step(&w.vs, 1e-4)?;
    }
    Ok(losses)
}

impl DeviceReport {
    /// The report as Markdown.
    pub fn to_markdown(&self) -> String {
        use std::fmt::Write;
        let e = &self.environment;
        let mut md = String::new();
        let _ = writeln!(md, "# Device check: {}\n", if self.passed { "passed" } else { "FAILED" });
        let _ = writeln!(md, "## 1. Device\n");
        match &e.gpu {
            Some(g) => {
                let _ = writeln!(
                    md,
                    "- device: {} ({}), {:.1} GiB, compute capability {}.{}\n- CUDA runtime {}, driver supports CUDA {}",
                    g.name,
                    e.device,
                    g.total_bytes as f64 / (1u64 << 30) as f64,
                    g.capability.0,
                    g.capability.1,
                    cuda_version(g.runtime_version),
                    cuda_version(g.driver_version)
                );
            }
            None => {
                let _ = writeln!(md, "- device: {} ({} threads)", e.device, e.threads);
            }
        }
        let _ = writeln!(
            md,
            "- libtorch {}; CUDA allocator shim: {}\n- model: {}\n- wall time {:.0} s\n",
            e.libtorch,
            if e.cuda_shim { "built" } else { "not built" },
            e.model,
            self.seconds
        );
        let _ = writeln!(md, "## 2. Exactness: two-cache vs full batch, dropout on\n");
        let _ = writeln!(
            md,
            "| head | loss | dtype | replay | coupling | loss diff | ‖Δg‖/‖g‖ | tolerance (abs, rel) | tolerance used | verdict |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in &self.exactness {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.1e} | {:.1e} | {:.1e} | {:.0e}, {:.0e} | {:.1e} | {} |",
                r.head,
                r.loss,
                r.dtype,
                if r.replay_error.is_some() { "MISMATCH" } else { "ok" },
                r.coupling,
                (r.losses.0 - r.losses.1).abs(),
                r.relative_distance,
                r.tolerance.0,
                r.tolerance.1,
                r.tolerance_used,
                if r.passed { "ok" } else { "FAILED" }
            );
        }
        let r = &self.replay;
        let _ = writeln!(
            md,
            "\nDropout masks on this device: one chunk encoded twice after the same `tch::manual_seed` differs by {:.1e} (after two different seeds: {:.1e}). Second passes drawn from other streams: {}.\n",
            r.same_seed_diff, r.other_seed_diff, r.unreplayed
        );
        let _ = writeln!(md, "## 3. Step time and peak memory (2 passages per query)\n");
        let _ = writeln!(md, "| head | method | queries | s/step | peak MB above the model |\n|---|---|---|---|---|");
        for r in &self.scaling {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                r.head,
                r.method,
                r.batch,
                r.seconds.map(|s| format!("{s:.3}")).unwrap_or_else(|| r.error.clone().unwrap_or_default()),
                r.peak_mb.map(|p| format!("{p:.0}")).unwrap_or_else(|| "–".into())
            );
        }
        let _ = writeln!(md, "\nUnder memory budgets (MLP head, two-cache; retained = query chunks / passage chunks / head blocks):\n");
        let _ =
            writeln!(md, "| queries | budget MB | estimated peak MB | measured peak MB | retained | s/step |\n|---|---|---|---|---|---|");
        for b in &self.budgets {
            let measured = b.measured_mb.map(|m| format!("{m:.1}")).unwrap_or_else(|| "– (CPU)".into());
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.1} | {} | {} | {:.3} |",
                b.batch, b.budget_mb, b.estimated_mb, measured, b.retained, b.seconds
            );
        }
        let p = &self.precision;
        let _ = writeln!(
            md,
            "\n## 4. bf16 autocast (MLP head, two-cache, {} queries)\n\n- s/step: f32 {:.3}, bf16 {:.3} ({:.2}×)\n- gradients (‖Δg‖/‖g‖): bf16 vs f32 {:.1e}; bf16 two-cache vs bf16 full batch {:.1e} ({})\n",
            p.batch,
            p.seconds.0,
            p.seconds.1,
            p.seconds.1 / p.seconds.0,
            p.vs_f32,
            p.vs_full_batch,
            if p.passed { "ok" } else { "FAILED" }
        );
        let _ = writeln!(
            md,
            "## 5. Training on one batch\n\nlosses: {}\n",
            self.training_losses.iter().map(|l| format!("{l:.4}")).collect::<Vec<_>>().join(" → ")
        );
        md
    }
}

fn cuda_version(v: i32) -> String {
    if v < 0 {
        "unknown".into()
    } else {
        format!("{}.{}", v / 1000, (v % 1000) / 10)
    }
}
