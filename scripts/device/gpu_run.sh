#!/usr/bin/env bash
# The GPU run, as one script for the lent GPU machine (docs/gpu.md): run
# from the repository root through the device tool, carrying
# target/device/bin (from `scripts/gradcache.sh device-build`). Writes
# $OUT/gpu/{machine.txt,log.txt,report.json,report.md}; the device check
# itself stops starting scaling runs after SCALING_SECONDS (default 200) and
# is killed at 480 s, leaving time in a 600 s call to fetch the files.
set -uo pipefail
out="${OUT:-/tmp/gradcache-gpu}/gpu"
mkdir -p "$out"
{
    echo "glibc: $(ldd --version | head -n 1)"
    nvidia-smi || true
    ls -d /opt/torch/.venv/lib/python3.*/site-packages/torch/lib || true
} > "$out/machine.txt" 2>&1
timeout 480 target/device/bin/device_check --device cuda --scaling-seconds "${SCALING_SECONDS:-200}" --out "$out" > "$out/log.txt" 2>&1
rc=$?
tail -n 40 "$out/log.txt"
exit $rc
