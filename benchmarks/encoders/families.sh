#!/usr/bin/env bash
# The fused XLM-RoBERTa and ModernBERT layers against transformers 4.57's
# eager and SDPA forward+backward (train mode) on the same work: random
# models of MiniLM's size written by transformers
# (benchmarks/encoders/write_family_models.py), batch 32 x 64 tokens, 2
# threads, each implementation in its own process, rounds interleaved.
# Writes docs/results/encoder_families.{jsonl,md}.
#
#   benchmarks/encoders/families.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh setup-models
cargo build --release --example encoders_speed
rounds="${1:-3}"
models=target/bench-models
[ -f "$models/modernbert/model.safetensors" ] || ./.python-models benchmarks/encoders/write_family_models.py "$models" >/dev/null 2>&1
out=docs/results/encoder_families.jsonl
: > "$out.tmp"
for round in $(seq "$rounds"); do
    for name in xlmr modernbert; do
        ./target/release/examples/encoders_speed --model "$models/$name" --name "$name" >> "$out.tmp"
        [ "$name" = xlmr ] && ./target/release/examples/encoders_speed --model "$models/$name" --name "$name" --rust-bert >> "$out.tmp"
        ./.python-models benchmarks/encoders/hf_encoder.py --model "$models/$name" --name "$name" --attn eager 2>/dev/null >> "$out.tmp"
        ./.python-models benchmarks/encoders/hf_encoder.py --model "$models/$name" --name "$name" --attn sdpa 2>/dev/null >> "$out.tmp"
    done
done
mv "$out.tmp" "$out"
./.python benchmarks/encoders/families_report.py "$out" "$rounds" > "${out%.jsonl}.md"
cat "${out%.jsonl}.md"
