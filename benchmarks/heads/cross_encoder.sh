#!/usr/bin/env bash
# The cross-encoder baseline of docs/heads-results.md (#24): a MiniLM
# CrossEncoder trained by sentence-transformers on the main job's batches
# (benchmarks/heads/st_cross_encoder.py: the same examples in the same order
# per seed, written by the common_write_batches example), then reranking the top 100
# of two first stages on the WordNet dev and test sets
# (benchmarks/heads/st_cross_encoder_rerank.py): the pretrained MiniLM's
# cosine, and the fine-tuned cosine bi-encoder of the same seed (trained as
# heads/compare.sh trains `cosine`). Runs and models under runs/cross_encoder
# (kept: a re-run skips what is done); one JSON line per (seed, split,
# first stage) in docs/results/cross_encoder/rerank.jsonl, its WSD accuracy
# over each query's sense grid in wsd.jsonl, the training summaries in
# train.jsonl.
#
# STEPS (default 100) trains longer (#34's 4x budget): the cross-encoder
# on that many steps of the main job's batches, its first stage the cosine
# bi-encoder of benchmarks/heads/mol_quality.sh's STEPS400 runs (bf16, the same
# folder and command, so either script reuses the other's run); tags and
# folders carry "steps400". PRECISION (f32 by default, as the rows on record)
# is the cross-encoder's: bf16 runs its step under torch's CPU autocast.
# FIRST_STAGES ("pretrained cosine" by default) names the first stages whose
# top 100 it reranks.
#
#   benchmarks/heads/cross_encoder.sh          (SEEDS="0 1 2" SPLITS="dev test" STEPS=100 PRECISION=f32 by default)
#   STEPS=400 SEEDS=0 FIRST_STAGES=cosine benchmarks/heads/cross_encoder.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh setup-bench
cargo build --release --quiet --bin gradcache --example common_write_batches --example train_reranker
g=target/release/gradcache
runs=runs/cross_encoder
res=docs/results/cross_encoder
mkdir -p "$runs" "$res"
log() { echo "[cross_encoder] $(date -u +%H:%M:%S) $*" >&2; }
[ -d "$runs/wordnet-beir/dev" ] || "$g" prepare-wordnet --beir "$runs/wordnet-beir" >&2
first_stage() {  # MODEL NAME SPLIT: gradcache eval's run.trec of MODEL's top 100
    local out="$runs/first-$2-$3"
    [ -f "$out/run.trec" ] || { log "first stage $2 on $3"; "$g" eval --model "$1" --max-len 48 --data "$runs/wordnet-beir/$3" --split "$3" --output "$out" --quiet >&2; }
}
for split in ${SPLITS:-dev test}; do
    first_stage .models/all-MiniLM-L6-v2 pretrained "$split"
done
steps=${STEPS:-100}; precision=${PRECISION:-f32}
# The 100-step f32 runs keep their names; others say what differs.
variant=""; [ "$steps" = 100 ] || variant="steps$steps-"; [ "$precision" = f32 ] || variant="$variant$precision-"
for seed in ${SEEDS:-0 1 2}; do
    if [ "$steps" = 100 ]; then
        cosine="$runs/cosine-s$seed"; cosine_name="cosine-s$seed"
        if [ ! -f "$cosine/results.json" ]; then
            log "fine-tuned cosine bi-encoder, seed $seed"
            target/release/examples/train_reranker --config benchmarks/heads/cosine.json --seed "$seed" --output-dir "$cosine" --quiet > "$cosine.log" 2>&1
        fi
    else
        cosine="runs/steps$steps/cosine-bf16/seed-$seed"; cosine_name="cosine-steps$steps-s$seed"
        if [ ! -f "$cosine/results.json" ]; then
            log "fine-tuned cosine bi-encoder, $steps steps, seed $seed"
            mkdir -p "$(dirname "$cosine")"
            target/release/examples/train_reranker --config benchmarks/heads/cosine.json --seed "$seed" --precision bf16 --test-queries 300 \
                --output-dir "$cosine" --overwrite --quiet --steps "$steps" > "$cosine.log" 2>&1
        fi
    fi
    ce="$runs/ce-${variant}s$seed"
    if [ ! -f "$ce/summary.json" ]; then
        target/release/examples/common_write_batches --batches "$runs/batches-${variant}s$seed.jsonl" --seed "$seed" --steps "$steps" >&2
        log "cross-encoder, $steps steps, $precision, seed $seed"
        # The summary line only once the run has finished (a killed run leaves its progress lines).
        ./.python benchmarks/heads/st_cross_encoder.py --batches "$runs/batches-${variant}s$seed.jsonl" --output "$ce" --seed "$seed" \
            --precision "$precision" 2> "$ce.log" > "$ce.out"
        tail -1 "$ce.out" >> "$res/train.jsonl"
    fi
    for split in ${SPLITS:-dev test}; do
        if ! grep -qF "\"tag\": \"ce-${variant}s$seed $split wsd\"" "$res/wsd.jsonl" 2>/dev/null; then
            log "WSD accuracy of the cross-encoder of seed $seed on $split"
            ./.python benchmarks/heads/st_cross_encoder_rerank.py --model "$ce/model" --data "$runs/wordnet-beir/$split" --split "$split" \
                --run "$runs/first-pretrained-$split/run.trec" --wsd-only --tag "ce-${variant}s$seed $split wsd" 2>> "$ce.log" >> "$res/wsd.jsonl"
        fi
        first_stage "$cosine/model" "$cosine_name" "$split"
        for first in ${FIRST_STAGES:-pretrained cosine}; do
            [ "$first" = cosine ] && first="$cosine_name"
            tag="ce-${variant}s$seed $split $first"
            if grep -qF "\"tag\": \"$tag\"" "$res/rerank.jsonl" 2>/dev/null; then continue; fi
            log "reranking $first's top 100 on $split with the cross-encoder of seed $seed"
            ./.python benchmarks/heads/st_cross_encoder_rerank.py --model "$ce/model" --data "$runs/wordnet-beir/$split" --split "$split" \
                --run "$runs/first-$first-$split/run.trec" --tag "$tag" 2>> "$ce.log" >> "$res/rerank.jsonl"
        done
    done
done
log "done: $res"
