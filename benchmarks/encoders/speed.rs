//! MiniLM forward+backward in train mode on one fixed batch, the work of one
//! encoder chunk: median seconds per step, minor page faults and system
//! time. `--rust-bert` runs rust-bert's layers instead of gradcache's fused
//! ones; `--no-tune-allocator` leaves glibc's defaults, to measure the fix in
//! `gradcache::runtime::tune_allocator`. Run by `benchmarks/encoders/speed.sh`
//! next to `benchmarks/encoders/hf_encoder.py` on the same work.

use anyhow::Result;
use clap::Parser;
use gradcache::models::encoders::{BertImplementation, TextEncoderConfig};
use gradcache::models::pretrained::ModelDir;
use gradcache::runtime::tune_allocator;
use gradcache::{Encoder, TokenBatch};
use tch::{nn, Device, Kind, Tensor};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = gradcache::models::pretrained::EMBEDDED_MODEL_DIR)]
    model: std::path::PathBuf,
    /// The model's name in the output row.
    #[arg(long, default_value = "MiniLM")]
    name: String,
    #[arg(long, default_value_t = 32)]
    batch: i64,
    #[arg(long, default_value_t = 64)]
    tokens: i64,
    #[arg(long, default_value_t = 14)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Keep glibc's default mmap/trim thresholds.
    #[arg(long)]
    no_tune_allocator: bool,
    /// Use rust-bert's BERT instead of gradcache's fused one.
    #[arg(long)]
    rust_bert: bool,
    /// Forward only, without a graph (the representation pass), still in
    /// train mode.
    #[arg(long)]
    forward_only: bool,
}

fn usage() -> (i64, f64) {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete rusage into the pointer.
    let u = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr());
        u.assume_init()
    };
    (u.ru_minflt, u.ru_stime.tv_sec as f64 + u.ru_stime.tv_usec as f64 * 1e-6)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tuned = !args.no_tune_allocator && tune_allocator();
    tch::set_num_threads(args.threads);
    tch::manual_seed(0);
    let model = ModelDir::open(&args.model)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let implementation = if args.rust_bert { BertImplementation::RustBert } else { BertImplementation::Fused };
    let (enc, _) = TextEncoderConfig { implementation, ..Default::default() }.init_pretrained(&vs, "encoder", &model)?;
    let ids = Tensor::randint_low(1000, 30000, [args.batch, args.tokens], (Kind::Int64, Device::Cpu));
    let batch = TokenBatch::new(ids, Tensor::ones([args.batch, args.tokens], (Kind::Int64, Device::Cpu)))?;
    let mut times = Vec::new();
    let mut start_usage = usage();
    for step in 0..args.steps + 2 {
        if step == 2 {
            start_usage = usage(); // after two warm-up steps
        }
        let t = std::time::Instant::now();
        if args.forward_only {
            tch::no_grad(|| enc.encode(&batch, true))?;
        } else {
            enc.encode(&batch, true)?.tensor().sum(Kind::Float).backward();
        }
        if step >= 2 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let end = usage();
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"model\": \"{}\", \"impl\": \"gradcache ({})\", \"pass\": \"{}\", \"allocator_tuned\": {tuned}, \"median_s\": {:.4}, \"minor_faults\": {}, \"system_s\": {:.2}, \"steps\": {}}}",
        args.name,
        if args.rust_bert { "rust-bert" } else { "fused" },
        if args.forward_only { "forward" } else { "forward+backward" },
        times[times.len() / 2],
        end.0 - start_usage.0,
        end.1 - start_usage.1,
        times.len()
    );
    Ok(())
}
