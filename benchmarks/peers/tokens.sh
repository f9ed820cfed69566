#!/usr/bin/env bash
# gradcache against sentence-transformers' CachedMultipleNegativesRankingLoss
# at its best setting on this work (#25): both sides' chunking swept —
# theirs by mini_batch_size and mini_batch_num_tokens (non-padding tokens),
# ours by chunk size and token budget (padded tokens, length-sorted) — on
# the same MiniLM, WordNet triples (max 128 tokens), cosine × 20 and 2
# threads (the set-up of benchmarks/peers/cmnrl.sh). Each configuration in its
# own process, interleaved within a round; each line carries the step's
# FLOPs and achieved GFLOP/s. Writes docs/results/peer_tokens.{jsonl,md}.
#
#   benchmarks/peers/tokens.sh [ROUNDS]
#     BATCHES="64 256"  OURS="items:16 tokens:1024 tokens:2048"
#     THEIRS="items:16 items:32 tokens:2048 tokens:8192"  STEPS=3
# Lines are appended (a second call with BATCHES=1024 adds to the same
# table); delete the .jsonl to start over.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh setup-bench
cargo build --release --quiet --example peers_cmnrl
rounds="${1:-2}"; batches="${BATCHES:-64 256}"; steps="${STEPS:-3}"
ours="${OURS:-items:16 tokens:1024 tokens:2048}"
theirs="${THEIRS:-items:16 items:32 tokens:2048 tokens:8192}"
bin=./target/release/examples/peers_cmnrl
out=docs/results/peer_tokens.jsonl
triples=$(mktemp)
trap 'rm -f "$triples"' EXIT
for round in $(seq "$rounds"); do
    for batch in $batches; do
        write=(--write-triples "$triples")  # by the first of ours, for theirs
        for c in $ours; do
            echo "[peer_tokens] $(date -u +%H:%M:%S) round $round batch $batch gradcache $c" >&2
            case $c in
                items:*) args=(--chunk "${c#items:}") ;;
                tokens:*) args=(--chunk 16 --chunk-tokens "${c#tokens:}") ;;
            esac
            "$bin" --batch "$batch" --steps "$steps" "${args[@]}" "${write[@]}" | python3 -c "import json,sys; d=json.load(sys.stdin); d['round']=$round; print(json.dumps(d))" >> "$out"
            write=()
        done
        for c in $theirs; do
            echo "[peer_tokens] $(date -u +%H:%M:%S) round $round batch $batch CachedMNRL $c" >&2
            case $c in
                items:*) args=(--chunk "${c#items:}") ;;
                tokens:*) args=(--chunk 16 --mini-batch-num-tokens "${c#tokens:}") ;;
            esac
            ./.python benchmarks/peers/st_cmnrl.py --triples "$triples" --steps "$steps" "${args[@]}" 2>/dev/null \
                | python3 -c "import json,sys; d=json.load(sys.stdin); d['round']=$round; print(json.dumps(d))" >> "$out"
        done
    done
done
python3 benchmarks/peers/tokens_report.py > docs/results/peer_tokens.md
cat docs/results/peer_tokens.md
