//! The distributed step on this machine: MiniLM with the MLP head on the
//! WordNet (query, positive, hard negative) triples, one global batch, run
//! either as one process (`gradcache::GradCache::step`) or as each of the
//! processes of `mpirun -np R` (`distributed_step` over its share). Every
//! process prints one JSON line: median step seconds after one warm-up
//! step, peak resident memory (VmHWM), and per step the time inside
//! collectives, the bytes it sent and the calls. Run by
//! `benchmarks/distributed/bench.sh`.

use anyhow::{bail, Result};
use clap::Parser;
use gradcache::models::encoders::TextEncoderConfig;
use gradcache::models::heads::MlpHeadConfig;
use gradcache::models::pretrained::ModelDir;
use gradcache::{Chunk, GradCache, InfoNce, StepConfig, Targets};
use tch::{nn, Device};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = gradcache::models::pretrained::EMBEDDED_MODEL_DIR)]
    model: std::path::PathBuf,
    #[arg(long, default_value = gradcache::app::data::wordnet::EMBEDDED_TASK_DIR)]
    data: std::path::PathBuf,
    /// Queries in the global batch; each brings a positive and a hard negative.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 16)]
    chunk: usize,
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Threads per process.
    #[arg(long, default_value_t = 1)]
    threads: i32,
}

fn main() -> Result<()> {
    gradcache::runtime::tune_allocator();
    let a = Args::parse();
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let world = gradcache::core::distributed::launched()?;
    let (rank, ranks) = (world.rank(), world.world_size());
    if a.batch % ranks != 0 {
        bail!("--batch must divide evenly among the {ranks} processes here");
    }
    tch::set_num_threads(a.threads);
    tch::manual_seed(0);
    let triples = gradcache::app::data::wordnet::WordSenseData::read(&a.data)?.hard_negative_triples(a.batch);
    if triples.len() < a.batch {
        anyhow::bail!("only {} training examples with a hard negative", triples.len());
    }
    let model = ModelDir::open(&a.model)?;
    let tok = model.tokenizer(64)?;
    let queries: Vec<&str> = triples.iter().map(|t| t.0.as_str()).collect();
    let passages: Vec<&str> = triples.iter().flat_map(|t| [t.1.as_str(), t.2.as_str()]).collect();
    let (q, p) = (tok.encode(&queries)?, tok.encode(&passages)?);
    let targets = Targets::grouped(a.batch, 2 * a.batch, 2)?;
    let share = a.batch / ranks;
    let (local_q, local_p) = (q.chunk(rank * share, share)?, p.chunk(2 * rank * share, 2 * share)?);

    let vs = nn::VarStore::new(Device::Cpu);
    let (encoder, _) = TextEncoderConfig::default().init_pretrained(&vs, "encoder", &model)?;
    let head = MlpHeadConfig { dim: 384, hidden: 256, dropout: 0.1, ..MlpHeadConfig::default() }.init(&(vs.root() / "head"))?;
    let loss = InfoNce { temperature: 1.0, symmetric: false };
    let config = StepConfig {
        layout: gradcache::Layout {
            query_chunk_size: a.chunk,
            passage_chunk_size: a.chunk,
            head_block_queries: 16,
            head_block_passages: 64,
        },
        ..StepConfig::default()
    };
    let mut gc = GradCache::tied(config, &encoder, &head, &loss)?;
    let before_mb = gradcache::runtime::peak_resident_mb()?;
    let (mut times, mut losses, mut score_s, mut head_s) = (Vec::new(), Vec::new(), 0.0, 0.0);
    let mut traffic_before = world.traffic();
    for step in 0..=a.steps {
        gradcache::check::zero_grads(&vs);
        tch::manual_seed(step as i64);
        let t = std::time::Instant::now();
        let out =
            if ranks == 1 { gc.step(&q, &p, &targets)? } else { gc.distributed_step(&local_q, &local_p, &targets, &vs, world.as_ref())? };
        if step > 0 {
            times.push(t.elapsed().as_secs_f64());
            score_s += out.timings.score.as_secs_f64() / a.steps as f64;
            head_s += out.timings.head.as_secs_f64() / a.steps as f64;
        } else {
            traffic_before = world.traffic();
        }
        losses.push(out.loss);
    }
    let traffic = world.traffic();
    let steps = a.steps as f64;
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "processes": ranks, "rank": rank, "threads": a.threads, "batch": a.batch, "chunk": a.chunk,
            "median_s": times[times.len() / 2], "peak_mb": gradcache::runtime::peak_resident_mb()?, "before_step_mb": before_mb,
            "collective_s_per_step": (traffic.time - traffic_before.time).as_secs_f64() / steps,
            "sent_mb_per_step": (traffic.bytes_sent - traffic_before.bytes_sent) as f64 / steps / 1048576.0,
            "calls_per_step": (traffic.calls - traffic_before.calls) as f64 / steps,
            "score_pass_s": score_s, "head_pass_s": head_s,
            "losses": losses,
        })
    );
    Ok(())
}
