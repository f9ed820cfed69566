#!/usr/bin/env bash
# What the memory plan buys: step time and peak memory of the two-cache step
# with every graph recomputed (the default), half of them retained, and all
# of them retained, beside the full-batch step; small BERT (bench_step's
# model), 2 passages per query, each configuration in its own process.
# Writes docs/results/retention_bench.{jsonl,md}.
#
#   benchmarks/retention_bench.sh          (HEADS="dot mlp interaction" BATCH=256 STEPS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/gradcache.sh setup
cargo build --release --example bench_step
bin=./target/release/examples/bench_step
heads="${HEADS:-dot mlp interaction}"; batch="${BATCH:-256}"; steps="${STEPS:-3}"
chunks=$(( (batch + 15) / 16 )); pchunks=$(( (2 * batch + 15) / 16 ))
blocks=$(( chunks * ((2 * batch + 63) / 64) ))
half="{\"retain\": {\"query_chunks\": $((chunks / 2)), \"passage_chunks\": $((pchunks / 2)), \"head_blocks\": $((blocks / 2))}}"
out=docs/results/retention_bench.jsonl
: > "$out.tmp"
for head in $heads; do
    common=(--batch "$batch" --head "$head" --steps "$steps")
    "$bin" --method full "${common[@]}" >> "$out.tmp"
    "$bin" --method two-cache "${common[@]}" >> "$out.tmp"
    "$bin" --method two-cache --memory "$half" "${common[@]}" >> "$out.tmp"
    "$bin" --method two-cache --memory '{"recompute": "none"}' "${common[@]}" >> "$out.tmp"
    for budget in ${BUDGETS:-100 400}; do
        "$bin" --method two-cache --memory "{\"budget_mb\": $budget}" "${common[@]}" >> "$out.tmp"
    done
done
mv "$out.tmp" "$out"
./.python - "$out" "benchmarks/retention_bench.sh (HEADS=\"$heads\" BATCH=$batch STEPS=$steps)" <<'PY' | tee docs/results/retention_bench.md
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("# Two-cache step with retained graphs\n")
print(f"Command: `{sys.argv[2]}`. Small BERT (2 layers, width 128), chunks of 16, blocks of 16 x 64, median step time "
      "after one warm-up step; peak resident set (VmHWM) of the process. Ratios against the full-batch step of the same head.\n")
print("| head | configuration | retained (query chunks / passage chunks / blocks) | s/step | x full batch | peak MB | x full batch |")
print("|---|---|---|---|---|---|---|")
def name(r):
    if r["method"] == "Full":
        return "full batch"
    m = r["memory"]
    if m.get("recompute") == "all":
        return "two-cache, recompute all (default)"
    if m.get("recompute") == "none":
        return "two-cache, retain all"
    if "budget_mb" in m:
        est = r["retained"].get("estimate_mb")
        return f"two-cache, budget {m['budget_mb']} MB (estimate {est:.0f} MB)"
    return "two-cache, retain half"
def kept(r):
    k = r.get("retained") or {}
    return f"{k.get('query_chunks', 0)} / {k.get('passage_chunks', 0)} / {k.get('head_blocks', 0)}" if k else "–"
for head in dict.fromkeys(r["head"] for r in rows):
    hr = [r for r in rows if r["head"] == head]
    full = next(r for r in hr if r["method"] == "Full")
    for r in hr:
        print(f"| {head} | {name(r)} | {kept(r)} | {r['median_s']:.3f} | {r['median_s'] / full['median_s']:.2f} | {r['peak_mb']:.0f} | {r['peak_mb'] / full['peak_mb']:.2f} |")
PY
