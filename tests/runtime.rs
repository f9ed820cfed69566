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

/// The embedding lookup's gradient: the same values as libtorch's dense
/// backward, accumulated over several backward passes into a dense
/// `.grad()` even when the weight had none; and the rows no id touched stay
/// zero. libtorch's own sparse lookup, on a weight without a gradient,
/// leaves a sparse `.grad()` (what optimizers, clipping and all-reduce
/// cannot take): the helper must not.
#[test]
fn embedding_gradients_are_dense_and_equal_the_dense_backward() {
    use gradcache::runtime::embedding::{embedding, grad_enabled};
    use tch::{Kind, Tensor};
    tch::manual_seed(3);
    let table = Tensor::randn([50, 8], (Kind::Float, Device::Cpu));
    let chunks = [Tensor::from_slice(&[3i64, 7, 3, 0, 49]).view([1, 5]), Tensor::from_slice(&[7i64, 7, 12, 3]).view([2, 2])];
    let upstream: Vec<Tensor> =
        chunks.iter().map(|ids| Tensor::randn(ids.size().into_iter().chain([8]).collect::<Vec<_>>(), (Kind::Float, Device::Cpu))).collect();
    let run = |lookup: &dyn Fn(&Tensor, &Tensor) -> Tensor| {
        let w = table.detach().copy().set_requires_grad(true);
        for (ids, g) in chunks.iter().zip(&upstream) {
            (lookup(&w, ids) * g).sum(Kind::Float).backward();
        }
        w.grad()
    };
    let dense = run(&|w, ids| Tensor::embedding(w, ids, -1, false, false));
    let ours = run(&|w, ids| embedding(w, ids).unwrap());
    assert!(!ours.is_sparse(), "the helper left a sparse gradient");
    assert_eq!(ours.size(), vec![50, 8]);
    let diff = f64::try_from((&ours - &dense).abs().max()).unwrap();
    assert!(diff < 1e-6, "{diff}");
    // Row 1 was never looked up; row 7 three times.
    assert_eq!(f64::try_from(ours.get(1).abs().sum(Kind::Float)).unwrap(), 0.0);
    assert!(f64::try_from(ours.get(7).abs().sum(Kind::Float)).unwrap() > 0.0);
    // The hazard the helper avoids.
    let raw = run(&|w, ids| Tensor::embedding(w, ids, -1, false, true));
    assert!(raw.is_sparse());
    // Without autograd the lookup sets no gradient.
    let w = table.detach().copy().set_requires_grad(true);
    let out = tch::no_grad(|| {
        assert!(!grad_enabled());
        embedding(&w, &chunks[0]).unwrap()
    });
    assert!(grad_enabled());
    assert!(!w.grad().defined() && !out.requires_grad());
}
