//! gradcache's side of the comparison with sentence-transformers'
//! CachedMultipleNegativesRankingLoss (benchmarks/peers/st_cmnrl.py): the
//! same MiniLM weights, the same (query, positive, hard negative) triples,
//! the same batch, encoder chunk (their `mini_batch_size`) and thread count.
//! The score is cosine × 20 and the loss cross-entropy over every passage in
//! the batch, as in theirs. One step = zeroed gradients, the two-cache step
//! (loss and every gradient); the optimizer is left out on both sides.
//!
//! Prints one JSON line: median step seconds after one warm-up step, peak
//! resident memory (VmHWM) before the first step and at the end. With
//! `--write-triples FILE` it first writes the triples as JSONL for the peer.
//! Run by `benchmarks/peers/cmnrl.sh`.

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::Parser;
use gradcache::models::encoders::{BertImplementation, TextEncoderConfig};
use gradcache::models::heads::CosineHeadConfig;
use gradcache::models::pretrained::ModelDir;
use gradcache::{GradCache, InfoNce, StepConfig, Targets};
use tch::{nn, Device};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = gradcache::models::pretrained::EMBEDDED_MODEL_DIR)]
    model: std::path::PathBuf,
    #[arg(long, default_value = gradcache::app::data::wordnet::EMBEDDED_TASK_DIR)]
    data: std::path::PathBuf,
    /// Queries per batch; each brings a positive and a hard negative.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Texts per encoder chunk (their `mini_batch_size`).
    #[arg(long, default_value_t = 16)]
    chunk: usize,
    /// Measured steps, after one warm-up step.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    threads: i32,
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// rust-bert's BERT layers instead of gradcache's fused ones (the default).
    #[arg(long)]
    rust_bert: bool,
    /// Write the batch's triples as JSONL (`query`, `positive`, `negative`).
    #[arg(long)]
    write_triples: Option<std::path::PathBuf>,
    /// The step's memory plan as JSON (`StepConfig.memory`), e.g.
    /// '{"budget_mb": 400}'.
    #[arg(long, default_value = r#"{"recompute": "all"}"#)]
    memory: String,
    /// Chunk and block sizes chosen from the budget (`StepConfig.auto_sizes`).
    #[arg(long)]
    auto_sizes: bool,
    /// Cut both sides' chunks by this many padded tokens instead of
    /// `--chunk` items (`StepConfig.query_chunk_tokens`/`passage_chunk_tokens`).
    #[arg(long)]
    chunk_tokens: Option<usize>,
    /// `f32` or `bf16` (autocast, `StepConfig.precision`): the peer's
    /// `--precision bf16` is `torch.autocast("cpu", torch.bfloat16)`.
    #[arg(long, default_value = "f32")]
    precision: gradcache::runtime::precision::Precision,
}

fn main() -> Result<()> {
    gradcache::runtime::tune_allocator();
    let a = Args::parse();
    if a.steps == 0 || a.batch == 0 || a.chunk == 0 {
        bail!("--steps, --batch and --chunk must be at least 1");
    }
    tch::set_num_threads(a.threads);
    tch::manual_seed(0);
    let triples = gradcache::app::data::wordnet::WordSenseData::read(&a.data)?.hard_negative_triples(a.batch);
    if triples.len() < a.batch {
        anyhow::bail!("only {} training examples with a hard negative", triples.len());
    }
    if let Some(path) = &a.write_triples {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?);
        for (q, p, n) in &triples {
            writeln!(f, "{}", serde_json::json!({"query": q, "positive": p, "negative": n}))?;
        }
        f.flush()?;
    }

    let model = ModelDir::open(&a.model)?;
    let tok = model.tokenizer(a.max_len)?;
    let queries: Vec<&str> = triples.iter().map(|t| t.0.as_str()).collect();
    // Passages grouped per query: [positive, negative] for each.
    let passages: Vec<&str> = triples.iter().flat_map(|t| [t.1.as_str(), t.2.as_str()]).collect();
    let (q, p) = (tok.encode(&queries)?, tok.encode(&passages)?);
    let targets = Targets::grouped(a.batch, 2 * a.batch, 2)?;

    let vs = nn::VarStore::new(Device::Cpu);
    let implementation = if a.rust_bert { BertImplementation::RustBert } else { BertImplementation::Fused };
    let (encoder, _) = TextEncoderConfig { implementation, ..Default::default() }.init_pretrained(&vs, "encoder", &model)?;
    // τ = 1/20: their default scale.
    let head = CosineHeadConfig { initial_temperature: 0.05 }.init(&(vs.root() / "head"))?;
    let loss = InfoNce { temperature: 1.0, symmetric: false };
    // Like theirs: `chunk` query rows against every passage at once.
    let config = StepConfig {
        layout: gradcache::Layout {
            query_chunk_size: a.chunk,
            passage_chunk_size: a.chunk,
            head_block_queries: a.chunk,
            head_block_passages: 2 * a.batch,
        },
        memory: serde_json::from_str(&a.memory).with_context(|| format!("--memory {}", a.memory))?,
        auto_sizes: a.auto_sizes,
        query_chunk_tokens: a.chunk_tokens,
        passage_chunk_tokens: a.chunk_tokens,
        precision: a.precision,
        ..StepConfig::default()
    };
    let mut gc = GradCache::tied(config, &encoder, &head, &loss)?;
    let before_mb = gradcache::runtime::peak_resident_mb()?;
    let (mut times, mut losses, mut rates) = (Vec::new(), Vec::new(), Vec::new());
    let (mut plan, mut flops) = (serde_json::Value::Null, None);
    for step in 0..=a.steps {
        gradcache::check::zero_grads(&vs);
        let t = std::time::Instant::now();
        let out = gc.step(&q, &p, &targets)?;
        if step > 0 {
            times.push(t.elapsed().as_secs_f64());
            rates.push(out.flops.gflops_per_second(&out.timings));
        }
        losses.push(out.loss);
        plan = out.plan_json();
        flops = out.flops.total();
    }
    times.sort_by(f64::total_cmp);
    let median = gradcache::core::output::PassFlops::median(&rates);
    let gflop_s = serde_json::json!({
        "representation": median.representation, "score": median.score, "head": median.head, "encoder": median.encoder,
        "step": flops.map(|f| f / times[times.len() / 2] / 1e9),
    });
    println!(
        "{}",
        serde_json::json!({
            "impl": "gradcache two-cache", "layers": if a.rust_bert { "rust-bert" } else { "fused" }, "batch": a.batch, "chunk": a.chunk, "threads": a.threads,
            "median_s": times[times.len() / 2], "peak_mb": gradcache::runtime::peak_resident_mb()?, "before_step_mb": before_mb,
            "first_loss": losses[0], "steps": times.len(), "memory": serde_json::from_str::<serde_json::Value>(&a.memory)?, "auto_sizes": a.auto_sizes, "plan": plan,
            "chunk_tokens": a.chunk_tokens, "step_gflop": flops.map(|f| f / 1e9), "gflop_s": gflop_s,
            "precision": format!("{:?}", a.precision).to_lowercase(),
        })
    );
    Ok(())
}
