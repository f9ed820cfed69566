#!/usr/bin/env bash
# gradcache's one entry script. Every subcommand first runs `setup`, which is
# idempotent: it installs only what is missing.
#
#   scripts/gradcache.sh setup   # libtorch (PyPI torch==2.4.0) into a cached venv
#   scripts/gradcache.sh train   # the main job: a real training run
#   scripts/gradcache.sh test    # the test suite (what CI runs)
#
# GRADCACHE_HOME (default ~/.cache/gradcache) holds the venv, shared by clones.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="${GRADCACHE_HOME:-$HOME/.cache/gradcache}"
venv="$home/venv-torch-2.4.0"
torch_version="2.4.0"

log() { printf '[gradcache] %s\n' "$*" >&2; }

setup() {
    mkdir -p "$home"
    local py="$venv/bin/python"
    if ! "$py" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null; then
        log "installing torch==$torch_version from PyPI into $venv (about 5 GB, once)"
        command -v python3 >/dev/null || { log "python3 is required"; exit 1; }
        [ -x "$py" ] || python3 -m venv "$venv"
        "$py" -m pip install --quiet --disable-pip-version-check "torch==$torch_version"
    fi
    local torch_dir
    torch_dir="$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
    # .cargo/config.toml points LIBTORCH at this link.
    if [ "$(readlink "$repo/.libtorch" 2>/dev/null)" != "$torch_dir" ]; then
        ln -sfn "$torch_dir" "$repo/.libtorch"
    fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    setup) setup ;;
    train)
        setup
        cd "$repo"
        exec cargo run --release --example train_reranker -- "$@"
        ;;
    test)
        setup
        cd "$repo"
        exec cargo test --all-targets "$@"
        ;;
    *)
        echo "usage: scripts/gradcache.sh {setup|train|test} [args...]" >&2
        exit 2
        ;;
esac
