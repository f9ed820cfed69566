#!/usr/bin/env bash
# The memory budget against sentence-transformers' CachedMNRL on the same
# work as benchmarks/peers/cmnrl.sh (MiniLM, WordNet triples, chunk 16, 2
# threads). Per batch and round: theirs first; then ours with every chunk
# recomputed (the default), and ours under two budgets derived from their
# measured peak P and our resident set B before the first step: P - B (our
# peak no higher than theirs) and 0.7 P - B (our peak at most 70% of theirs),
# each at chunk 16 and with sizes chosen from the budget (--auto-sizes),
# each in its own process. Writes docs/results/peer_budget.{jsonl,md}.
#
#   benchmarks/peers/budget.sh [ROUNDS]      (BATCHES="32 128 256" CHUNK=16)
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh setup-bench
cargo build --release --example peers_cmnrl
rounds="${1:-1}"; batches="${BATCHES:-32 128 256}"; chunk="${CHUNK:-16}"
bin=./target/release/examples/peers_cmnrl
out=docs/results/peer_budget.jsonl
triples=$(mktemp)
trap 'rm -f "$triples"' EXIT
: > "$out.tmp"
field() { ./.python -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
for round in $(seq "$rounds"); do
    for batch in $batches; do
        echo "[peer_budget] round $round batch $batch" >&2
        ours=$("$bin" --batch "$batch" --chunk "$chunk" --write-triples "$triples")
        theirs=$(./.python benchmarks/peers/st_cmnrl.py --triples "$triples" --chunk "$chunk" 2>/dev/null)
        echo "$theirs" >> "$out.tmp"
        echo "$ours" >> "$out.tmp"
        p=$(field "$theirs" peak_mb); b=$(field "$ours" before_step_mb)
        for share in 1.0 0.7; do
            budget=$(./.python -c "print(round($share * $p - $b, 1))")
            echo "[peer_budget]   budget $budget MB (${share} x their peak $p MB - our $b MB before the step)" >&2
            for sizes in "" --auto-sizes; do
                auto=false; [ -n "$sizes" ] && auto=true
                if ! "$bin" --batch "$batch" --chunk "$chunk" --memory "{\"budget_mb\": $budget}" $sizes >> "$out.tmp"; then
                    echo "{\"impl\": \"gradcache two-cache\", \"batch\": $batch, \"memory\": {\"budget_mb\": $budget}, \"auto_sizes\": $auto, \"error\": \"budget below the step's need\"}" >> "$out.tmp"
                fi
            done
        done
    done
done
mv "$out.tmp" "$out"
./.python benchmarks/peers/budget_report.py "$out" "benchmarks/peers/budget.sh $rounds (BATCHES=\"$batches\" CHUNK=$chunk)" > docs/results/peer_budget.md
cat docs/results/peer_budget.md
