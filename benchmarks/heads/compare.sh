#!/usr/bin/env bash
# Trains each named head configuration (benchmarks/heads/NAME.json, layered
# over train_reranker's defaults: the main job's budget) once per seed, and
# evaluates it on a WordNet split. Results: runs/heads/SPLIT/NAME/seed-S/.
# Then benchmarks/heads/compare_report.py summarises them (mean ± sd over seeds).
#
#   benchmarks/heads/compare.sh cosine max_sim mlp_residual   # dev, seeds 0 1 2
#   SPLIT=test SEEDS="0 1 2" benchmarks/heads/compare.sh mlp_residual
#   EXTRA="--steps 20" RUNS=runs/heads-short benchmarks/heads/compare.sh cosine
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
scripts/gradcache.sh setup
cargo build --release --example train_reranker
# A copy, so that rebuilding while the runs go on does not change them.
bin="$(mktemp -d)/train_reranker"
cp target/release/examples/train_reranker "$bin"
split="${SPLIT:-dev}"
runs="${RUNS:-runs/heads}"
for name in "$@"; do
    config="benchmarks/heads/$name.json"
    [ -f "$config" ] || { echo "no such configuration: $config" >&2; exit 2; }
    for seed in ${SEEDS:-0 1 2}; do
        out="$runs/$split/$name/seed-$seed"
        if [ -f "$out/results.json" ] && [ -z "${AGAIN:-}" ]; then
            echo "[heads] $out done already (AGAIN=1 to redo)"
            continue
        fi
        mkdir -p "$(dirname "$out")"
        echo "[heads] $(date -u +%H:%M:%S) $name seed $seed -> $out"
        # shellcheck disable=SC2086
        "$bin" --config "$config" --seed "$seed" --eval-split "$split" --output-dir "$out" --quiet ${EXTRA:-} > "$out.log" 2>&1 \
            || { echo "[heads] $name seed $seed failed: see $out.log" >&2; tail -5 "$out.log" >&2; }
    done
done
