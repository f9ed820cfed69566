#!/usr/bin/env bash
# Rerank latency per query for 100 candidates, 2 threads, of gradcache's
# models (a fresh head over the pretrained MiniLM: latency does not depend
# on the weights; passages cached as an index holds them, and cold) and of
# the cross-encoder (cold: it caches nothing), on the same queries and
# candidates: the first 20 WordNet dev queries and the pretrained first
# stage's top 100 (both from benchmarks/heads/cross_encoder.sh, which must have
# run). Each configuration in its own process, interleaved over ROUNDS
# rounds; one JSON line each in docs/results/cross_encoder/latency.jsonl.
#
#   benchmarks/serving/rerank_latency.sh [ROUNDS]   (CONFIGS="cosine max_sim mlp_residual_gate300 interaction_layer", CE=runs/cross_encoder/ce-s0/model)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet --example serving_rerank_latency
runs=runs/cross_encoder
data="$runs/wordnet-beir/dev"
run="$runs/first-pretrained-dev/run.trec"
ce="${CE:-$runs/ce-s0/model}"
out=docs/results/cross_encoder/latency.jsonl
[ -f "$run" ] && [ -d "$ce" ] || { echo "run benchmarks/heads/cross_encoder.sh first" >&2; exit 2; }
: > "$out.tmp"
for round in $(seq "${1:-3}"); do
    for name in ${CONFIGS:-cosine max_sim mlp_residual_gate300 interaction_layer}; do
        echo "[latency] round $round $name" >&2
        target/release/examples/serving_rerank_latency --config "benchmarks/heads/$name.json" --data "$data" --run "$run" --queries 20 >> "$out.tmp"
    done
    echo "[latency] round $round cross-encoder" >&2
    ./.python benchmarks/heads/st_cross_encoder_rerank.py --model "$ce" --data "$data" --run "$run" --latency-only --latency-queries 20 \
        --tag "latency round $round" 2>/dev/null >> "$out.tmp"
done
mv "$out.tmp" "$out"
cat "$out"
