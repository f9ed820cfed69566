#!/usr/bin/env bash
# The encoder, side by side: gradcache's MiniLM (fused layers; rust-bert's
# layers with and without the allocator fix) and Hugging Face transformers
# (eager and SDPA), each in its own process on the same work. Writes docs/results/encoder_speed.{jsonl,md}.
#
#   benchmarks/encoders/speed.sh [ROUNDS]                 forward+backward
#   PASS=forward benchmarks/encoders/speed.sh [ROUNDS]   forward only (no graph, train mode)
#                                                       → docs/results/encoder_speed_forward.{jsonl,md}
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh setup
cargo build --release --example encoders_speed
rounds="${1:-3}"
if [ "${PASS:-}" = forward ]; then flag=--forward-only; out=docs/results/encoder_speed_forward.jsonl; else flag=; out=docs/results/encoder_speed.jsonl; fi
: > "$out.tmp"
for round in $(seq "$rounds"); do
    # Interleaved, so drift in the machine hits every implementation alike.
    ./target/release/examples/encoders_speed $flag >> "$out.tmp"
    ./target/release/examples/encoders_speed --rust-bert $flag >> "$out.tmp"
    ./target/release/examples/encoders_speed --rust-bert --no-tune-allocator $flag >> "$out.tmp"
    ./.python benchmarks/encoders/hf_encoder.py --attn eager $flag 2>/dev/null >> "$out.tmp"
    ./.python benchmarks/encoders/hf_encoder.py --attn sdpa $flag 2>/dev/null >> "$out.tmp"
done
mv "$out.tmp" "$out"
./.python benchmarks/encoders/speed_report.py "$out" "$rounds" "${PASS:-}" > "${out%.jsonl}.md"
cat "${out%.jsonl}.md"
