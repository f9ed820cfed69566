//! Rerank latency of a gradcache model as a reranker is used (#24): for
//! each of the first `--queries` queries of a BEIR folder, its top 100
//! candidates from a first stage's TREC run (the same candidates the
//! cross-encoder reranks, benchmarks/heads/st_cross_encoder_rerank.py) are
//! scored by the model, one query at a time on `--threads` threads:
//!
//! - `cached`: the candidates' representations were computed beforehand
//!   (as an index holds them); the time is encoding the query and the
//!   head's scores against the 100 representations;
//! - `cold`: encoding the 100 candidates too.
//!
//! Latency does not depend on the weights, so `--config` (a
//! benchmarks/heads/NAME.json) builds the model with a fresh head over the
//! pretrained encoder; `--model` takes a trained bundle instead. Prints one
//! JSON line: the median milliseconds per query of each, and the process's
//! peak resident memory. Run by benchmarks/serving/rerank_latency.sh.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use gradcache::app::recipe::RerankerConfig;
use gradcache::models::pretrained::ModelDir;
use gradcache::Scorer;

#[derive(Parser)]
struct Args {
    /// A heads configuration (benchmarks/heads/NAME.json) over the
    /// pretrained encoder.
    #[arg(long, conflicts_with = "model")]
    config: Option<std::path::PathBuf>,
    /// A trained bundle.
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// The BEIR folder.
    #[arg(long)]
    data: std::path::PathBuf,
    #[arg(long, default_value = "dev")]
    split: String,
    /// The first stage's TREC run (its top `--k` per query are scored).
    #[arg(long)]
    run: std::path::PathBuf,
    #[arg(long, default_value_t = 100)]
    k: usize,
    #[arg(long, default_value_t = 20)]
    queries: usize,
    #[arg(long, default_value_t = 2)]
    threads: i32,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    gradcache::runtime::tune_allocator();
    let a = Args::parse();
    tch::set_num_threads(a.threads);
    let (scorer, name) = match (&a.config, &a.model) {
        (Some(path), None) => {
            let c = RerankerConfig::read(path)?;
            let model = ModelDir::open(&c.model_dir)?;
            (Scorer::from_pretrained(c.model_config(), &model, tch::Device::Cpu)?, path.display().to_string())
        }
        (None, Some(path)) => (Scorer::load(path, tch::Device::Cpu)?, path.display().to_string()),
        _ => anyhow::bail!("give --config or --model"),
    };
    let (set, _) = gradcache::app::data::beir::read_beir(&a.data, &a.split, gradcache::app::data::Malformed::Fail)?;
    let docs: HashMap<&str, &str> = set.corpus.iter().map(|(id, t)| (id.as_str(), t.as_str())).collect();
    let mut candidates: HashMap<String, Vec<(usize, String)>> = HashMap::new();
    for line in std::fs::read_to_string(&a.run)?.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        anyhow::ensure!(f.len() == 6, "not a TREC run line: {line}");
        candidates.entry(f[0].to_string()).or_default().push((f[3].parse()?, f[2].to_string()));
    }
    let (mut cached, mut cold) = (Vec::new(), Vec::new());
    let chosen: Vec<&(String, String)> = set.queries.iter().filter(|(q, _)| candidates.contains_key(q)).take(a.queries + 1).collect();
    for (n, (qid, query)) in chosen.iter().enumerate() {
        let mut c = candidates[qid].clone();
        c.sort();
        let texts: Vec<&str> = c.iter().take(a.k).map(|(_, d)| docs[d.as_str()]).collect();
        let t = Instant::now();
        let passages = scorer.encode_passages(&texts)?;
        let encode_passages = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let q = scorer.encode_queries(&[query.as_str()])?;
        let scores = scorer.score_representations(&q, &passages)?;
        anyhow::ensure!(scores.size() == [1, texts.len() as i64]);
        let head = t.elapsed().as_secs_f64();
        if n > 0 {
            // The first query warms up.
            cached.push(1e3 * head);
            cold.push(1e3 * (head + encode_passages));
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "model": name, "queries": cached.len(), "candidates": a.k, "threads": a.threads,
            "cached_ms_per_query": median(cached), "cold_ms_per_query": median(cold), "peak_mb": gradcache::runtime::peak_resident_mb()?,
        })
    );
    Ok(())
}
