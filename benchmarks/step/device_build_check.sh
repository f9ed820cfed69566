#!/usr/bin/env bash
# The GPU machine's recipe, tested here: `scripts/gradcache.sh device-build`
# (torch 2.11 wheel, patched torch-sys, examples/device_check), then the
# built binary on this machine's CPU with --quick. Not in .ci/run: the
# 4 GB download and a second release build take longer than the suite's
# budget on 2 cores. Writes docs/results/device_build_cpu.{json,md}.
#
#   benchmarks/step/device_build_check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/gradcache.sh device-build
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
target/device/bin/device_check --device cpu --quick --out "$out"
cp "$out/report.json" docs/results/device_build_cpu.json
{
    echo "<!-- benchmarks/step/device_build_check.sh: target/device/bin/device_check --device cpu --quick, built by scripts/gradcache.sh device-build -->"
    cat "$out/report.md"
} > docs/results/device_build_cpu.md
grep -m1 "libtorch" docs/results/device_build_cpu.md
