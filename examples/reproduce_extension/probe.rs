//! One configuration of the step benchmark, measured in the calling
//! process: a method (full batch, gradient accumulation, representation
//! cache only, two-cache), a batch size and a head, on a small freshly
//! initialised BERT: median step seconds after warm-up and the process's
//! peak resident memory (VmHWM). `reproduce_extension probe …` prints one
//! configuration's JSON line: the memory part of the reproduction runs each
//! configuration so, in a process of its own, and so do the step and
//! budget benchmarks (benchmarks/step/, benchmarks/budget/).

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
use gradcache::core::head::ScoringHead;
use gradcache::models::encoders::TextEncoder;
use gradcache::{GradCache, InfoNce, StepConfig, Targets, TokenBatch};
use rust_bert::bert::BertConfig;
use tch::{nn, Device};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum Method {
    /// One graph over the whole batch: one chunk, one block.
    Full,
    /// Sub-batches of `chunk` queries, each a full graph (fewer negatives).
    Accumulation,
    /// The paper's §3: encoder chunks, the head over the whole grid at once.
    RepCache,
    /// §5: encoder chunks and head blocks.
    TwoCache,
}

/// One configuration.
#[derive(Parser, Debug, Clone)]
pub struct ProbeArgs {
    #[arg(long, value_enum)]
    pub method: Method,
    /// Queries; each has `group` passages.
    #[arg(long)]
    pub batch: usize,
    #[arg(long, default_value_t = 2)]
    pub group: usize,
    /// dot, mlp, max_sim or interaction.
    #[arg(long, default_value = "mlp")]
    pub head: String,
    #[arg(long, default_value_t = 16)]
    pub chunk: usize,
    #[arg(long, default_value_t = 16)]
    pub block_queries: usize,
    #[arg(long, default_value_t = 64)]
    pub block_passages: usize,
    #[arg(long, default_value_t = 16)]
    pub tokens: i64,
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub threads: i32,
    /// Skip the replay check (compare its cost).
    #[arg(long)]
    pub no_check_replay: bool,
    /// The two-cache step's memory plan, as JSON (`StepConfig.memory`), e.g.
    /// '{"recompute": "none"}'.
    #[arg(long)]
    pub memory: Option<String>,
    /// Chunk and block sizes chosen from the budget (`StepConfig.auto_sizes`).
    #[arg(long)]
    pub auto_sizes: bool,
}

/// The benchmark's model under `vs`: a small BERT (2 layers, width 128,
/// 4 heads, vocabulary 8000, fresh weights) shaped for `head` (mean pooling
/// for vector heads, token states for token heads, 32-d token projections
/// for the interaction block) and that head, built-in by name.
pub fn small_model(vs: &nn::VarStore, head: &str) -> Result<(TextEncoder, Box<dyn ScoringHead>)> {
    // A small BERT: 2 layers, width 128, 4 heads.
    let bert = BertConfig {
        hidden_size: 128,
        intermediate_size: 512,
        num_attention_heads: 4,
        num_hidden_layers: 2,
        vocab_size: 8000,
        max_position_embeddings: 64,
        ..BertConfig::default()
    };
    Ok(gradcache::models::heads::bert_with_head(vs, &bert, head)?)
}

/// Random token ids in the small model's vocabulary, no padding.
///
/// # Shapes
/// Returns a batch of `[n, len]`.
pub fn tokens(n: usize, len: i64) -> Result<TokenBatch> {
    Ok(TokenBatch::random(n, len as usize..=len as usize, 1000..8000)?)
}

