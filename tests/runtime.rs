//! Device names and the allocator setting.

use gradcache::runtime::{parse_device, tune_allocator};
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
