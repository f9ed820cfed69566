#!/usr/bin/env bash
# Heads on your own data (#34): each named head configuration
# (benchmarks/heads/NAME.json) trained on the pydoc set's mined triples
# (examples/data/pydoc, mined as docs/training.md does) for 30 steps of 32
# queries (STEPS=120: 4x, runs in runs/heads-pydoc-steps120), 3 seeds,
# then evaluated on its dev split as `gradcache eval` does: the fine-tuned
# encoder's cosine (first stage) and the head's rerank of its top 100; for
# a Mixture of Logits head also the head as its own first stage (exact). No model selection on dev. Runs in
# runs/heads-pydoc/NAME/seed-S; the table goes to
# docs/results/heads_pydoc.md (benchmarks/heads/pydoc_report.py: every
# budget run so far).
#
#   benchmarks/heads/pydoc.sh cosine mlp_residual_gate300 mol_residual max_sim   (SEEDS="0 1 2" STEPS=30)
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh setup >&2
cargo build --release --quiet --bin gradcache
bin="$(mktemp -d)/gradcache"
cp target/release/gradcache "$bin"
train=runs/pydoc-train.jsonl
[ -f "$train" ] || "$bin" mine --model .models/all-MiniLM-L6-v2 --pairs examples/data/pydoc/pairs.jsonl \
    --corpus examples/data/pydoc/corpus.jsonl --output "$train" --negatives 1 --range-min 3 --range-max 30 --max-len 128 --quiet
steps=${STEPS:-30}
root=runs/heads-pydoc; [ "$steps" = 30 ] || root=runs/heads-pydoc-steps$steps
for name in "$@"; do
    for seed in ${SEEDS:-0 1 2}; do
        out=$root/$name/seed-$seed
        [ -f "$out/results.json" ] && [ -z "${AGAIN:-}" ] && continue
        mkdir -p "$(dirname "$out")"
        echo "[heads_pydoc] $(date -u +%H:%M:%S) $name seed $seed, $steps steps" >&2
        "$bin" train --config "benchmarks/heads/$name.json" --train-data "$train" --eval-data examples/data/pydoc/dev \
            --steps "$steps" --batch-size 32 --max-len 128 --seed "$seed" --output-dir "$out" --overwrite --quiet > "$out.log" 2>&1
    done
done
# Evaluated again with `gradcache eval` (the same binary for every run:
# float32 ranking scores, docs/inference.md).
for name in "$@"; do
    for seed in ${SEEDS:-0 1 2}; do
        out=$root/$name/seed-$seed
        stages=cosine
        grep -q '"kind": *"mol"' "benchmarks/heads/$name.json" && stages="cosine head"
        for stage in $stages; do
            [ -f "$out/eval-$stage/metrics.json" ] && [ -z "${AGAIN:-}" ] && continue
            "$bin" eval --model "$out/model" --data examples/data/pydoc/dev --split dev --first-stage "$stage" \
                --output "$out/eval-$stage" --quiet > "$out/eval-$stage.log" 2>&1
        done
    done
done
# The pretrained encoder's cosine, the baseline every head starts from.
pre=runs/heads-pydoc/pretrained-eval
[ -f "$pre/metrics.json" ] || "$bin" eval --model .models/all-MiniLM-L6-v2 --max-len 128 --data examples/data/pydoc/dev --split dev \
    --output "$pre" --quiet > "$pre.log" 2>&1
mkdir -p docs/results
python3 benchmarks/heads/pydoc_report.py runs/heads-pydoc runs/heads-pydoc-steps* > docs/results/heads_pydoc.md
cat docs/results/heads_pydoc.md
