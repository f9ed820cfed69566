//! The two-cache step must give the full-batch step's loss and gradients,
//! for every head × every loss, with dropout on in the encoders and the head.

mod common;

use common::*;
use gradcache::StepConfig;
use tch::Kind;

/// Uneven cuts everywhere: 6 queries in chunks of 4 (4 + 2), 18 passages in
/// chunks of 5 (5+5+5+3), a 2 × 3 grid of head blocks (4 + 2 rows, 7+7+4 cols).
fn uneven() -> StepConfig {
    StepConfig {
        layout: gradcache::Layout { query_chunk_size: 4, passage_chunk_size: 5, head_block_queries: 4, head_block_passages: 7 },
        ..StepConfig::default()
    }
}

fn run_matrix(kind: Kind, tol: gradcache::check::Tolerance) {
    let _serial = serial();
    for head in HEADS {
        for loss_kind in LOSSES {
            for tied in [true, false] {
                let model = Model::new(head, tied, kind, 0.2);
                let data = data(6, 3, loss_kind, 7);
                let loss = loss(loss_kind);
                let c = compare(&model, &data, loss.as_ref(), uneven());
                assert_exact(&c, tol, &format!("{head:?} × {loss_kind:?}, tied={tied}, {kind:?}"));
            }
        }
    }
}

#[test]
fn every_head_and_loss_f64() {
    run_matrix(Kind::Double, F64_TOL);
}

#[test]
fn every_head_and_loss_f32() {
    run_matrix(Kind::Float, F32_TOL);
}

#[test]
fn block_grids_from_one_by_one_to_every_pair_alone() {
    let _serial = serial();
    let cases = [
        ("chunks and blocks ≥ batch (1 × 1 grid)", StepConfig::default().whole_batch(1000)),
        (
            "single-item chunks, single-pair blocks (N × M grid)",
            StepConfig {
                layout: gradcache::Layout { query_chunk_size: 1, passage_chunk_size: 1, head_block_queries: 1, head_block_passages: 1 },
                ..StepConfig::default()
            },
        ),
        (
            "chunks equal to the batch, many blocks",
            StepConfig {
                layout: gradcache::Layout { query_chunk_size: 5, passage_chunk_size: 20, head_block_queries: 2, head_block_passages: 3 },
                ..StepConfig::default()
            },
        ),
    ];
    for head in HEADS {
        for (name, config) in &cases {
            let model = Model::new(head, false, Kind::Double, 0.2);
            let data = data(5, 4, LossKind::InfoNce, 3);
            let loss = loss(LossKind::Symmetric);
            let c = compare(&model, &data, loss.as_ref(), config.clone());
            assert_exact(&c, F64_TOL, &format!("{head:?}: {name}"));
        }
    }
}

#[test]
fn odd_batch_sizes() {
    let _serial = serial();
    // Batch sizes that are prime, smaller than a chunk, and a chunk plus one.
    for (n, g) in [(7, 2), (1, 5), (5, 1)] {
        for head in HEADS {
            let model = Model::new(head, true, Kind::Double, 0.2);
            let data = data(n, g, LossKind::InfoNce, 11);
            let loss = loss(LossKind::InfoNce);
            let c = compare(&model, &data, loss.as_ref(), uneven());
            assert_exact(&c, F64_TOL, &format!("{head:?}, n={n}, g={g}"));
        }
    }
}

#[test]
fn dropout_is_really_on() {
    let _serial = serial();
    // Exactness with dropout only means something if dropout changes the
    // result: two steps from different generator states must differ.
    let model = Model::new(HeadKind::Mlp, true, Kind::Double, 0.2);
    let data = data(6, 3, LossKind::InfoNce, 7);
    let loss = loss(LossKind::InfoNce);
    let mut gc = model.step(uneven(), loss.as_ref());
    tch::manual_seed(1);
    let a = gc.step(&data.queries, &data.passages, &data.targets).unwrap().loss;
    tch::manual_seed(2);
    let b = gc.step(&data.queries, &data.passages, &data.targets).unwrap().loss;
    tch::manual_seed(1);
    let a_again = gc.step(&data.queries, &data.passages, &data.targets).unwrap().loss;
    assert_ne!(a, b, "dropout had no effect");
    assert_eq!(a, a_again, "the step is not reproducible from the generator state");
}
