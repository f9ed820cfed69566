#!/usr/bin/env bash
# The memory budget's two time targets, measured with repeats (the sweep
# runs each configuration once, and step times on this machine vary by up
# to 30% between identical runs): "recompute none" against the full-batch
# step, and a budget at the recompute-all step's own growth against
# recompute all. ROUNDS rounds, configurations interleaved within each,
# each its own process; medians over rounds. Small BERT (`reproduce_extension probe`).
# Writes docs/results/budget_targets.{jsonl,md}.
#
#   benchmarks/budget/targets.sh [ROUNDS]     (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh setup
cargo build --release --example reproduce_extension
bin=./target/release/examples/reproduce_extension
rounds="${1:-3}"
out=docs/results/budget_targets.jsonl
: > "$out.tmp"
for round in $(seq "$rounds"); do
    for case in "dot 1024" "mlp 256"; do
        set -- $case
        common=(--head "$1" --batch "$2" --steps 3)
        echo "[budget_targets] round $round: $case" >&2
        "$bin" probe --method full "${common[@]}" >> "$out.tmp"
        "$bin" probe --method two-cache "${common[@]}" >> "$out.tmp"
        for memory in '{"recompute": "none"}' '{"budget_mb": 50}' '{"budget_mb": 100}'; do
            "$bin" probe --method two-cache --memory "$memory" "${common[@]}" >> "$out.tmp"
        done
    done
done
mv "$out.tmp" "$out"
./.python - "$out" "benchmarks/budget/targets.sh $rounds" <<'PY' | tee docs/results/budget_targets.md
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def name(r):
    if r["method"] == "Full":
        return "full batch"
    m = r["memory"]
    return {"all": "recompute all (default)", "none": "recompute none"}.get(m.get("recompute"), f"budget {m.get('budget_mb')} MB")
print("# The budget's time targets, with repeats\n")
print(f"Command: `{sys.argv[2]}`. Small BERT (2 layers, width 128, 16 tokens), chunks of 16, blocks of 16 x 64; per run the "
      "median of 3 steps after a warm-up; the table gives the median over rounds (runs interleaved) and the range.\n")
print("| head | queries | configuration | s/step (median, min-max) | x full batch | x recompute all | growth MB |")
print("|---|---|---|---|---|---|---|")
for head, batch in dict.fromkeys((r["head"], r["batch"]) for r in rows):
    rs = [r for r in rows if r["head"] == head and r["batch"] == batch]
    med = {n: statistics.median(r["median_s"] for r in rs if name(r) == n) for n in dict.fromkeys(map(name, rs))}
    for n, t in med.items():
        ts = [r["median_s"] for r in rs if name(r) == n]
        g = statistics.median(r["peak_mb"] - r["before_step_mb"] for r in rs if name(r) == n)
        print(f"| {head} | {batch} | {n} | {t:.3f} ({min(ts):.3f}-{max(ts):.3f}) | {t / med['full batch']:.2f} | {t / med['recompute all (default)']:.2f} | {g:.0f} |")
PY
