//! One configuration of the step benchmark, in its own process: a method
//! (full batch, gradient accumulation, representation cache only, two-cache),
//! a batch size and a head, on a small freshly initialised BERT. Prints one
//! JSON line: median step seconds after warm-up and the process's peak
//! resident memory (VmHWM). Run by `benchmarks/step_bench.sh`.

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
use gradcache::encoders::{BertEncoderConfig, Pooling};
use gradcache::heads::HeadConfig;
use gradcache::{GradCache, InfoNce, StepConfig, Targets, TokenBatch};
use rust_bert::bert::BertConfig;
use tch::{nn, Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Method {
    /// One graph over the whole batch: one chunk, one block.
    Full,
    /// Sub-batches of `chunk` queries, each a full graph (fewer negatives).
    Accumulation,
    /// The paper's §3: encoder chunks, the head over the whole grid at once.
    RepCache,
    /// §5: encoder chunks and head blocks.
    TwoCache,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum)]
    method: Method,
    /// Queries; each has `group` passages.
    #[arg(long)]
    batch: usize,
    #[arg(long, default_value_t = 2)]
    group: usize,
    /// dot, mlp, max_sim or interaction.
    #[arg(long, default_value = "mlp")]
    head: String,
    #[arg(long, default_value_t = 16)]
    chunk: usize,
    #[arg(long, default_value_t = 16)]
    block_queries: usize,
    #[arg(long, default_value_t = 64)]
    block_passages: usize,
    #[arg(long, default_value_t = 16)]
    tokens: i64,
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    threads: i32,
}

fn vm_hwm_mb() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).ok_or_else(|| anyhow::anyhow!("no VmHWM"))?;
    let kb: f64 = line.split_whitespace().nth(1).unwrap_or("0").parse()?;
    Ok(kb / 1024.0)
}

fn tokens(n: usize, len: i64) -> Result<TokenBatch> {
    let ids = Tensor::randint_low(1000, 8000, [n as i64, len], (Kind::Int64, Device::Cpu));
    Ok(TokenBatch::new(ids, Tensor::ones([n as i64, len], (Kind::Int64, Device::Cpu)))?)
}

fn main() -> Result<()> {
    gradcache::runtime::tune_allocator();
    let a = Args::parse();
    tch::set_num_threads(a.threads);
    tch::manual_seed(0);
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
    let head_config = match a.head.as_str() {
        // The interaction block on 32-d token projections keeps it affordable on a CPU.
        "interaction" => HeadConfig::named("interaction", 32, 0.1)?,
        name => HeadConfig::named(name, 128, 0.1)?,
    };
    let (pooling, projection) = match (&head_config, head_config.reads_tokens()) {
        (HeadConfig::Interaction(c), _) => (Pooling::Tokens, Some(c.dim)),
        (_, true) => (Pooling::Tokens, None),
        (_, false) => (Pooling::Mean, None),
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let encoder = BertEncoderConfig { pooling, projection, ..Default::default() }.init_fresh(&vs, "encoder", &bert, 1e-12)?;
    let head = head_config.init(&(vs.root() / "head"))?;
    let loss = InfoNce { temperature: 1.0, symmetric: false };
    let (n, m) = (a.batch, a.batch * a.group);
    let layout = StepConfig {
        query_chunk_size: a.chunk,
        passage_chunk_size: a.chunk,
        head_block_queries: a.block_queries,
        head_block_passages: a.block_passages,
        ..StepConfig::default()
    };
    let config = match a.method {
        Method::Full => layout.whole_batch(m),
        Method::RepCache => StepConfig { head_block_queries: n, head_block_passages: m, ..layout },
        Method::Accumulation | Method::TwoCache => layout,
    };
    let gc = GradCache::tied(config, &encoder, head.as_ref(), &loss)?;
    let (q, p) = (tokens(n, a.tokens)?, tokens(m, a.tokens)?);
    let targets = Targets::grouped(n, m, a.group)?;
    let idle_mb = vm_hwm_mb()?;
    let mut times = Vec::new();
    for step in 0..=a.steps {
        gradcache::check::zero_grads(&vs);
        let t = std::time::Instant::now();
        match a.method {
            Method::Full => gc.full_batch_step(&q, &p, &targets)?,
            Method::Accumulation => gc.accumulation_step(&q, &p, &targets, a.chunk)?,
            Method::RepCache | Method::TwoCache => gc.step(&q, &p, &targets)?,
        };
        if step > 0 {
            times.push(t.elapsed().as_secs_f64()); // step 0 is warm-up
        }
    }
    if times.is_empty() {
        bail!("--steps must be at least 1");
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"method\": \"{:?}\", \"head\": \"{}\", \"batch\": {n}, \"passages\": {m}, \"median_s\": {:.4}, \"peak_mb\": {:.1}, \"before_step_mb\": {:.1}, \"steps\": {}}}",
        a.method,
        a.head,
        times[times.len() / 2],
        vm_hwm_mb()?,
        idle_mb,
        times.len()
    );
    Ok(())
}
