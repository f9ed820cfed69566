//! Device names and the allocator setting.

use gradcache::runtime::{parse_device, peak_resident_mb, tune_allocator};
use gradcache::GradCacheError;
use tch::Device;

#[test]
fn device_names() {
    assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
    assert_eq!(parse_device(" cpu ").unwrap(), Device::Cpu);
    assert_eq!(parse_device("auto").unwrap(), Device::cuda_if_available());
    for bad in ["gpu", "cuda:x", "cuda:-1", "", "CPU"] {
        assert!(matches!(parse_device(bad), Err(GradCacheError::InvalidConfig { field: "device", .. })), "{bad:?}");
    }
    // A device index past the last one libtorch sees.
    let past = format!("cuda:{}", tch::Cuda::device_count());
    assert!(matches!(parse_device(&past), Err(GradCacheError::InvalidConfig { field: "device", .. })));
    if tch::Cuda::device_count() == 0 {
        assert!(parse_device("cuda").is_err(), "no CUDA device here");
    }
}

#[test]
fn allocator_tuning_is_accepted_by_glibc() {
    assert_eq!(tune_allocator(), cfg!(all(target_os = "linux", target_env = "gnu")));
}

#[test]
fn peak_resident_memory_grows_with_a_touched_buffer_and_never_falls() {
    let before = peak_resident_mb().unwrap();
    assert!(before > 1.0, "{before}");
    // Touch 64 MiB: the peak must rise by about that much, and stay up
    // after the buffer is freed.
    let buffer = vec![1u8; 64 << 20];
    let during = peak_resident_mb().unwrap();
    assert_eq!(buffer.iter().map(|&b| b as usize).sum::<usize>(), 64 << 20);
    drop(buffer);
    let after = peak_resident_mb().unwrap();
    assert!(during - before > 48.0, "{before} -> {during}");
    // The kernel syncs per-thread RSS counters lazily (every 64 faults), so
    // two readings may differ by a little in either direction; a peak that
    // fell back with the freed buffer would drop by ~64 MiB.
    assert!(after > during - 8.0, "{during} -> {after}");
}

/// The matmul probe measures in the kind it is asked for: the step's
/// precision decides which rate its passes are read against.
#[test]
fn the_matmul_probe_measures_the_precision_it_is_given() {
    use gradcache::runtime::precision::Precision;
    for precision in [Precision::F32, Precision::Bf16] {
        let rate = gradcache::runtime::matmul_gflops(tch::Device::Cpu, (64, 64, 64), precision.matmul_kind(), 0.01).unwrap();
        assert_eq!(rate.kind, precision.matmul_kind());
        assert!(rate.gflops.is_finite() && rate.gflops > 0.0, "{rate:?}");
    }
    assert_eq!(Precision::Bf16.matmul_kind(), tch::Kind::BFloat16);
    assert_eq!(Precision::F32.matmul_kind(), tch::Kind::Float);
}
