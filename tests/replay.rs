//! The suite must catch a step whose second passes do not replay the first
//! passes' random state. The five passes are public, so these tests compose
//! them by hand: once correctly, once with the head and encoder passes run on
//! seeds that were never used in the first passes (what skipping the re-seed
//! does).

mod common;

use common::*;
use gradcache::check::{zero_grads, GradientSnapshot};
use gradcache::core::plan::Plan;
use gradcache::core::replay::ReplaySeeds;
use gradcache::{GradCacheError, StepConfig};
use tch::Kind;

fn config(check_replay: bool) -> StepConfig {
    StepConfig {
        layout: gradcache::Layout { query_chunk_size: 4, passage_chunk_size: 5, head_block_queries: 4, head_block_passages: 7 },
        check_replay,
        ..StepConfig::default()
    }
}

/// Runs the five passes by hand; the first passes use the seeds that
/// `full_batch_step` draws after `manual_seed(99)`, the second passes use
/// `second` (the same seeds when `replay` is true).
fn manual_step(model: &Model, data: &Data, check_replay: bool, replay: bool) -> Result<GradientSnapshot, GradCacheError> {
    let loss = loss(LossKind::InfoNce);
    let gc = model.step(config(check_replay), loss.as_ref());
    zero_grads(&model.vs);
    tch::manual_seed(99);
    let seeds = ReplaySeeds::draw()?;
    let second = if replay { seeds } else { seeds.child(12345) };
    let plan = Plan::layout_of(gc.config(), &data.queries, &data.passages)?;
    let mut reps = gc.representation_pass(&data.queries, &data.passages, &plan, &seeds)?;
    let mut scores = gc.score_pass(&reps, &plan, &seeds)?;
    let cache = gc.distance_gradient_cache(&scores, &data.targets)?;
    let grads = gc.head_pass(&reps, &mut scores, &cache, &plan, &second)?.gradients;
    gc.encoder_pass(&data.queries, &data.passages, &mut reps, &grads, &plan, &second)?;
    GradientSnapshot::take(&model.vs)
}

fn reference(model: &Model, data: &Data) -> GradientSnapshot {
    let loss = loss(LossKind::InfoNce);
    let mut gc = model.step(config(true), loss.as_ref());
    zero_grads(&model.vs);
    tch::manual_seed(99);
    gc.full_batch_step(&data.queries, &data.passages, &data.targets).unwrap();
    GradientSnapshot::take(&model.vs).unwrap()
}

#[test]
fn replayed_passes_composed_by_hand_are_exact() {
    let _serial = serial();
    let model = Model::new(HeadKind::Mlp, true, Kind::Double, 0.2);
    let data = data(6, 3, LossKind::InfoNce, 7);
    let ours = manual_step(&model, &data, true, true).unwrap();
    let cmp = ours.compare(&reference(&model, &data)).unwrap();
    assert!(cmp.failures(F64_TOL).is_empty(), "{cmp}");
}

#[test]
fn broken_replay_is_caught_by_the_gradient_comparison() {
    let _serial = serial();
    for head in [HeadKind::Mlp, HeadKind::Dot] {
        let model = Model::new(head, true, Kind::Double, 0.2);
        let data = data(6, 3, LossKind::InfoNce, 7);
        // Replay check off: the step runs to the end with wrong gradients.
        let ours = manual_step(&model, &data, false, false).unwrap();
        let cmp = ours.compare(&reference(&model, &data)).unwrap();
        assert!(!cmp.failures(F64_TOL).is_empty(), "{head:?}: broken replay went unnoticed:\n{cmp}");
        assert!(!cmp.failures(F32_TOL).is_empty(), "{head:?}: broken replay hides inside the f32 tolerance:\n{cmp}");
        assert!(cmp.max_rel_diff() > 1e-2, "{head:?}: expected a gross error, got {:e}", cmp.max_rel_diff());
    }
}

#[test]
fn broken_replay_is_caught_by_the_replay_check() {
    let _serial = serial();
    let model = Model::new(HeadKind::Mlp, true, Kind::Double, 0.2);
    let data = data(6, 3, LossKind::InfoNce, 7);
    match manual_step(&model, &data, true, false) {
        Err(GradCacheError::ReplayMismatch { max_abs_diff, tolerance, .. }) => assert!(max_abs_diff > tolerance),
        other => panic!("expected a replay mismatch, got {other:?}"),
    }
}

#[test]
fn without_dropout_the_seeds_do_not_matter() {
    // Control for the two tests above: with dropout off, mismatched seeds are
    // harmless, so their failures come from the random state alone.
    let _serial = serial();
    let model = Model::new(HeadKind::Mlp, true, Kind::Double, 0.0);
    let data = data(6, 3, LossKind::InfoNce, 7);
    let ours = manual_step(&model, &data, true, false).unwrap();
    let cmp = ours.compare(&reference(&model, &data)).unwrap();
    assert!(cmp.failures(F64_TOL).is_empty(), "{cmp}");
}
