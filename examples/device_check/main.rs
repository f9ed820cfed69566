//! The device check (examples/device_check/harness.rs): exactness, replay, step
//! time and memory, bf16 autocast and a few training steps on one device;
//! writes `report.json` and `report.md`.
//!
//!   cargo run --release --example device_check -- --device cuda --out docs/results/gpu
//!   cargo run --release --example device_check -- --device cpu --quick --out /tmp/device-check
//!
//! On a GPU machine without a Rust toolchain, `scripts/gradcache.sh
//! device-build` builds this binary against another libtorch (docs/gpu.md).
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
mod harness;

use harness::{run, DeviceCheckConfig};

#[derive(Parser)]
struct Args {
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Small model and batches (minutes on a CPU): checks the recipe, not
    /// the device.
    #[arg(long)]
    quick: bool,
    /// Largest batch (queries) of the scaling sweep.
    #[arg(long)]
    max_batch: Option<usize>,
    /// Seconds after which the scaling sweep starts nothing new.
    #[arg(long)]
    scaling_seconds: Option<f64>,
    /// Where report.json and report.md go (created; files replaced).
    #[arg(long, default_value = "device-check")]
    out: PathBuf,
}

fn main() -> Result<()> {
    gradcache::runtime::tune_allocator();
    let a = Args::parse();
    let device = gradcache::runtime::parse_device(&a.device)?;
    let mut config = DeviceCheckConfig::new(device);
    config.quick = a.quick;
    if a.quick {
        config.max_batch = 32;
    }
    if let Some(b) = a.max_batch {
        config.max_batch = b;
    }
    if let Some(s) = a.scaling_seconds {
        config.scaling_seconds = s;
    }
    let report = run(&config, &mut |line| eprintln!("[device_check] {line}"))?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let json = serde_json::to_string_pretty(&report)?;
    let markdown = report.to_markdown();
    for (name, text) in [("report.json", &json), ("report.md", &markdown)] {
        gradcache::models::weights::write_atomically(&a.out.join(name), |tmp| {
            std::fs::write(tmp, text).map_err(|source| gradcache::GradCacheError::Io { path: tmp.to_path_buf(), source })
        })?;
    }
    println!("{}", report.to_markdown());
    println!("report in {}", a.out.display());
    if !report.passed {
        anyhow::bail!("the device check FAILED (see {})", a.out.join("report.md").display());
    }
    Ok(())
}
