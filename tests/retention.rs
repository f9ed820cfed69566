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
    assert_eq!(read(r#"{"budget_mb": 250.5}"#).unwrap(), MemoryConfig::Budget { budget_mb: 250.5 });
    assert!(read(r#"{"recompute": "some"}"#).is_err());
    assert!(read(r#"{"retain": {"blocks": 3}}"#).is_err());
    let step: StepConfig = serde_json::from_str(r#"{"memory": {"recompute": "none"}}"#).unwrap();
    assert_eq!(step.memory, MemoryConfig::Recompute { recompute: Recompute::None });
}

#[test]
fn a_budget_keeps_what_its_measured_cost_allows_and_stays_exact() {
    use gradcache::plan::CostModel;
    let _serial = serial();
    // The greedy order, on synthetic costs: query chunks, then passage
    // chunks, then blocks, each only once the previous kind is all kept.
    let costs = CostModel { query_item_bytes: 100.0, passage_item_bytes: 10.0, pair_bytes: 1.0 };
    let config = layout(MemoryConfig::default());
    // 5 queries (chunks 2, 2, 1: 200, 200, 100 bytes), 15 passages (chunks
    // 4, 4, 4, 3: 40, 40, 40, 30), blocks of 2 x 6 pairs, the last column
    // 2 x 3 (row 0: 12, 12, 6 bytes; then 12, 12, 6 again).
    for (budget, want) in [
        (0.0, RetainCounts::default()),
        (450.0, RetainCounts { query_chunks: 2, passage_chunks: 0, head_blocks: 0 }),
        (500.0 + 115.0, RetainCounts { query_chunks: 3, passage_chunks: 2, head_blocks: 0 }),
        (500.0 + 150.0 + 29.0, RetainCounts { query_chunks: 3, passage_chunks: 4, head_blocks: 2 }),
        (500.0 + 150.0 + 30.0, RetainCounts { query_chunks: 3, passage_chunks: 4, head_blocks: 3 }),
        (1e9, RetainCounts { query_chunks: 3, passage_chunks: 4, head_blocks: 9 }),
    ] {
        let (plan, used) = Plan::within_budget(&config, 5, 15, &costs, budget);
        assert_eq!(plan.retained(), want, "budget {budget}");
        assert!(used <= budget, "budget {budget}: estimate {used}");
    }

    // On a real model: the probe's costs, budgets between nothing and
    // everything, each step exact against the full batch.
    let model = Model::new(HeadKind::Interaction, true, Kind::Double, 0.2);
    let data = data(5, 3, LossKind::InfoNce, 11);
    let loss = loss(LossKind::InfoNce);
    let gc = model.step(config.clone(), loss.as_ref());
    let seeds = gradcache::replay::ReplaySeeds::from_base(1);
    // The first probe of a process also counts one-time allocations (it
    // overestimates, the safe side); the budgets below use a settled one.
    gc.probe_costs(&data.queries, &data.passages, &seeds).unwrap();
    let measured = gc.probe_costs(&data.queries, &data.passages, &seeds).unwrap();
    assert!(measured.query_item_bytes > 0.0 && measured.passage_item_bytes > 0.0 && measured.pair_bytes > 0.0, "{measured:?}");
    let mb = 1048576.0;
    let one_and_a_half_chunks = 3.0 * measured.query_item_bytes / mb;
    for budget_mb in [0.0, one_and_a_half_chunks, 1e6] {
        let config = layout(MemoryConfig::Budget { budget_mb });
        let gc = model.step(config.clone(), loss.as_ref());
        let out = gc.step(&data.queries, &data.passages, &data.targets).unwrap();
        let estimate = out.retained_estimate_mb.unwrap();
        assert!(estimate <= budget_mb, "estimate {estimate} MB over the budget {budget_mb} MB");
        let kept = out.retained;
        if budget_mb == 0.0 {
            assert_eq!(kept, RetainCounts::default());
        } else if budget_mb >= 1e6 {
            assert_eq!(kept, RetainCounts { query_chunks: 3, passage_chunks: 4, head_blocks: 9 });
        } else {
            assert_eq!(kept.query_chunks, 1, "{kept:?}");
        }
        let c = compare(&model, &data, loss.as_ref(), config);
        assert_exact(&c, F64_TOL, &format!("budget {budget_mb} MB"));
    }
}