/// Runs one configuration and returns its JSON row (`method`, `head`,
/// `batch`, `passages`, `median_s`, `peak_mb`, `before_step_mb`, `steps`).
/// Call [`gradcache::runtime::tune_allocator`] first, as the binaries do.
pub fn probe(a: &ProbeArgs) -> Result<serde_json::Value> {
    tch::set_num_threads(a.threads);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let (encoder, head) = small_model(&vs, &a.head)?;
    let loss = InfoNce { temperature: 1.0, symmetric: false };
    let (n, m) = (a.batch, a.batch * a.group);
    let layout = StepConfig {
        layout: gradcache::Layout {
            query_chunk_size: a.chunk,
            passage_chunk_size: a.chunk,
            head_block_queries: a.block_queries,
            head_block_passages: a.block_passages,
        },
        ..StepConfig::default()
    };
    let config = match a.method {
        Method::Full => layout.whole_batch(m),
        Method::RepCache => StepConfig {
            layout: gradcache::Layout { head_block_queries: n, head_block_passages: m, ..gradcache::Layout::default() },
            ..layout
        },
        Method::Accumulation | Method::TwoCache => layout,
    };
    let memory = match &a.memory {
        Some(json) => serde_json::from_str(json)?,
        None => gradcache::core::config::MemoryConfig::default(),
    };
    let config = StepConfig { check_replay: !a.no_check_replay, memory, auto_sizes: a.auto_sizes, ..config };
    let mut gc = GradCache::tied(config, &encoder, head.as_ref(), &loss)?;
    let (q, p) = (tokens(n, a.tokens)?, tokens(m, a.tokens)?);
    let targets = Targets::grouped(n, m, a.group)?;
    let idle_mb = gradcache::runtime::peak_resident_mb()?;
    let (mut times, mut phases) = (Vec::new(), Vec::new());
    let (mut kept, mut plan) = (serde_json::Value::Null, serde_json::Value::Null);
    for step in 0..=a.steps {
        gradcache::check::zero_grads(&vs);
        let t = std::time::Instant::now();
        let out = match a.method {
            Method::Full => gc.full_batch_step(&q, &p, &targets)?,
            Method::Accumulation => gc.accumulation_step(&q, &p, &targets, a.chunk)?,
            Method::RepCache | Method::TwoCache => gc.step(&q, &p, &targets)?,
        };
        if step > 0 {
            times.push(t.elapsed().as_secs_f64()); // step 0 is warm-up
            phases.push(out.timings);
        }
        kept = serde_json::json!({
            "query_chunks": out.retained.query_chunks, "passage_chunks": out.retained.passage_chunks,
            "head_blocks": out.retained.head_blocks,
            "budget_mb": out.budget.map(|b| b.budget_mb), "estimate_mb": out.budget.map(|b| b.estimated_peak_mb),
        });
        plan = out.plan_json();
    }
    if times.is_empty() {
        bail!("--steps must be at least 1");
    }
    // Seconds per phase, averaged over the measured steps.
    let phase = |f: fn(&gradcache::core::output::PhaseTimings) -> std::time::Duration| {
        phases.iter().map(|p| f(p).as_secs_f64()).sum::<f64>() / phases.len() as f64
    };
    let phase_s = serde_json::json!({
        "representation": phase(|p| p.representation), "score": phase(|p| p.score),
        "distance_gradient": phase(|p| p.distance_gradient), "head": phase(|p| p.head), "encoder": phase(|p| p.encoder),
    });
    times.sort_by(f64::total_cmp);
    Ok(serde_json::json!({
        "method": format!("{:?}", a.method), "head": a.head, "batch": n, "passages": m, "chunk": a.chunk,
        "check_replay": !a.no_check_replay, "memory": config_memory(&a.memory), "auto_sizes": a.auto_sizes, "plan": plan, "retained": kept, "median_s": times[times.len() / 2], "phase_s": phase_s,
        "peak_mb": gradcache::runtime::peak_resident_mb()?, "before_step_mb": idle_mb, "steps": times.len(),
    }))
}

fn config_memory(memory: &Option<String>) -> serde_json::Value {
    memory.as_deref().and_then(|m| serde_json::from_str(m).ok()).unwrap_or(serde_json::json!({"recompute": "all"}))
}
