#!/usr/bin/env bash
# The encoder, side by side: gradcache's MiniLM (fused layers; rust-bert's
# layers with and without the allocator fix) and Hugging Face transformers
# (eager and SDPA), each in its own process on the same work. Writes docs/results/encoder_speed.{jsonl,md}.
#
#   benchmarks/encoder_speed.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/gradcache.sh setup
cargo build --release --example bench_encoder_speed
rounds="${1:-3}"
out=docs/results/encoder_speed.jsonl
: > "$out.tmp"
for round in $(seq "$rounds"); do
    # Interleaved, so drift in the machine hits every implementation alike.
    ./target/release/examples/bench_encoder_speed >> "$out.tmp"
    ./target/release/examples/bench_encoder_speed --rust-bert >> "$out.tmp"
    ./target/release/examples/bench_encoder_speed --rust-bert --no-tune-allocator >> "$out.tmp"
    ./.python benchmarks/peers/hf_encoder.py --attn eager 2>/dev/null >> "$out.tmp"
    ./.python benchmarks/peers/hf_encoder.py --attn sdpa 2>/dev/null >> "$out.tmp"
done
mv "$out.tmp" "$out"
./.python - "$out" "$rounds" <<'PY' > docs/results/encoder_speed.md
import json, sys, statistics, platform, os
rows = [json.loads(l) for l in open(sys.argv[1])]
key = lambda r: r["impl"] + (" + tuned allocator" if r.get("allocator_tuned") else " (glibc defaults)" if "allocator_tuned" in r else "")
groups = {}
for r in rows:
    groups.setdefault(key(r), []).append(r)
print("# Encoder speed: MiniLM forward+backward, train mode\n")
print(f"Command: `benchmarks/encoder_speed.sh {sys.argv[2]}` ({sys.argv[2]} interleaved rounds, each a separate process; "
      f"batch 32 x 64 tokens, 2 threads, median of 14 steps after 2 warm-up steps). Machine: {os.cpu_count()} CPUs, {platform.machine()}.\n")
ref = statistics.median(r["median_s"] for r in groups[[k for k in groups if "eager" in k][0]])
print("| implementation | s/step (median of rounds) | min-max over rounds | vs transformers eager | minor page faults / 14 steps | system s / 14 steps |")
print("|---|---|---|---|---|---|")
for k, rs in groups.items():
    s = [r["median_s"] for r in rs]
    print(f"| {k} | {statistics.median(s):.3f} | {min(s):.3f}-{max(s):.3f} | {statistics.median(s)/ref:.2f}x | "
          f"{int(statistics.median(r['minor_faults'] for r in rs)):,} | {statistics.median(r['system_s'] for r in rs):.2f} |")
PY
cat docs/results/encoder_speed.md
