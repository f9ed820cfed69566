#!/usr/bin/env bash
# The main job's quality in bf16 against f32 (#33): the recipe's default
# head (benchmarks/heads/mlp_residual_gate300.json) in both precisions and
# the fine-tuned bi-encoder (cosine) baseline in bf16, 3 seeds each, 100
# steps, dev (300 queries) and test (300 queries) evaluated in f32.
# Runs in runs/precision/NAME-PRECISION/seed-S; the table goes to
# docs/results/precision/quality.md (benchmarks/heads/precision_quality_report.py).
#
#   benchmarks/heads/precision_quality.sh        (RUNS="mlp_residual_gate300:bf16 mlp_residual_gate300:f32 cosine:bf16")
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh setup >&2
cargo build --release --quiet --example train_reranker
bin="$(mktemp -d)/train_reranker"
cp target/release/examples/train_reranker "$bin"
for run in ${RUNS:-mlp_residual_gate300:bf16 mlp_residual_gate300:f32 cosine:bf16}; do
    name=${run%%:*}; precision=${run##*:}
    for seed in ${SEEDS:-0 1 2}; do
        out=runs/precision/$name-$precision/seed-$seed
        [ -f "$out/results.json" ] && [ -z "${AGAIN:-}" ] && continue
        mkdir -p "$(dirname "$out")"
        echo "[precision_quality] $(date -u +%H:%M:%S) $name $precision seed $seed" >&2
        "$bin" --config "benchmarks/heads/$name.json" --seed "$seed" --precision "$precision" --test-queries 300 \
            --output-dir "$out" --overwrite --quiet > "$out.log" 2>&1
    done
done
mkdir -p docs/results/precision
python3 benchmarks/heads/precision_quality_report.py runs/precision > docs/results/precision/quality.md
cat docs/results/precision/quality.md
