#!/usr/bin/env bash
# Training time per step of the gradcache configurations in the
# cross-encoder comparison (#24, docs/heads-results.md): each
# benchmarks/heads/NAME.json trained for STEPS steps (default 12) on the
# main job's data and batches (the same batch size, chunks and blocks; only
# the step count, and so the learning-rate schedule, differs, which does not
# change a step's work), one configuration at a time, on a machine doing
# nothing else. One JSON line per configuration in
# docs/results/cross_encoder/train_step.jsonl: the median and range of the
# steps' wall time after the first two (which warm the allocator and thread
# pools), and the median GFLOP/s of each pass. The cross-encoder's comes from its own 100-step runs
# (train.jsonl, benchmarks/heads/cross_encoder.sh).
#
#   benchmarks/heads/train_step_time.sh                 (NAMES="cosine max_sim mlp_residual_gate300 interaction_layer")
#   NAMES=mlp_residual_gate300 EXTRA="--chunk-tokens 768" benchmarks/heads/train_step_time.sh   # a variant, tagged with its flags
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh setup >&2
cargo build --release --quiet --example train_reranker
steps=${STEPS:-12}
out=docs/results/cross_encoder/train_step.jsonl
mkdir -p "$(dirname "$out")" runs/train_step
for name in ${NAMES:-cosine max_sim mlp_residual_gate300 interaction_layer}; do
    dir=runs/train_step/$name${EXTRA:+-$(echo "$EXTRA" | tr -c 'a-z0-9' '_')}
    echo "[train_step_time] $(date -u +%H:%M:%S) $name, $steps steps" >&2
    target/release/examples/train_reranker --config "benchmarks/heads/$name.json" --steps "$steps" --dev-queries 10 \
        --output-dir "$dir" --overwrite --quiet ${EXTRA:-} > "$dir.log" 2>&1
    python3 - "$name" "$dir/metrics.jsonl" "$(git rev-parse --short HEAD)" "${EXTRA:-}" >> "$out" <<'PY'
import json, statistics, sys
name, metrics, commit, extra = sys.argv[1:]
steps = [m for m in map(json.loads, open(metrics)) if "seconds" in m and m["step"] > 2]
seconds = [m["seconds"] for m in steps]
rates = {p: statistics.median(m["gflop_s"][p] for m in steps) for p in ("representation", "score", "head", "encoder")
         if all(m.get("gflop_s", {}).get(p) is not None for m in steps)}
print(json.dumps({"model": name, "steps_timed": len(seconds), "median_step_s": statistics.median(seconds), "gflop_s": rates,
                  "min_step_s": min(seconds), "max_step_s": max(seconds), "cores": __import__("os").cpu_count(), "commit": commit, "flags": extra}))
PY
    tail -1 "$out" >&2
done
