#!/usr/bin/env bash
# The memory budget's trade-off: step time and peak memory of the two-cache
# step from "recompute all" (the default) through budgets to "retain all",
# beside the full-batch step ("recompute none" = each side in one chunk,
# every block kept; "retain every chunk and block" keeps the configured
# chunks); small BERT (`reproduce_extension probe`'s model: 2 layers,
# width 128, 16 tokens), 2 passages per query, chunks of 16, blocks of
# 16 x 64; each configuration in its own process. A budget below what the
# step needs is recorded with the error it gets. The full-batch step and
# "retain all" are skipped where they would not fit in this machine's
# memory (SKIP_WHOLE, "head:batch" pairs). Writes
# docs/results/budget_sweep.{jsonl,md,png}.
#
#   benchmarks/budget/sweep.sh     (HEADS="dot mlp interaction" BATCHES="256 1024" STEPS=2)
set -uo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh setup-bench || exit 1
cargo build --release --example reproduce_extension || exit 1
bin=./target/release/examples/reproduce_extension
heads="${HEADS:-dot mlp interaction}"; batches="${BATCHES:-256 1024}"; steps="${STEPS:-2}"
# The interaction block at 1024 queries takes minutes per step on 2 cores.
skip="${SKIP:-interaction:1024}"
skip_whole="${SKIP_WHOLE:-mlp:1024 interaction:1024}"
out=docs/results/budget_sweep.jsonl
: > "$out.tmp"
run() {
    local label="$1"; shift
    echo "[budget_sweep] $label" >&2
    local err
    err=$(mktemp)
    if ! RUST_BACKTRACE=0 "$bin" probe "$@" >> "$out.tmp" 2> "$err"; then
        ./.python -c 'import json, sys; print(json.dumps({"head": sys.argv[1], "batch": int(sys.argv[2]), "memory": json.loads(sys.argv[3]), "error": [l for l in open(sys.argv[4]).read().splitlines() if l.startswith("Error")][-1]}))' \
            "$head" "$batch" "$memory" "$err" >> "$out.tmp"
    fi
    rm -f "$err"
}
for head in $heads; do
    for batch in $batches; do
        [[ " $skip " == *" $head:$batch "* ]] && continue
        common=(--batch "$batch" --head "$head" --steps "$steps")
        whole=1; [[ " $skip_whole " == *" $head:$batch "* ]] && whole=0
        memory='{"recompute": "all"}'
        [ $whole = 1 ] && run "$head $batch full batch" --method full "${common[@]}"
        run "$head $batch recompute all" --method two-cache "${common[@]}"
        for budget in ${BUDGETS:-50 100 200 400 800 1600 3200 6400}; do
            memory="{\"budget_mb\": $budget}"
            run "$head $batch budget $budget" --method two-cache --memory "$memory" "${common[@]}"
        done
        if [ $whole = 1 ]; then
            memory='{"retain": {"query_chunks": 1000000, "passage_chunks": 1000000, "head_blocks": 1000000}}'
            run "$head $batch retain every chunk and block" --method two-cache --memory "$memory" "${common[@]}"
            memory='{"recompute": "none"}'
            run "$head $batch recompute none" --method two-cache --memory "$memory" "${common[@]}"
        fi
    done
done
mv "$out.tmp" "$out"
./.python benchmarks/budget/sweep_report.py "$out" "benchmarks/budget/sweep.sh (HEADS=\"$heads\" BATCHES=\"$batches\" STEPS=$steps)" \
    docs/results/budget_sweep.png > docs/results/budget_sweep.md
cat docs/results/budget_sweep.md
