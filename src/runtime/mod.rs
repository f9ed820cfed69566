//! Process-level settings for gradcache's binaries: the device, and glibc's
//! allocator.

use tch::Device;

use crate::error::{GradCacheError, Result};

/// Parses `cpu`, `cuda`, `cuda:N` or `auto` (CUDA device 0 when libtorch
/// sees one, else the CPU).
///
/// # Errors
/// [`GradCacheError::InvalidConfig`] for anything else, or a CUDA device
/// libtorch does not see.
pub fn parse_device(name: &str) -> Result<Device> {
    let bad = |reason| GradCacheError::InvalidConfig { field: "device", reason };
    let device = match name.trim() {
        "cpu" => Device::Cpu,
        "auto" => Device::cuda_if_available(),
        "cuda" => Device::Cuda(0),
        other => {
            let index = other.strip_prefix("cuda:").ok_or(bad("must be cpu, cuda, cuda:N or auto"))?;
            Device::Cuda(index.parse().map_err(|_| bad("must be cpu, cuda, cuda:N or auto"))?)
        }
    };
    if let Device::Cuda(i) = device {
        if i >= tch::Cuda::device_count() as usize {
            return Err(bad("names a CUDA device that libtorch does not see"));
        }
    }
    Ok(device)
}

/// Keeps glibc from mapping and unmapping large tensor buffers on every
/// allocation: raises the mmap threshold to 32 MiB and the trim threshold to
/// 1 GiB. Measured on BERT training (see `docs/encoder-speed.md`), the
/// default thresholds cost millions of page faults per few steps. Call it
/// first thing in `main`; returns whether glibc accepted both settings
/// (always false off glibc).
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is called
        // with valid constants and has no memory-safety preconditions.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// The process's peak resident set so far (`VmHWM` in `/proc/self/status`),
/// in MiB: what the benchmarks report as peak memory on the CPU.
///
/// # Errors
/// [`GradCacheError::Io`] when the file cannot be read (not Linux);
/// [`GradCacheError::PeakMemoryUnavailable`] when it has no readable
/// `VmHWM` line.
pub fn peak_resident_mb() -> Result<f64> {
    let path = std::path::Path::new("/proc/self/status");
    let status = std::fs::read_to_string(path).map_err(crate::error::io_error(path))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .ok_or(GradCacheError::PeakMemoryUnavailable { reason: "no readable VmHWM line in /proc/self/status" })
}

/// Bytes the C allocator has handed out and not taken back (glibc's
/// `mallinfo2`: heap in use plus mmapped blocks): what a graph's CPU tensors
/// occupy, to the byte, unlike the resident set, which freed-but-kept heap
/// keeps high.
///
/// # Errors
/// [`GradCacheError::PeakMemoryUnavailable`] off glibc.
pub fn allocated_bytes() -> Result<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let info = unsafe { libc::mallinfo2() };
        Ok(info.uordblks + info.hblkhd)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        Err(GradCacheError::PeakMemoryUnavailable { reason: "allocator statistics need glibc" })
    }
}

/// The memory the system reports available for new work (`MemAvailable`
/// in `/proc/meminfo`), in bytes: what `{"budget": "auto"}` takes a share
/// of.
///
/// # Errors
/// [`GradCacheError::Io`] when the file cannot be read (not Linux);
/// [`GradCacheError::PeakMemoryUnavailable`] when it has no readable
/// `MemAvailable` line.
pub fn available_bytes() -> Result<u64> {
    let path = std::path::Path::new("/proc/meminfo");
    let info = std::fs::read_to_string(path).map_err(crate::error::io_error(path))?;
    info.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or(GradCacheError::PeakMemoryUnavailable { reason: "no readable MemAvailable line in /proc/meminfo" })
}

/// A measured matrix-multiply rate and the element kind it was measured
/// in: what a step's achieved rates are set against, in the precision the
/// step runs in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatmulRate {
    /// GFLOP/s.
    pub gflops: f64,
    /// `Float` or, under `--precision bf16`, `BFloat16`.
    pub kind: tch::Kind,
}

impl MatmulRate {
    /// How the rate is named in a report: `" bf16"` for a bf16 rate,
    /// nothing for f32 (the reports' wording before bf16 probes).
    pub fn label(&self) -> &'static str {
        match self.kind {
            tch::Kind::BFloat16 => " bf16",
            tch::Kind::Half => " f16",
            _ => "",
        }
    }
}

/// This machine's dense matrix-multiply rate through libtorch on `device`
/// with its current threads, in GFLOP/s, for elements of `kind` (`Float`;
/// `BFloat16`, which CPUs with AMX or avx512_bf16 run several times
/// faster): `[m, k] × [k, n]` multiplied until `seconds` have passed
/// (after one warm-up product), the best of those runs.
///
/// # Shapes
/// `[m, k] × [k, n]`.
///
/// # Errors
/// libtorch errors (e.g. a kind the device cannot multiply).
pub fn matmul_gflops(device: Device, (m, k, n): (i64, i64, i64), kind: tch::Kind, seconds: f64) -> Result<MatmulRate> {
    let a = tch::Tensor::f_randn([m, k], (kind, device))?;
    let b = tch::Tensor::f_randn([k, n], (kind, device))?;
    let run = || -> Result<f64> {
        let t = std::time::Instant::now();
        let c = a.f_matmul(&b)?;
        gpu::synchronize(c.device());
        Ok(t.elapsed().as_secs_f64())
    };
    run()?;
    let (started, mut best) = (std::time::Instant::now(), f64::INFINITY);
    while started.elapsed().as_secs_f64() < seconds || best.is_infinite() {
        best = best.min(run()?);
    }
    Ok(MatmulRate { gflops: 2.0 * (m * k * n) as f64 / best / 1e9, kind })
}

/// The shape [`matmul_gflops`] measures by default: large and square,
/// where libtorch's kernels reach their peak.
pub const MATMUL_PROBE_SHAPE: (i64, i64, i64) = (1024, 1024, 1024);

pub mod embedding;
pub mod gpu;
pub mod precision;
