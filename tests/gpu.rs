//! The libtorch shim's readers on a machine without a GPU: typed errors,
//! never a crash; and the libtorch version it was built against.

use gradcache::GradCacheError;
use tch::Device;

#[test]
fn the_shim_reports_the_libtorch_it_was_built_against() {
    // scripts/gradcache.sh setup installs torch==2.4.0; the device build
    // (torch 2.11) has its own check in examples/device_check's report.
    let version = gradcache::runtime::gpu::libtorch_version();
    assert!(version.starts_with("2."), "{version}");
    assert_eq!(version, std::env::var("GRADCACHE_EXPECT_LIBTORCH").unwrap_or_else(|_| "2.4.0".into()));
}

#[test]
fn gpu_readers_refuse_the_cpu_and_absent_devices_with_typed_errors() {
    match gradcache::runtime::gpu::memory(Device::Cpu) {
        Err(GradCacheError::PeakMemoryUnavailable { .. }) => {}
        other => panic!("expected PeakMemoryUnavailable for the CPU, got {other:?}"),
    }
    if tch::Cuda::device_count() == 0 {
        for result in [
            gradcache::runtime::gpu::memory(Device::Cuda(0)).map(|_| ()),
            gradcache::runtime::gpu::reset_peak(Device::Cuda(0)),
            gradcache::runtime::gpu::device_info(Device::Cuda(0)).map(|_| ()),
        ] {
            match result {
                Err(GradCacheError::InvalidConfig { field: "device", .. }) => {}
                other => panic!("expected InvalidConfig for an absent CUDA device, got {other:?}"),
            }
        }
    }
    // The CPU side of the probe's reader works everywhere on glibc.
    assert!(gradcache::runtime::gpu::allocated_bytes_on(Device::Cpu).unwrap() > 0);
    assert!(gradcache::runtime::gpu::available_bytes_on(Device::Cpu).unwrap() > 0);
}
