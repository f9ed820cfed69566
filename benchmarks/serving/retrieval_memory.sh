#!/usr/bin/env bash
# Peak memory of the first retrieval stage against corpus size: the
# streaming top-k against materialising every passage vector and the whole
# [Q, C] score matrix, 100 queries, k = 100, each size and method in its own
# process. Writes docs/results/retrieval_memory.{jsonl,md}.
#
#   benchmarks/serving/retrieval_memory.sh [SIZES...]     (default: 10000 100000 1000000)
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh setup
cargo build --release --example serving_retrieval_memory
sizes=("${@:-10000 100000 1000000}")
sizes=(${sizes[*]})
bin=./target/release/examples/serving_retrieval_memory
out=docs/results/retrieval_memory.jsonl
: > "$out.tmp"
for n in "${sizes[@]}"; do
    for method in streaming full; do
        "$bin" --passages "$n" --method "$method" | tee -a "$out.tmp"
    done
done
mv "$out.tmp" "$out"
./.python - "$out" "benchmarks/serving/retrieval_memory.sh ${sizes[*]}" <<'PY' | tee docs/results/retrieval_memory.md
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("# First-stage retrieval memory against corpus size\n")
print(f"Command: `{sys.argv[2]}` ({rows[0]['queries']} queries, top {rows[0]['k']}, a random 2-layer width-64 BERT, synthetic 12-word passages; "
      "peak resident set (VmHWM) of a fresh process, weights and libtorch included).\n")
print("| passages | streaming top-k: peak MB | materialised [Q, C]: peak MB | streaming passages/s | same best score |")
print("|---|---|---|---|---|")
for n in sorted({r["passages"] for r in rows}):
    s = next(r for r in rows if r["passages"] == n and r["method"] == "streaming")
    f = next(r for r in rows if r["passages"] == n and r["method"] == "full")
    same = "yes" if abs(s["best_first_score"] - f["best_first_score"]) < 1e-6 else "no"
    print(f"| {n:,} | {s['peak_mb']:.0f} | {f['peak_mb']:.0f} | {s['passages_per_s']:.0f} | {same} |")
PY
