//! The memory plan: chunks and blocks whose first-pass graph is kept
//! (retained) instead of recomputed. Every mix must give the full-batch
//! gradients, with dropout on, for every head, tied and separate encoders.

mod common;

use common::*;
use gradcache::plan::{MemoryConfig, Plan, Recompute, RetainCounts};
use gradcache::StepConfig;
use tch::Kind;

fn layout(memory: MemoryConfig) -> StepConfig {
    // Uneven on purpose: 5 queries in chunks of 2, 15 passages in chunks of
    // 4, blocks of 2 × 6 (3 × 3 grid).
    StepConfig { query_chunk_size: 2, passage_chunk_size: 4, head_block_queries: 2, head_block_passages: 6, memory, ..StepConfig::default() }
}

fn mixes() -> Vec<(&'static str, MemoryConfig)> {
    let retain = |q, p, b| MemoryConfig::Retain { retain: RetainCounts { query_chunks: q, passage_chunks: p, head_blocks: b } };
    vec![
        ("recompute none", MemoryConfig::Recompute { recompute: Recompute::None }),
        ("first chunk and block of each", retain(1, 1, 1)),
        ("half", retain(2, 2, 4)),
        ("passages only", retain(0, 4, 0)),
        ("blocks only, across a row boundary", retain(0, 0, 5)),
    ]
}

#[test]
fn every_mix_of_retained_and_recomputed_gives_the_full_batch_gradients() {
    let _serial = serial();
    for head in HEADS {
        for tied in [true, false] {
            for (name, memory) in mixes() {
                let model = Model::new(head, tied, Kind::Double, 0.2);
                let data = data(5, 3, LossKind::InfoNce, 7);
                let loss = loss(LossKind::InfoNce);
                let c = compare(&model, &data, loss.as_ref(), layout(memory));
                assert_exact(&c, F64_TOL, &format!("{head:?}, tied {tied}: {name}"));
            }
        }
    }
}

#[test]
fn retained_mixes_are_exact_in_f32_too() {
    let _serial = serial();
    for head in [HeadKind::Mlp, HeadKind::Interaction, HeadKind::MaxSim] {
        for (name, memory) in mixes() {
            let model = Model::new(head, true, Kind::Float, 0.2);
            let data = data(5, 3, LossKind::InfoNce, 8);
            let loss = loss(LossKind::InfoNce);
            let c = compare(&model, &data, loss.as_ref(), layout(memory));
            assert_exact(&c, F32_TOL, &format!("{head:?} f32: {name}"));
        }
    }
}

#[test]
fn the_step_reports_what_it_kept_and_the_plan_counts_it() {
    let _serial = serial();
    let model = Model::new(HeadKind::Mlp, true, Kind::Double, 0.2);
    let data = data(5, 3, LossKind::InfoNce, 9);
    let loss = loss(LossKind::InfoNce);
    let memory = MemoryConfig::Retain { retain: RetainCounts { query_chunks: 2, passage_chunks: 9, head_blocks: 4 } };
    let gc = model.step(layout(memory), loss.as_ref());
    let out = gc.step(&data.queries, &data.passages, &data.targets).unwrap();
    // 3 query chunks, 4 passage chunks, 9 blocks: counts are capped.
    assert_eq!(out.retained, RetainCounts { query_chunks: 2, passage_chunks: 4, head_blocks: 4 });
    let plain = model.step(layout(MemoryConfig::default()), loss.as_ref());
    assert_eq!(plain.step(&data.queries, &data.passages, &data.targets).unwrap().retained, RetainCounts::default());

    let plan = Plan::new(&layout(memory), 5, 15).unwrap();
    let blocks: Vec<_> = plan.blocks().collect();
    assert_eq!(blocks.len(), 9);
    assert_eq!(blocks.iter().filter(|b| b.retained).map(|b| b.index).collect::<Vec<_>>(), [0, 1, 2, 3]);
    let last = blocks[8];
    assert_eq!((last.row, last.queries.start, last.queries.len, last.passages.start, last.passages.len), (2, 4, 1, 12, 3));
}

#[test]
fn memory_configs_read_from_json_and_unknown_forms_are_errors() {
    let read = |s: &str| serde_json::from_str::<MemoryConfig>(s);
    assert_eq!(read(r#"{"recompute": "all"}"#).unwrap(), MemoryConfig::default());
    assert_eq!(read(r#"{"recompute": "none"}"#).unwrap(), MemoryConfig::Recompute { recompute: Recompute::None });
    assert_eq!(
        read(r#"{"retain": {"head_blocks": 3}}"#).unwrap(),
        MemoryConfig::Retain { retain: RetainCounts { query_chunks: 0, passage_chunks: 0, head_blocks: 3 } }
    );
    assert!(read(r#"{"recompute": "some"}"#).is_err());
    assert!(read(r#"{"retain": {"blocks": 3}}"#).is_err());
    let step: StepConfig = serde_json::from_str(r#"{"memory": {"recompute": "none"}}"#).unwrap();
    assert_eq!(step.memory, MemoryConfig::Recompute { recompute: Recompute::None });
}
