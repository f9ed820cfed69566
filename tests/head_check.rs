//! The exactness checker passes every built-in head and catches the three
//! ways a head breaks exactness: state kept across calls, randomness the
//! step does not replay, and coupling between the pairs of a block.

mod common;

use std::cell::Cell;

use common::*;
use gradcache::check::{check_head, HeadCheckReport};
use gradcache::models::heads::DotHead;
use gradcache::{GradCache, GradCacheError, InfoNce, Representation, ScoringHead, StepConfig};
use tch::{nn, Kind, Tensor};

fn layout() -> StepConfig {
    StepConfig {
        layout: gradcache::Layout { query_chunk_size: 4, passage_chunk_size: 5, head_block_queries: 4, head_block_passages: 7 },
        ..StepConfig::default()
    }
}

fn run(model: &Model, head: &dyn ScoringHead) -> HeadCheckReport {
    let data = data(6, 3, LossKind::InfoNce, 7);
    let loss = InfoNce { temperature: 0.5, symmetric: false };
    let gc = GradCache::tied(layout(), &model.query, head, &loss).unwrap();
    check_head(&gc, &model.vs, &data.queries, &data.passages, &data.targets, F64_TOL).unwrap()
}

#[test]
fn every_built_in_head_passes_with_dropout_on() {
    let _serial = serial();
    for kind in HEADS {
        let model = Model::new(kind, true, Kind::Double, 0.2);
        let report = run(&model, model.head.as_ref());
        assert!(report.passed(), "{kind:?}:\n{report}");
        assert!(report.to_string().starts_with("head check: PASSED"));
    }
}

/// State kept across calls: every call scales the scores a bit more.
struct Stateful {
    calls: Cell<u32>,
}
impl ScoringHead for Stateful {
    fn score(&self, q: &Representation, p: &Representation, train: bool) -> gradcache::Result<Tensor> {
        self.calls.set(self.calls.get() + 1);
        Ok(DotHead.score(q, p, train)?.f_mul_scalar(1.0 + 0.1 * self.calls.get() as f64)?)
    }
}

/// Randomness from its own generator (here: re-seeding libtorch with a
/// private counter), which the step cannot replay.
struct PrivateRandom {
    calls: Cell<i64>,
}
impl ScoringHead for PrivateRandom {
    fn score(&self, q: &Representation, p: &Representation, train: bool) -> gradcache::Result<Tensor> {
        self.calls.set(self.calls.get() + 1);
        tch::manual_seed(1_000 + self.calls.get());
        let u = q.tensor().f_dropout(0.3, train)?;
        Ok(u.f_matmul(&p.tensor().f_tr()?)?)
    }
}

/// Batch normalisation of the block's queries (train mode: block statistics).
struct BatchNormed {
    norm: nn::BatchNorm,
}
impl ScoringHead for BatchNormed {
    fn score(&self, q: &Representation, p: &Representation, train: bool) -> gradcache::Result<Tensor> {
        let u = nn::ModuleT::forward_t(&self.norm, q.tensor(), train);
        Ok(u.f_matmul(&p.tensor().f_tr()?)?)
    }
}

/// Scores centred on their block's mean: a batch-level statistic.
struct BlockCentred;
impl ScoringHead for BlockCentred {
    fn score(&self, q: &Representation, p: &Representation, train: bool) -> gradcache::Result<Tensor> {
        let s = DotHead.score(q, p, train)?;
        Ok(s.f_sub(&s.f_mean(s.kind())?)?)
    }
}

fn vector_model() -> Model {
    Model::new(HeadKind::Dot, true, Kind::Double, 0.2)
}

#[test]
fn state_kept_across_calls_is_caught() {
    let _serial = serial();
    let model = vector_model();
    let report = run(&model, &Stateful { calls: Cell::new(0) });
    assert!(!report.passed());
    assert!(matches!(report.replay, Some(GradCacheError::ReplayMismatch { .. })), "{report}");
    assert!(!report.gradients.failures(F64_TOL).is_empty(), "{report}");
    assert!(report.to_string().contains("state kept across calls"));
}

#[test]
fn randomness_that_is_not_replayed_is_caught() {
    let _serial = serial();
    let model = vector_model();
    let report = run(&model, &PrivateRandom { calls: Cell::new(0) });
    assert!(!report.passed());
    assert!(matches!(report.replay, Some(GradCacheError::ReplayMismatch { .. })), "{report}");
    assert!(!report.gradients.failures(F64_TOL).is_empty(), "{report}");
}

#[test]
fn batch_normalisation_is_caught() {
    let _serial = serial();
    let model = vector_model();
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let norm = nn::batch_norm1d(vs.root() / "bn", DIM as i64, Default::default());
    vs.double();
    let report = run(&model, &BatchNormed { norm });
    assert!(!report.passed(), "{report}");
    assert!(report.coupling.train_mode, "the head is deterministic, so coupling is checked in train mode");
    assert!(report.coupling.relative_diff > 1e-3, "{report}");
    assert!(report.to_string().contains("batch norm or block statistics"));
}

#[test]
fn block_statistics_are_caught() {
    let _serial = serial();
    let model = vector_model();
    let report = run(&model, &BlockCentred);
    assert!(!report.passed(), "{report}");
    assert!(report.coupling.relative_diff > 1e-3, "{report}");
}
