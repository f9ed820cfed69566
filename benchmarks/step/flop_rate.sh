#!/usr/bin/env bash
# This machine's f32 and bf16 matrix-multiply rates through libtorch on 2 threads, at
# MiniLM's layer shapes and at large squares (benchmarks/step/flop_rate.rs):
# docs/results/flop_rate.jsonl, what the step's achieved GFLOP/s are read
# against (docs/benchmarks.md). Run on a machine doing nothing else.
#
#   benchmarks/step/flop_rate.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh setup >&2
cargo build --release --quiet --example step_flop_rate
./target/release/examples/step_flop_rate --threads "${1:-2}" | tee docs/results/flop_rate.jsonl
