//! GPU facts tch 0.17 does not expose, read through gradcache's C++ shim
//! (`src/shim/cuda.cpp`, compiled by `build.rs` where libtorch has CUDA):
//! the CUDA caching allocator's bytes in use, their peak and what it has
//! reserved, and the device's name, memory and CUDA versions. Also the
//! libtorch version (any build).
//!
//! The allocator's figures are what a step's tensors occupy on the device,
//! to the allocator's rounding (512 bytes), and are what the memory budget
//! ([`crate::core::plan`]) and the benchmarks read on a GPU. NVML (the driver's
//! view) was the alternative: it sees only a process's whole footprint,
//! the allocator's cache and the CUDA context included, with no peak, so
//! the growth of one graph cannot be read from it.

use std::ffi::{c_char, c_int, CStr};

use tch::Device;

use crate::error::{GradCacheError, Result};

extern "C" {
    fn gradcache_torch_version() -> *const c_char;
}

/// The version of the libtorch this binary runs on, e.g. `2.4.0`.
pub fn libtorch_version() -> String {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr(gradcache_torch_version()) }.to_string_lossy().into_owned()
}

/// Whether this build reads the CUDA allocator (libtorch with CUDA and the
/// CUDA runtime's headers were found when it was compiled).
pub const CUDA_SHIM: bool = cfg!(gradcache_cuda);

/// The CUDA caching allocator's figures for one device, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuMemory {
    /// Held by live tensors now.
    pub allocated: u64,
    /// The most held at once since the last [`reset_peak`] (or start).
    pub peak: u64,
    /// Reserved from the driver (allocated plus the allocator's cache).
    pub reserved: u64,
}

/// One CUDA device as the runtime describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CudaDevice {
    /// E.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Its memory in bytes.
    pub total_bytes: u64,
    /// Compute capability (major, minor).
    pub capability: (i32, i32),
    /// The CUDA runtime's version, e.g. 12010 for 12.1 (-1 when unknown).
    pub runtime_version: i32,
    /// The newest CUDA version the driver supports, same form.
    pub driver_version: i32,
}

#[cfg(gradcache_cuda)]
mod ffi {
    use std::ffi::{c_char, c_int};
    extern "C" {
        pub fn gradcache_cuda_memory(
            device: c_int,
            allocated: *mut i64,
            peak: *mut i64,
            reserved: *mut i64,
            err: *mut c_char,
            len: usize,
        ) -> c_int;
        pub fn gradcache_cuda_reset_peak(device: c_int, err: *mut c_char, len: usize) -> c_int;
        #[allow(clippy::too_many_arguments)]
        pub fn gradcache_cuda_device(
            device: c_int,
            name: *mut c_char,
            name_len: usize,
            total: *mut i64,
            major: *mut c_int,
            minor: *mut c_int,
            runtime: *mut c_int,
            driver: *mut c_int,
            err: *mut c_char,
            len: usize,
        ) -> c_int;
    }
}

/// Runs a call into gradcache's C++ shim (`src/shim/`), which fills an
/// error buffer and returns non-zero on failure.
pub(crate) fn call(name: &'static str, f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<()> {
    let mut err = [0 as c_char; 512];
    if f(err.as_mut_ptr(), err.len()) == 0 {
        return Ok(());
    }
    // SAFETY: the shim writes a NUL-terminated message within the buffer.
    let message = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
    Err(GradCacheError::LibtorchCall { call: name, message })
}

fn cuda_index(device: Device) -> Result<c_int> {
    match device {
        Device::Cuda(i) if i < tch::Cuda::device_count() as usize => Ok(i as c_int),
        Device::Cuda(_) => Err(GradCacheError::InvalidConfig { field: "device", reason: "names a CUDA device that libtorch does not see" }),
        _ => Err(GradCacheError::PeakMemoryUnavailable { reason: "not a CUDA device" }),
    }
}

#[cfg(not(gradcache_cuda))]
const NOT_BUILT: GradCacheError = GradCacheError::PeakMemoryUnavailable {
    reason: "this build does not read the CUDA allocator (libtorch without CUDA, or no CUDA runtime headers when it was compiled)",
};

