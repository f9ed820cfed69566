//! One configuration of the step benchmark in its own process (see
//! benchmarks/step_probe.rs); prints its JSON line. Run by
//! `benchmarks/step_bench.sh`.

use clap::Parser;

#[path = "step_probe.rs"]
mod step_probe;

fn main() -> anyhow::Result<()> {
    gradcache::runtime::tune_allocator();
    let args = step_probe::ProbeArgs::parse();
    println!("{}", step_probe::probe(&args)?);
    Ok(())
}
