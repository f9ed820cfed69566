#!/usr/bin/env bash
# Step time and peak memory per method × batch size × head, each in its own
# process (`reproduce_extension probe`). Writes docs/results/step_bench.{jsonl,csv,md}.
#
#   benchmarks/step/bench.sh [--quick]
#
# Full batch, accumulation and the representation cache only run up to
# FULL_MAX queries (they hold the whole batch's encoder or head graph); the
# two-cache step runs every size.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh setup-bench
cargo build --release --example reproduce_extension
bin=./target/release/examples/reproduce_extension
if [ "${1:-}" = "--quick" ]; then
    heads="dot mlp"; batches="16 32 64 128"; full_max=64; steps=2
else
    heads="${HEADS:-dot mlp max_sim interaction}"; batches="${BATCHES:-16 32 64 128 256 512 1024}"; full_max="${FULL_MAX:-256}"; steps="${STEPS:-3}"
fi
out=docs/results/step_bench.jsonl
: > "$out.tmp"
for head in $heads; do
    for batch in $batches; do
        for method in full accumulation rep-cache two-cache; do
            if [ "$method" != two-cache ] && [ "$batch" -gt "$full_max" ]; then continue; fi
            echo "[step_bench] $head $method batch $batch" >&2
            "$bin" probe --method "$method" --batch "$batch" --head "$head" --steps "$steps" >> "$out.tmp"
        done
    done
done
mv "$out.tmp" "$out"
./.python benchmarks/step/bench_report.py "$out" "benchmarks/step/bench.sh $*"
