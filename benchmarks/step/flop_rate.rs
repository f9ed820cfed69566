//! This machine's dense f32 and bf16 matrix-multiply rates through libtorch, on the
//! step's threads: at the shapes of MiniLM's layers in a chunk of the main
//! job (rows = padded tokens of a chunk, 384 ↔ 1,536 wide) and at large
//! square shapes, where the kernels reach their peak. What the step's
//! achieved GFLOP/s (`gradcache train`'s last lines, `metrics.jsonl`'s
//! `gflop_s`) are read against. One JSON line per shape.
//!
//!   cargo run --release --example step_flop_rate -- --threads 2

use anyhow::Result;
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Seconds each shape is multiplied for (the best run is kept).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

fn main() -> Result<()> {
    let a = Args::parse();
    tch::set_num_threads(a.threads);
    let (d, ff) = (384, 1536);
    let mut shapes = Vec::new();
    // A chunk's padded tokens: 16 texts of the main job (about 20 tokens,
    // up to 48) and a token budget's larger chunks.
    for rows in [256, 768, 2048] {
        shapes.push(("layer: projection", (rows, d, d)));
        shapes.push(("layer: feed-forward up", (rows, d, ff)));
        shapes.push(("layer: feed-forward down", (rows, ff, d)));
    }
    shapes.push(("square", (1024, 1024, 1024)));
    shapes.push(("square", (2048, 2048, 2048)));
    for (what, (m, k, n)) in shapes {
        // Side by side: bf16 over f32 is what AMX (or avx512_bf16) gains.
        let f32 = gradcache::runtime::matmul_gflops(tch::Device::Cpu, (m, k, n), tch::Kind::Float, a.seconds)?.gflops;
        let bf16 = gradcache::runtime::matmul_gflops(tch::Device::Cpu, (m, k, n), tch::Kind::BFloat16, a.seconds)?.gflops;
        println!(
            "{}",
            serde_json::json!({"shape": [m, k, n], "what": what, "gflop_s": f32, "bf16_gflop_s": bf16, "bf16_over_f32": bf16 / f32, "threads": a.threads})
        );
    }
    Ok(())
}
