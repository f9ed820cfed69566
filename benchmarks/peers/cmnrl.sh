#!/usr/bin/env bash
# gradcache's two-cache step next to sentence-transformers'
# CachedMultipleNegativesRankingLoss on the same work (MiniLM, the same
# WordNet triples, batch, chunk and 2 threads), each configuration in its own
# process, interleaved over ROUNDS rounds. (`peers_cmnrl --rust-bert`
# runs rust-bert's BERT layers instead of gradcache's default fused ones.)
# Writes docs/results/peer_cmnrl.{jsonl,md} (OUT=PATH: PATH.{jsonl,md}).
#
# PRECISIONS="f32 bf16" runs each side in each precision (gradcache's
# --precision bf16, the peer's torch.autocast("cpu", torch.bfloat16)).
# TOKENS=N cuts gradcache's chunks by N padded tokens (its best setting)
# while the peer keeps mini-batches of CHUNK texts (its best).
#
#   benchmarks/peers/cmnrl.sh [ROUNDS]      (BATCHES="32 128 512" CHUNK=16 PRECISIONS=f32 by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh setup-bench
cargo build --release --example peers_cmnrl
rounds="${1:-3}"; batches="${BATCHES:-32 128 512}"; chunk="${CHUNK:-16}"; precisions="${PRECISIONS:-f32}"
bin=./target/release/examples/peers_cmnrl
name="${OUT:-docs/results/peer_cmnrl}"
out="$name.jsonl"
triples=$(mktemp)
trap 'rm -f "$triples"' EXIT
: > "$out.tmp"
for round in $(seq "$rounds"); do
    for batch in $batches; do
        for precision in $precisions; do
            echo "[peer_cmnrl] round $round batch $batch $precision" >&2
            "$bin" --batch "$batch" --chunk "$chunk" ${TOKENS:+--chunk-tokens "$TOKENS"} --precision "$precision" --write-triples "$triples" >> "$out.tmp"
            ./.python benchmarks/peers/st_cmnrl.py --triples "$triples" --chunk "$chunk" --precision "$precision" 2>/dev/null >> "$out.tmp"
        done
    done
done
mv "$out.tmp" "$out"
./.python benchmarks/peers/cmnrl_report.py "$out" "benchmarks/peers/cmnrl.sh $rounds (BATCHES=\"$batches\" CHUNK=$chunk${TOKENS:+ TOKENS=$TOKENS} PRECISIONS=\"$precisions\")" > "$name.md"
cat "$name.md"
