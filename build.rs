//! Bakes libtorch's library folder into every binary's rpath, so that examples,
//! tests and benchmarks run without `LD_LIBRARY_PATH`, and compiles the
//! small C++ shim (`src/shim/`) for what tch does not wrap: autocast with a
//! chosen dtype and the libtorch version always; the CUDA caching
//! allocator's statistics and the device's properties where libtorch has
//! CUDA and the CUDA runtime's headers are found (then `cfg(gradcache_cuda)`).
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(gradcache_cuda)");
    println!("cargo:rerun-if-changed=src/shim/extras.cpp");
    println!("cargo:rerun-if-changed=src/shim/cuda.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=GRADCACHE_NO_CUDA");
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not report libtorch's lib folder (DEP_TCH_LIBTORCH_LIB)"),
    );
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // Resolved: `.libtorch` is a link into a venv's site-packages, where the
    // NVIDIA wheels' headers sit beside it.
    let root = lib.parent().expect("libtorch's lib folder has a parent").canonicalize().expect("libtorch's folder exists");
    let root = root.as_path();
    let include = root.join("include");
    // torch-sys's default: the C++11 ABI unless told otherwise.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let build = |file: &str| {
        let mut b = cc::Build::new();
        b.cpp(true)
            .file(file)
            .include(&include)
            .include(include.join("torch/csrc/api/include"))
            .flag("-std=c++17")
            .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
            .warnings(false)
            .extra_warnings(false);
        b
    };
    build("src/shim/extras.cpp").compile("gradcache_extras");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    if std::env::var_os("GRADCACHE_NO_CUDA").is_some() || !lib.join("libc10_cuda.so").exists() {
        return;
    }
    let includes = cuda_includes(root);
    let found = |h: &str| includes.iter().any(|d| d.join(h).exists());
    if !found("cuda_runtime_api.h") || !found("crt/host_defines.h") {
        println!("cargo:warning=libtorch has CUDA but the CUDA runtime's headers (cuda_runtime_api.h, crt/host_defines.h) were not found (set CUDA_HOME, or install nvidia-cuda-nvcc-cu12 beside torch as scripts/gradcache.sh setup does): GPU memory figures are not compiled in");
        return;
    }
    let mut b = build("src/shim/cuda.cpp");
    b.includes(&includes).compile("gradcache_cuda");
    println!("cargo:rustc-link-lib=dylib=c10_cuda");
    println!("cargo:rustc-link-lib=dylib=torch_cuda");
    println!("cargo:rustc-cfg=gradcache_cuda");
}

/// Folders that may hold the CUDA runtime's headers: `$CUDA_HOME/include`,
/// the NVIDIA wheels beside a PyPI torch (`site-packages/nvidia/*/include`:
/// `cuda_runtime` has `cuda_runtime_api.h`, `cuda_nvcc` the `crt/` headers
/// it includes), `/usr/local/cuda/include`; those that exist.
fn cuda_includes(torch_root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        dirs.push(PathBuf::from(home).join("include"));
    }
    if let Some(site) = torch_root.parent() {
        if let Ok(entries) = std::fs::read_dir(site.join("nvidia")) {
            let mut wheels: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path().join("include")).collect();
            wheels.sort();
            dirs.extend(wheels);
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/include"));
    dirs.retain(|d| d.is_dir());
    dirs
}
