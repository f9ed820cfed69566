#!/usr/bin/env bash
# One process with 2 threads against 2 MPI processes with 1 thread each on
# the same global batch (MiniLM, MLP head, WordNet triples), ROUNDS rounds
# interleaved; per process: step time, peak memory, time in collectives,
# bytes sent. Writes docs/results/distributed_bench.{jsonl,md}.
#
#   benchmarks/distributed/bench.sh [ROUNDS]     (BATCHES="32 64 128")
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh setup-bench
cargo build --release --features mpi --example distributed_bench
bin=./target/release/examples/distributed_bench
rounds="${1:-2}"; batches="${BATCHES:-32 64 128}"
root=(); [ "$(id -u)" = 0 ] && root=(--allow-run-as-root)
out=docs/results/distributed_bench.jsonl
: > "$out.tmp"
for round in $(seq "$rounds"); do
    for batch in $batches; do
        echo "[distributed_bench] round $round batch $batch" >&2
        "$bin" --batch "$batch" --threads 2 >> "$out.tmp"
        mpirun "${root[@]}" --oversubscribe -np 2 "$bin" --batch "$batch" --threads 1 >> "$out.tmp"
    done
done
mv "$out.tmp" "$out"
./.python - "$out" "benchmarks/distributed/bench.sh $rounds (BATCHES=\"$batches\")" <<'PY' | tee docs/results/distributed_bench.md
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = statistics.median
print("# One process with 2 threads vs two MPI processes with 1 thread each\n")
print(f"Command: `{sys.argv[2]}`. MiniLM (all-MiniLM-L6-v2, fused layers), MLP head, WordNet (query, positive, hard negative) "
      "triples, chunks of 16, blocks of 16 x 64, 64 tokens at most; median of 3 steps after a warm-up, median over rounds; "
      "peak = VmHWM per process. Collective time and bytes: per step and per process (bytes this process contributed).\n")
print("| queries (global) | layout | s/step | x one process | peak MB per process | collectives s/step | collectives share | MB sent per step | calls per step | first loss |")
print("|---|---|---|---|---|---|---|---|---|---|")
for batch in sorted({r["batch"] for r in rows}):
    one = [r for r in rows if r["batch"] == batch and r["processes"] == 1]
    two = [r for r in rows if r["batch"] == batch and r["processes"] == 2]
    t1 = med(r["median_s"] for r in one)
    # A distributed step takes as long as its slowest process.
    rounds = sorted({i for i in range(len(two) // 2)})
    t2 = med(max(two[2 * i]["median_s"], two[2 * i + 1]["median_s"]) for i in rounds)
    print(f"| {batch} | 1 process x 2 threads | {t1:.3f} | 1.00 | {med(r['peak_mb'] for r in one):.0f} | – | – | – | – | {one[0]['losses'][0]:.6f} |")
    c = med(r["collective_s_per_step"] for r in two)
    print(f"| {batch} | 2 processes x 1 thread | {t2:.3f} | {t2 / t1:.2f} | {med(r['peak_mb'] for r in two):.0f} | {c:.3f} | {c / t2:.1%} "
          f"| {med(r['sent_mb_per_step'] for r in two):.2f} | {med(r['calls_per_step'] for r in two):.0f} | {two[0]['losses'][0]:.6f} |")
PY
