//! Gradient accumulation, the paper's baseline: equal to the full batch when
//! a sub-batch is the whole batch, and *not* equal otherwise, because each
//! sub-batch sees only its own passages as negatives.

mod common;

use common::*;
use gradcache::check::{zero_grads, GradientSnapshot};
use gradcache::Chunk;
use gradcache::{GradCacheError, StepConfig, Targets};
use tch::Kind;

#[test]
fn one_sub_batch_is_the_full_batch() {
    let _serial = serial();
    for head in HEADS {
        // Dropout off: accumulation draws its own per-sub-batch seeds.
        let model = Model::new(head, false, Kind::Double, 0.0);
        let data = data(6, 3, LossKind::InfoNce, 5);
        let loss = loss(LossKind::InfoNce);
        let mut gc = model.step(StepConfig::default(), loss.as_ref());
        zero_grads(&model.vs);
        let acc = gc.accumulation_step(&data.queries, &data.passages, &data.targets, 6).unwrap();
        let acc_grads = GradientSnapshot::take(&model.vs).unwrap();
        zero_grads(&model.vs);
        let full = gc.full_batch_step(&data.queries, &data.passages, &data.targets).unwrap();
        let full_grads = GradientSnapshot::take(&model.vs).unwrap();
        assert!((acc.loss - full.loss).abs() < 1e-12, "{head:?}: {} vs {}", acc.loss, full.loss);
        let cmp = acc_grads.compare(&full_grads).unwrap();
        assert!(cmp.failures(F64_TOL).is_empty(), "{head:?}:\n{cmp}");
    }
}

#[test]
fn smaller_sub_batches_see_fewer_negatives() {
    let _serial = serial();
    let model = Model::new(HeadKind::Mlp, true, Kind::Double, 0.0);
    let data = data(6, 3, LossKind::InfoNce, 5);
    let loss = loss(LossKind::InfoNce);
    let mut gc = model.step(StepConfig::default(), loss.as_ref());
    let full = gc.full_batch_step(&data.queries, &data.passages, &data.targets).unwrap().loss;
    let acc = gc.accumulation_step(&data.queries, &data.passages, &data.targets, 2).unwrap().loss;
    // Its loss is the query-weighted mean of three independent 2-query batches.
    let mut expected = 0.0;
    for start in [0, 2, 4] {
        let q = data.queries.chunk(start, 2).unwrap();
        let p = data.passages.chunk(start * 3, 6).unwrap();
        let t = Targets::grouped(2, 6, 3).unwrap();
        expected += gc.full_batch_step(&q, &p, &t).unwrap().loss * 2.0 / 6.0;
    }
    assert!((acc - expected).abs() < 1e-12, "{acc} vs {expected}");
    // Dropping negatives from every softmax denominator lowers InfoNCE.
    assert!(acc < full, "accumulation {acc} should be below the full batch {full}");
}

#[test]
fn accumulation_needs_groups_and_a_sub_batch() {
    let _serial = serial();
    let model = Model::new(HeadKind::Dot, true, Kind::Float, 0.0);
    let data = data(4, 2, LossKind::InfoNce, 5);
    let loss = loss(LossKind::InfoNce);
    let gc = model.step(StepConfig::default(), loss.as_ref());
    let err = gc.accumulation_step(&data.queries, &data.passages, &data.targets, 0).unwrap_err();
    assert!(matches!(err, GradCacheError::InvalidConfig { field: "sub_batch_queries", .. }), "{err}");
    let free = Targets::from_positives(8, vec![vec![0], vec![3], vec![5], vec![7]]).unwrap();
    let err = gc.accumulation_step(&data.queries, &data.passages, &free, 2).unwrap_err();
    assert!(matches!(err, GradCacheError::TargetsIncomplete { .. }), "{err}");
}
