//! Peak memory of the first retrieval stage against corpus size: the
//! streaming top-k (`retrieval::first_stage_streamed`, passages generated
//! block by block) against materialising every passage vector and the
//! whole `[Q, C]` score matrix. One corpus size and method per process
//! (peak resident set is per process); `benchmarks/serving/retrieval_memory.sh`
//! runs the grid and writes docs/results/retrieval_memory.md.
//!
//!     cargo run --release --example serving_retrieval_memory -- --passages 100000 --method streaming
//!
//! The encoder is a small randomly initialised BERT (MiniLM's vocabulary,
//! width 64, 2 layers) and the texts are synthetic: the memory curve, not
//! retrieval quality, is measured.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use gradcache::app::retrieval::{first_stage_block, first_stage_streamed, first_stage_vectors};
use gradcache::app::scorer::ModelConfig;
use gradcache::models::encoders::TextEncoderConfig;
use gradcache::models::heads::{CosineHeadConfig, HeadConfig};
use gradcache::models::pretrained::ModelDir;
use gradcache::runtime::peak_resident_mb;
use gradcache::Layout;
use gradcache::Scorer;
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    passages: usize,
    /// streaming or full.
    #[arg(long, default_value = "streaming", value_parser = ["streaming", "full"])]
    method: String,
    #[arg(long, default_value_t = 100)]
    queries: usize,
    #[arg(long, default_value_t = 100)]
    k: usize,
    #[arg(long, default_value = gradcache::models::pretrained::EMBEDDED_MODEL_DIR)]
    vocab_from: std::path::PathBuf,
    #[arg(long, default_value_t = 2)]
    threads: i32,
}

/// Text `i`: 12 words of the vocabulary picked by a hash of `i` (the same
/// text for the same index in every process).
fn text(words: &[String], i: usize, salt: u64) -> String {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
    (0..12)
        .map(|_| {
            x ^= x >> 33;
            x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
            x ^= x >> 29;
            words[(x % words.len() as u64) as usize].as_str()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> Result<()> {
    gradcache::runtime::tune_allocator();
    let args = Args::parse();
    tch::set_num_threads(args.threads);
    let dir = std::env::temp_dir().join(format!("gradcache-bench-retrieval-{}", std::process::id()));
    let base = ModelDir::open(&args.vocab_from).context("run scripts/gradcache.sh setup")?;
    let model = gradcache::models::encoders::write_random_bert(&base, &dir, 64, 4, 2, 0)?;
    let words: Vec<String> = std::fs::read_to_string(dir.join("vocab.txt"))?
        .lines()
        .filter(|w| w.chars().all(|c| c.is_ascii_lowercase()) && w.len() > 2)
        .map(str::to_string)
        .collect();
    let layout = Layout { query_chunk_size: 64, passage_chunk_size: 256, head_block_queries: 64, head_block_passages: 256 };
    let config = ModelConfig::new(TextEncoderConfig::default(), 32, true, HeadConfig::Cosine(CosineHeadConfig::default()), layout);
    let scorer = Scorer::from_pretrained(config, &model, Device::Cpu)?;
    let queries: Vec<String> = (0..args.queries).map(|i| text(&words, i, 1)).collect();
    let before = peak_resident_mb()?;
    let started = Instant::now();
    let block = first_stage_block(&scorer);
    let n = args.passages;
    let best_first: f64 = if args.method == "streaming" {
        let blocks = (0..n).step_by(block).map(|s| Ok((s..(s + block).min(n)).map(|i| text(&words, i, 2)).collect::<Vec<_>>()));
        let ranked = first_stage_streamed(&scorer, &queries, blocks, n, args.k, &mut |_, _, _| {})?;
        ranked[0][0].1
    } else {
        // Every passage vector, then the whole score matrix.
        let mut parts = Vec::new();
        for s in (0..n).step_by(block) {
            let texts: Vec<String> = (s..(s + block).min(n)).map(|i| text(&words, i, 2)).collect();
            parts.push(first_stage_vectors(&scorer.encode_passages(&texts)?)?);
        }
        let corpus = Tensor::f_cat(&parts, 0)?;
        drop(parts);
        let q = first_stage_vectors(&scorer.encode_queries(&queries)?)?;
        let scores = q.f_matmul(&corpus.f_transpose(0, 1)?)?;
        let (top, _) = scores.f_topk(args.k as i64, 1, true, true)?;
        top.f_to_kind(Kind::Double)?.double_value(&[0, 0])
    };
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_resident_mb()?;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{}",
        serde_json::json!({
            "method": args.method, "passages": n, "queries": args.queries, "k": args.k,
            "peak_mb": peak, "before_mb": before, "seconds": seconds, "passages_per_s": n as f64 / seconds, "best_first_score": best_first,
        })
    );
    Ok(())
}
