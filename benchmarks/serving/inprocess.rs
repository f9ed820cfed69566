//! The ceiling for `gradcache serve`: the same /rerank requests answered
//! by `Scorer::rerank` in process, one after another (the server's model
//! thread runs one batch at a time too). Prints one JSON line: pairs/s and
//! the p50/p99 latency per request. Run by `benchmarks/serving/serve_bench.sh`.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The bundle.
    #[arg(long)]
    model: std::path::PathBuf,
    /// The request body (`{"query", "texts"}`), as the load generator sends it.
    #[arg(long)]
    body: std::path::PathBuf,
    /// Seconds to run.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// libtorch's threads (the server uses libtorch's default).
    #[arg(long)]
    threads: Option<i32>,
}

fn main() -> Result<()> {
    gradcache::runtime::tune_allocator();
    let a = Args::parse();
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    let body: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&a.body)?)?;
    let query = body["query"].as_str().unwrap_or_default().to_string();
    let texts: Vec<String> = serde_json::from_value(body["texts"].clone())?;
    let scorer = gradcache::Scorer::load(&a.model, tch::Device::Cpu)?;
    scorer.rerank(&query, &texts)?; // warm-up
    let (started, mut latencies) = (Instant::now(), Vec::new());
    while started.elapsed() < Duration::from_secs_f64(a.seconds) {
        let t = Instant::now();
        scorer.rerank(&query, &texts)?;
        latencies.push(t.elapsed().as_secs_f64());
    }
    let wall = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{}",
        serde_json::json!({
            "mode": "in process (Scorer::rerank)", "concurrency": 1, "requests": latencies.len(), "seconds": wall,
            "pairs_per_s": (latencies.len() * texts.len()) as f64 / wall, "p50_ms": 1e3 * at(0.5), "p99_ms": 1e3 * at(0.99),
        })
    );
    Ok(())
}
