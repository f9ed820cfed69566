#!/usr/bin/env bash
# gradcache's two-cache step next to sentence-transformers'
# CachedMultipleNegativesRankingLoss on the same work (MiniLM, the same
# WordNet triples, batch, chunk and 2 threads), each configuration in its own
# process, interleaved over ROUNDS rounds. (`bench_peer_cmnrl --rust-bert`
# runs rust-bert's BERT layers instead of gradcache's default fused ones.)
# Writes docs/results/peer_cmnrl.{jsonl,md}.
#
#   benchmarks/peer_cmnrl.sh [ROUNDS]      (BATCHES="32 128 512" CHUNK=16 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/gradcache.sh setup-bench
cargo build --release --example bench_peer_cmnrl
rounds="${1:-3}"; batches="${BATCHES:-32 128 512}"; chunk="${CHUNK:-16}"
bin=./target/release/examples/bench_peer_cmnrl
out=docs/results/peer_cmnrl.jsonl
triples=$(mktemp)
trap 'rm -f "$triples"' EXIT
: > "$out.tmp"
for round in $(seq "$rounds"); do
    for batch in $batches; do
        echo "[peer_cmnrl] round $round batch $batch" >&2
        "$bin" --batch "$batch" --chunk "$chunk" --write-triples "$triples" >> "$out.tmp"
        ./.python benchmarks/peers/st_cmnrl.py --triples "$triples" --chunk "$chunk" 2>/dev/null >> "$out.tmp"
    done
done
mv "$out.tmp" "$out"
./.python benchmarks/peer_report.py "$out" "benchmarks/peer_cmnrl.sh $rounds (BATCHES=\"$batches\" CHUNK=$chunk)" > docs/results/peer_cmnrl.md
cat docs/results/peer_cmnrl.md
