//! The device check's recipe on the CPU (`--quick`): every section runs,
//! every check passes, and the report says so. The GPU run itself is
//! examples/device_check on a GPU machine (docs/gpu.md).

#[allow(dead_code)]
#[path = "../examples/device_check/harness.rs"]
mod harness;

use gradcache::models::heads::HeadConfig;
use harness::{run, DeviceCheckConfig};
use tch::Device;

#[test]
fn the_quick_device_check_passes_on_the_cpu_and_reports_every_section() {
    // No time budget: the climb is bounded by max_batch alone, so every
    // size runs however slow the machine is (a 60 s budget dropped a row
    // when a cold first step took 0.667 s under load).
    let config = DeviceCheckConfig { quick: true, max_batch: 16, scaling_seconds: f64::INFINITY, ..DeviceCheckConfig::new(Device::Cpu) };
    let mut lines = Vec::new();
    let report = run(&config, &mut |l| lines.push(l.to_string())).unwrap();
    assert!(report.passed, "{}", report.to_markdown());
    // Every built-in head in f32 and f64, plus the two extra losses.
    assert_eq!(report.exactness.len(), 2 * (HeadConfig::NAMES.len() + 2));
    for head in HeadConfig::NAMES {
        assert!(report.exactness.iter().any(|r| r.head == head && r.dtype == "f64"), "{head} missing");
    }
    assert!(report.exactness.iter().all(|r| r.tolerance_used <= 1.0 && r.replay_error.is_none()));
    assert_eq!(report.replay.same_seed_diff, 0.0);
    assert!(report.replay.other_seed_diff > 0.0 && report.replay.unreplayed.starts_with("caught"));
    // Three heads × three methods at 8 and 16 queries.
    assert_eq!(report.scaling.len(), 18, "{:?}", report.scaling);
    assert!(report.scaling.iter().all(|r| r.seconds.is_some() && r.peak_mb.is_none()));
    // Four budgets, each estimate within its budget; no measured peak on the CPU.
    assert_eq!(report.budgets.len(), 4);
    assert!(report.budgets.iter().all(|b| b.estimated_mb <= b.budget_mb && b.measured_mb.is_none()), "{:?}", report.budgets);
    assert!(report.precision.vs_full_batch <= 0.1 * report.precision.vs_f32);
    assert!(report.training_losses.last() < report.training_losses.first());
    let md = report.to_markdown();
    for section in ["# Device check: passed", "## 1. Device", "## 2. Exactness", "## 3. Step time", "## 4. bf16", "## 5. Training"] {
        assert!(md.contains(section), "{section} missing from the report");
    }
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["environment"]["libtorch"], gradcache::runtime::gpu::libtorch_version());
    assert!(!lines.is_empty());
}
