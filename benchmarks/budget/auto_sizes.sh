#!/usr/bin/env bash
# Sizes chosen from the budget (`StepConfig.auto_sizes`) against the
# configured ones (chunks of 16, blocks of 16 x 64) at the same budgets:
# step time, peak resident growth and the plan each chose; `reproduce_extension probe`'s
# small BERT (2 layers, width 128, 16 tokens), 2 passages per query, each
# configuration in its own process, beside the full-batch step and
# "recompute all". Writes docs/results/auto_sizes.{jsonl,md}.
#
#   benchmarks/budget/auto_sizes.sh     (HEADS="mlp dot" BATCH=256 STEPS=2 BUDGETS="100 200 400 800 1600")
set -uo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh setup || exit 1
cargo build --release --example reproduce_extension || exit 1
bin=./target/release/examples/reproduce_extension
heads="${HEADS:-mlp dot}"; batch="${BATCH:-256}"; steps="${STEPS:-2}"; budgets="${BUDGETS:-100 200 400 800 1600}"
out=docs/results/auto_sizes.jsonl
: > "$out.tmp"
run() {
    echo "[auto_sizes] $*" >&2
    RUST_BACKTRACE=0 "$bin" probe "$@" >> "$out.tmp" || echo "{\"error\": \"$*\"}" >> "$out.tmp"
}
for head in $heads; do
    common=(--batch "$batch" --head "$head" --steps "$steps")
    run --method full "${common[@]}"
    run --method two-cache "${common[@]}"
    for budget in $budgets; do
        run --method two-cache --memory "{\"budget_mb\": $budget}" "${common[@]}"
        run --method two-cache --memory "{\"budget_mb\": $budget}" --auto-sizes "${common[@]}"
    done
done
mv "$out.tmp" "$out"
./.python - "$out" "benchmarks/budget/auto_sizes.sh (HEADS=\"$heads\" BATCH=$batch STEPS=$steps BUDGETS=\"$budgets\")" > docs/results/auto_sizes.md <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"# Sizes from the budget vs configured sizes\n\nCommand: `{sys.argv[2]}`. Time: median step; growth: peak resident minus resident before the first step. Ratios against the full-batch step of the same head.\n")
print("| head | configuration | sizes (query chunk / passage chunk / block) | retained q / p / blocks | estimate MB | growth MB | step s | × full batch |")
print("|---|---|---|---|---|---|---|---|")
full = {r["head"]: r for r in rows if r.get("method") == "Full"}
for r in rows:
    if "error" in r:
        print(f"| | error: {r['error']} | | | | | | |")
        continue
    m, p, k = r["memory"], r["plan"], r["retained"]
    if r["method"] == "Full":
        what = "full batch"
    elif "budget_mb" in m:
        what = f"budget {m['budget_mb']:g} MB" + (", auto sizes" if r["auto_sizes"] else ", chunks 16")
    else:
        what = "recompute all, chunks 16"
    sizes = f"{p['query_chunk_items']} / {p['passage_chunk_items']} / {p['block_queries']}×{p['block_passages']}"
    est = f"{k['estimate_mb']:.0f}" if k.get("estimate_mb") is not None else ""
    growth = r["peak_mb"] - r["before_step_mb"]
    f = full.get(r["head"])
    ratio = f"{r['median_s'] / f['median_s']:.2f}" if f else ""
    print(f"| {r['head']} | {what} | {sizes} | {k['query_chunks']} / {k['passage_chunks']} / {k['head_blocks']} | {est} | {growth:.0f} | {r['median_s']:.3f} | {ratio} |")
PY
cat docs/results/auto_sizes.md
