#!/usr/bin/env bash
# Where the two-cache step's extra time goes, on the step sweep's dot head at
# 256 queries (its worst ratio): the full batch next to the two-cache step
# with encoder chunks of 16, 64 and 256 queries, and with the replay check
# off; per-phase seconds from the step itself. Each configuration in its own
# process, ROUNDS interleaved rounds. Writes docs/results/step_overhead.{jsonl,md}.
#
#   benchmarks/step/overhead.sh [ROUNDS]     (HEAD=dot BATCH=256 by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh setup
cargo build --release --example reproduce_extension
rounds="${1:-2}"; head="${HEAD:-dot}"; batch="${BATCH:-256}"
bin=./target/release/examples/reproduce_extension
out=docs/results/step_overhead.jsonl
: > "$out.tmp"
for round in $(seq "$rounds"); do
    common=(--batch "$batch" --head "$head" --steps 3)
    "$bin" probe --method full "${common[@]}" >> "$out.tmp"
    for chunk in 16 64 256; do
        "$bin" probe --method two-cache --chunk "$chunk" --block-queries "$chunk" --block-passages $((4 * chunk)) "${common[@]}" >> "$out.tmp"
    done
    "$bin" probe --method two-cache --no-check-replay "${common[@]}" >> "$out.tmp"
done
mv "$out.tmp" "$out"
./.python - "$out" "benchmarks/step/overhead.sh $rounds (HEAD=$head BATCH=$batch)" <<'PY' | tee docs/results/step_overhead.md
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def name(r):
    if r["method"] == "Full":
        return "full batch (one graph)"
    return f"two-cache, chunks of {r['chunk']}" + ("" if r["check_replay"] else ", replay check off")
groups = {}
for r in rows:
    groups.setdefault(name(r), []).append(r)
full = statistics.median(r["median_s"] for r in groups["full batch (one graph)"])
phases = ["representation", "score", "distance_gradient", "head", "encoder"]
print(f"# Two-cache time overhead\n\nCommand: `{sys.argv[2]}`. Small BERT of the step sweep, 2 passages per query, 16 tokens, "
      "2 threads; s/step = median over rounds of each process's median step; phases = seconds per step as the step reports them "
      "(for the full batch: the encoders' forward under `representation`, the head's under `score`, its one backward under `encoder`).\n")
print("| configuration | s/step | vs full batch | " + " | ".join(phases) + " |")
print("|---|---|---|" + "---|" * len(phases))
for k, rs in groups.items():
    t = statistics.median(r["median_s"] for r in rs)
    ph = [statistics.median(r["phase_s"][p] for r in rs) for p in phases]
    print(f"| {k} | {t:.3f} | {t / full:.2f}x | " + " | ".join(f"{x:.3f}" for x in ph) + " |")
PY