/// The caching allocator's figures for `device`.
///
/// # Errors
/// [`GradCacheError::PeakMemoryUnavailable`] for a non-CUDA device or a
/// build without the CUDA shim; [`GradCacheError::InvalidConfig`] for a
/// device libtorch does not see; [`GradCacheError::LibtorchCall`] when the
/// allocator refuses.
pub fn memory(device: Device) -> Result<GpuMemory> {
    let index = cuda_index(device)?;
    #[cfg(gradcache_cuda)]
    {
        let (mut allocated, mut peak, mut reserved) = (0i64, 0i64, 0i64);
        // SAFETY: the out-pointers are valid for the call.
        call("CUDACachingAllocator::getDeviceStats", |e, l| unsafe {
            ffi::gradcache_cuda_memory(index, &mut allocated, &mut peak, &mut reserved, e, l)
        })?;
        Ok(GpuMemory { allocated: allocated as u64, peak: peak as u64, reserved: reserved as u64 })
    }
    #[cfg(not(gradcache_cuda))]
    {
        let _ = index;
        Err(NOT_BUILT)
    }
}

/// Starts a new peak for `device` ([`GpuMemory::peak`] becomes what is
/// allocated now).
///
/// # Errors
/// As [`memory`].
pub fn reset_peak(device: Device) -> Result<()> {
    let index = cuda_index(device)?;
    #[cfg(gradcache_cuda)]
    {
        // SAFETY: no pointers but the error buffer.
        call("CUDACachingAllocator::resetPeakStats", |e, l| unsafe { ffi::gradcache_cuda_reset_peak(index, e, l) })
    }
    #[cfg(not(gradcache_cuda))]
    {
        let _ = index;
        Err(NOT_BUILT)
    }
}

/// What the CUDA runtime says about `device`.
///
/// # Errors
/// As [`memory`].
pub fn device_info(device: Device) -> Result<CudaDevice> {
    let index = cuda_index(device)?;
    #[cfg(gradcache_cuda)]
    {
        let mut name = [0 as c_char; 256];
        let (mut total, mut major, mut minor, mut runtime, mut driver) = (0i64, 0, 0, 0, 0);
        // SAFETY: every pointer is valid for the call; the name buffer's
        // length is passed with it.
        call("getDeviceProperties", |e, l| unsafe {
            ffi::gradcache_cuda_device(
                index,
                name.as_mut_ptr(),
                name.len(),
                &mut total,
                &mut major,
                &mut minor,
                &mut runtime,
                &mut driver,
                e,
                l,
            )
        })?;
        // SAFETY: the shim NUL-terminates the name within the buffer.
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
        Ok(CudaDevice { name, total_bytes: total as u64, capability: (major, minor), runtime_version: runtime, driver_version: driver })
    }
    #[cfg(not(gradcache_cuda))]
    {
        let _ = index;
        Err(NOT_BUILT)
    }
}

/// Bytes held by tensors on `device`: the C allocator's on the CPU
/// ([`crate::runtime::allocated_bytes`]), the caching allocator's on a GPU.
/// What the memory budget's probe reads before and after a graph.
///
/// # Errors
/// As [`crate::runtime::allocated_bytes`] and [`memory`].
pub fn allocated_bytes_on(device: Device) -> Result<u64> {
    match device {
        Device::Cpu => Ok(crate::runtime::allocated_bytes()? as u64),
        d => Ok(memory(d)?.allocated),
    }
}

/// Bytes free for new work on `device`: `MemAvailable` on the CPU; on a
/// GPU the device's memory less what the caching allocator has reserved
/// (other processes on the same GPU are not seen). What
/// `{"budget": "auto"}` takes a share of.
///
/// # Errors
/// As [`crate::runtime::available_bytes`] and [`memory`].
pub fn available_bytes_on(device: Device) -> Result<u64> {
    match device {
        Device::Cpu => crate::runtime::available_bytes(),
        d => Ok(device_info(d)?.total_bytes.saturating_sub(memory(d)?.reserved)),
    }
}

/// Waits for the work queued on `device` (nothing on the CPU), so that a
/// wall time measured after it means something.
pub fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// A peak-memory measurement under way on a GPU: started by
/// [`start_peak`], read by [`PeakWatch::peak_mb`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakWatch {
    device: Device,
    base: u64,
}

/// Resets the allocator's peak counter on `device` and notes what is
/// allocated now.
///
/// # Errors
/// As [`reset_peak`] and [`memory`].
pub fn start_peak(device: Device) -> Result<PeakWatch> {
    reset_peak(device)?;
    Ok(PeakWatch { device, base: memory(device)?.allocated })
}

impl PeakWatch {
    /// The allocator's peak since [`start_peak`], above what was allocated
    /// then, in MB.
    ///
    /// # Errors
    /// As [`memory`].
    pub fn peak_mb(&self) -> Result<f64> {
        Ok(memory(self.device)?.peak.saturating_sub(self.base) as f64 / (1u64 << 20) as f64)
    }
}
