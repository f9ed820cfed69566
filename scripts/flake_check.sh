#!/usr/bin/env bash
# Runs test binaries that start processes or threads N times each, beside
# CPU-burning loops, and counts the failures: the check that a test waits
# for events and not for a length of time (DEVELOPERS.md). Logs of failed
# runs are kept under $out.
#
#   scripts/flake_check.sh 20 serve faults distributed cli
#
# BURN (default: the cores) busy loops run throughout. Builds the tests
# (with the `mpi` feature, as the test command does) first.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:?usage: scripts/flake_check.sh RUNS TEST...}"
shift
out="${FLAKE_OUT:-target/flake}"
mkdir -p "$out"
cargo build --features mpi --examples --quiet
cargo test --features mpi --no-run --quiet "${@/#/--test=}" 2>/dev/null
burn="${BURN:-$(nproc)}"
pids=()
for _ in $(seq "$burn"); do (while :; do :; done) & pids+=($!); done
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for test in "$@"; do
    failed=0
    started=$(date +%s)
    for i in $(seq "$runs"); do
        if ! cargo test --features mpi --quiet --test "$test" > "$out/$test-$i.log" 2>&1; then
            failed=$((failed + 1))
            echo "$test run $i failed: $out/$test-$i.log" >&2
        else
            rm -f "$out/$test-$i.log"
        fi
    done
    echo "$test: $runs runs beside $burn busy loop(s), $failed failed ($(( $(date +%s) - started )) s)"
done
