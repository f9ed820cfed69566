#!/usr/bin/env bash
# Mixture of Logits against every baseline at the main job's budget (#34):
# the recipe (100 steps, bf16, 512-token chunks) with each head
# configuration of benchmarks/heads/ over SEEDS (default 0 1 2), dev and test
# evaluated by the recipe in f32; the MoL bundles then evaluated with
# `gradcache eval` on the WordNet BEIR export, reranking the fine-tuned
# cosine's top 100 and as their own first stage (exact). SWEEP names
# configurations run on seed 0 only (the tuning sweep); STEPS400 names
# configurations run for 400 steps on SEEDS400 (default 0). Runs in runs/precision/ (the
# same folders as benchmarks/heads/precision_quality.sh: one command line) and
# runs/steps400/; the table goes to docs/results/mol_quality.md.
#
#   benchmarks/heads/mol_quality.sh      (RUNS="cosine mlp_residual_gate300 max_sim mol_residual mol_plain"
#                                   SWEEP="mol_sweep_balance0 …" STEPS400="mol_residual cosine")
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh setup >&2
cargo build --release --quiet --example train_reranker --bin gradcache
tmp="$(mktemp -d)"; cp target/release/examples/train_reranker target/release/gradcache "$tmp/"
train() {  # NAME SEED OUT [flags]
    local name=$1 seed=$2 out=$3; shift 3
    [ -f "$out/results.json" ] && [ -z "${AGAIN:-}" ] && return
    mkdir -p "$(dirname "$out")"
    echo "[mol_quality] $(date -u +%H:%M:%S) $name seed $seed $*" >&2
    "$tmp/train_reranker" --config "benchmarks/heads/$name.json" --seed "$seed" --precision bf16 --test-queries 300 \
        --output-dir "$out" --overwrite --quiet "$@" > "$out.log" 2>&1
}
for name in ${RUNS:-cosine mlp_residual_gate300 max_sim mol_residual mol_plain}; do
    for seed in ${SEEDS:-0 1 2}; do train "$name" "$seed" "runs/precision/$name-bf16/seed-$seed"; done
done
for name in ${SWEEP:-mol_sweep_balance0 mol_sweep_balance1e-2 mol_sweep_temp0.1 mol_sweep_logits_gate mol_sweep_4x4}; do
    train "$name" 0 "runs/precision/$name-bf16/seed-0"
done
for name in ${STEPS400:-mol_residual cosine}; do
    for seed in ${SEEDS400:-0}; do train "$name" "$seed" "runs/steps400/$name-bf16/seed-$seed" --steps 400; done
done
[ -d runs/wordnet-beir ] || "$tmp/gradcache" prepare-wordnet --beir runs/wordnet-beir > /dev/null
for model in runs/precision/mol_residual-bf16/seed-*/model runs/steps400/mol_residual-bf16/seed-*/model; do
    [ -d "$model" ] || continue
    run=$(dirname "$model")
    for split in dev test; do for stage in cosine head; do
        [ -f "$run/eval-$split-$stage/metrics.json" ] && continue
        "$tmp/gradcache" eval --model "$model" --data "runs/wordnet-beir/$split" --split "$split" --first-stage "$stage" \
            --output "$run/eval-$split-$stage" --quiet > /dev/null
    done; done
done
python3 benchmarks/heads/mol_quality_report.py > docs/results/mol_quality.md
cat docs/results/mol_quality.md
