//! The memory plan: chunks and blocks whose first-pass graph is kept
//! (retained) instead of recomputed. Every mix must give the full-batch
//! gradients, with dropout on, for every head, tied and separate encoders.

mod common;

use common::*;
use gradcache::core::budget::{ChunkTokens, CostModel};
use gradcache::core::config::{MemoryConfig, Recompute, RetainCounts};
use gradcache::core::layout::PerSide;
use gradcache::core::plan::Plan;
use gradcache::Chunk;
use gradcache::StepConfig;
use tch::{Kind, Tensor};

fn layout(memory: MemoryConfig) -> StepConfig {
    // Uneven on purpose: 5 queries in chunks of 2, 15 passages in chunks of
    // 4, blocks of 2 × 6 (3 × 3 grid).
    StepConfig {
        layout: gradcache::Layout { query_chunk_size: 2, passage_chunk_size: 4, head_block_queries: 2, head_block_passages: 6 },
        memory,
        ..StepConfig::default()
    }
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
    let mut gc = model.step(layout(memory), loss.as_ref());
    let out = gc.step(&data.queries, &data.passages, &data.targets).unwrap();
    // 3 query chunks, 4 passage chunks, 9 blocks: counts are capped.
    assert_eq!(out.retained, RetainCounts { query_chunks: 2, passage_chunks: 4, head_blocks: 4 });
    let mut plain = model.step(layout(MemoryConfig::default()), loss.as_ref());
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
    assert_eq!(read(r#"{"budget": "auto"}"#).unwrap(), MemoryConfig::Auto { budget: gradcache::core::config::AutoBudget::Auto });
    assert!(read(r#"{"budget": "half"}"#).is_err());
    for bad in [r#"{"memory": {"budget_mb": 0}}"#, r#"{"memory": {"budget_mb": -5}}"#] {
        let step: StepConfig = serde_json::from_str(bad).unwrap();
        assert!(step.validate().is_err(), "{bad} should be refused");
    }
    assert!(read(r#"{"recompute": "some"}"#).is_err());
    assert!(read(r#"{"retain": {"blocks": 3}}"#).is_err());
    // The command line's short forms.
    let parse = |s: &str| s.parse::<MemoryConfig>();
    assert_eq!(parse("all").unwrap(), MemoryConfig::default());
    assert_eq!(parse("none").unwrap(), MemoryConfig::Recompute { recompute: Recompute::None });
    assert_eq!(parse("auto").unwrap(), MemoryConfig::Auto { budget: gradcache::core::config::AutoBudget::Auto });
    assert_eq!(parse("1500").unwrap(), MemoryConfig::Budget { budget_mb: 1500.0 });
    assert_eq!(
        parse(r#"{"retain": {"query_chunks": 2}}"#).unwrap(),
        MemoryConfig::Retain { retain: RetainCounts { query_chunks: 2, ..Default::default() } }
    );
    for bad in ["-3", "0", "lots", "{\"budget_mb\": \"x\"}"] {
        assert!(parse(bad).is_err(), "{bad} should be refused");
    }
    let step: StepConfig = serde_json::from_str(r#"{"memory": {"recompute": "none"}}"#).unwrap();
    assert_eq!(step.memory, MemoryConfig::Recompute { recompute: Recompute::None });
}

/// Synthetic costs: 100 bytes per query token, 10 per passage token, 1 per
/// pair, nothing for the caches; the inputs' "tokens" are items.
fn synthetic() -> CostModel {
    CostModel {
        query_token_bytes: 100.0,
        passage_token_bytes: 10.0,
        query_rep_bytes: 0.0,
        passage_rep_bytes: 0.0,
        score_bytes: 0.0,
        pair_bytes: Some(1.0),
        probed_widths: (1.0, 1.0),
        backward_headroom: 1.0,
    }
}

fn item_tokens() -> ChunkTokens {
    // 5 queries in chunks of 2, 2, 1; 15 passages in chunks of 4, 4, 4, 3.
    ChunkTokens { queries: vec![2, 2, 1], passages: vec![4, 4, 4, 3] }
}

#[test]
fn the_peak_estimate_counts_caches_retained_graphs_and_the_largest_recomputed_piece() {
    let config = layout(MemoryConfig::default());
    let costs = CostModel { query_rep_bytes: 1.0, passage_rep_bytes: 2.0, score_bytes: 0.5, ..synthetic() };
    let retain = |q, p, b| Plan::with_retained(&config.layout, 5, 15, RetainCounts { query_chunks: q, passage_chunks: p, head_blocks: b });
    // Caches: U, ∂L/∂U (5 × 1 each), V, ∂L/∂V (15 × 2 each), S and W
    // (75 × 0.5 each): 145 bytes.
    // Nothing kept: the largest chunk, the first query chunk (200 bytes).
    assert_eq!(retain(0, 0, 0).estimate_peak(&costs, &item_tokens()).unwrap(), 145.0 + 200.0);
    // One query chunk kept (200) plus the largest recomputed block (2 × 6
    // pairs = 12), above the largest recomputed chunk (200).
    assert_eq!(retain(1, 0, 0).estimate_peak(&costs, &item_tokens()).unwrap(), 145.0 + 212.0);
    // Everything kept: 500 + 150 of encoder graphs, 75 of head graphs.
    assert_eq!(retain(3, 4, 9).estimate_peak(&costs, &item_tokens()).unwrap(), 145.0 + 725.0);
    // A closed-form head has no head graphs at all.
    let dot = CostModel { pair_bytes: None, ..costs };
    assert_eq!(retain(3, 4, 9).estimate_peak(&dot, &item_tokens()).unwrap(), 145.0 + 650.0);
    // Token counts for another layout are refused, not zipped short.
    let short = ChunkTokens { queries: vec![5], passages: vec![15] };
    assert!(retain(0, 0, 0).estimate_peak(&costs, &short).is_err());
}

#[test]
fn a_budget_keeps_greedily_what_fits_and_refuses_what_cannot_fit() {
    let config = layout(MemoryConfig::default());
    let fit = |budget: f64| Plan::fit(Plan::new(&config, 5, 15).unwrap(), &synthetic(), &item_tokens(), budget);
    // Worked by hand. Recomputing everything needs the largest chunk: 200.
    match fit(199.0) {
        Err(gradcache::GradCacheError::BudgetTooSmall { needed_mb, .. }) => assert_eq!(needed_mb * 1048576.0, 200.0),
        other => panic!("expected BudgetTooSmall, got {other:?}"),
    }
    for (budget, want, estimate) in [
        // The first query chunk (200) would need 200 + a block (12) held
        // with the next recomputed chunk (200) still to come: 212 > 200. The
        // passage chunks fit (150 + 12 ≤ 200), then blocks while
        // 150 + 12 + 12 + 6 + 12 ... ≤ 200: four (42). The peak is still the
        // recomputed query chunk's 200.
        (200.0, RetainCounts { query_chunks: 0, passage_chunks: 4, head_blocks: 4 }, 200.0),
        // One query chunk (200), not two (400 + 12); all passage chunks
        // (350), four blocks (392).
        (400.0, RetainCounts { query_chunks: 1, passage_chunks: 4, head_blocks: 4 }, 392.0),
        // Just short of everything: every chunk (500 + 150), and blocks
        // while 650 + 12 + 12 + 6 + ... ≤ 724: eight (72).
        (724.0, RetainCounts { query_chunks: 3, passage_chunks: 4, head_blocks: 8 }, 722.0),
    ] {
        let (plan, used) = fit(budget).unwrap();
        assert_eq!(plan.retained(), want, "budget {budget}");
        assert_eq!(used, estimate, "budget {budget}");
        assert!(used <= budget);
    }
    // Everything (725), in the configured chunks: a budget never merges
    // them (that would change the dropout streams).
    let (plan, used) = fit(725.0).unwrap();
    assert_eq!(
        (plan.retained(), plan.sizes(false).query_chunks, used),
        (RetainCounts { query_chunks: 3, passage_chunks: 4, head_blocks: 9 }, 3, 725.0)
    );
    // The backward headroom scales the graphs, not the caches.
    let costs = CostModel { backward_headroom: 2.0, query_rep_bytes: 1.0, ..synthetic() };
    let plan = Plan::with_retained(&config.layout, 5, 15, RetainCounts::default());
    assert_eq!(plan.estimate_peak(&costs, &item_tokens()).unwrap(), 10.0 + 2.0 * 200.0);
    // Without head graphs (closed form) no block is ever retained.
    let dot = CostModel { pair_bytes: None, ..synthetic() };
    let (plan, _) = Plan::fit(Plan::new(&config, 5, 15).unwrap(), &dot, &item_tokens(), 649.0).unwrap();
    assert_eq!(plan.retained(), RetainCounts { query_chunks: 3, passage_chunks: 3, head_blocks: 0 });
}

#[test]
fn a_budget_on_a_real_model_stays_within_itself_and_is_exact() {
    let _serial = serial();
    let model = Model::new(HeadKind::Interaction, true, Kind::Double, 0.2);
    let data = data(5, 3, LossKind::InfoNce, 11);
    let loss = loss(LossKind::InfoNce);
    let config = layout(MemoryConfig::default());
    let mut gc = model.step(config.clone(), loss.as_ref());
    let seeds = gradcache::core::replay::ReplaySeeds::from_base(1);
    // The first probe of a process also counts one-time allocations (it
    // overestimates, the safe side); the budgets below use a settled one.
    gc.probe_costs(&data.queries, &data.passages, &seeds).unwrap();
    let costs = gc.probe_costs(&data.queries, &data.passages, &seeds).unwrap();
    assert!(costs.query_token_bytes > 0.0 && costs.passage_token_bytes > 0.0 && costs.pair_bytes.unwrap() > 0.0, "{costs:?}");
    let tokens = ChunkTokens {
        queries: [(0, 2), (2, 2), (4, 1)].map(|(s, l)| data.queries.chunk(s, l).unwrap().padded_tokens()).to_vec(),
        passages: [(0, 4), (4, 4), (8, 4), (12, 3)].map(|(s, l)| data.passages.chunk(s, l).unwrap().padded_tokens()).to_vec(),
    };
    let mb = 1048576.0;
    let least = Plan::with_retained(&config.layout, 5, 15, RetainCounts::default()).estimate_peak(&costs, &tokens).unwrap() / mb;
    let everything = RetainCounts { query_chunks: 3, passage_chunks: 4, head_blocks: 9 };
    let most = Plan::with_retained(&config.layout, 5, 15, everything).estimate_peak(&costs, &tokens).unwrap() / mb;
    assert!(most > least * 1.5, "retaining everything should cost more: {least} vs {most} MB");

    let mut too_small = model.step(layout(MemoryConfig::Budget { budget_mb: least * 0.5 }), loss.as_ref());
    too_small.set_costs(costs);
    let err = too_small.step(&data.queries, &data.passages, &data.targets).unwrap_err();
    assert!(matches!(err, gradcache::GradCacheError::BudgetTooSmall { .. }), "{err}");

    // Each step below reuses the probe of the step before it (a fresh probe
    // on a model this small reads a few hundred kB of allocator noise).
    for (budget_mb, expect) in [(least * 1.1, "little"), ((least + most) / 2.0, "some"), (most * 1.1, "all")] {
        let (out, c) = budgeted_step_against_full_batch(&model, loss.as_ref(), layout(MemoryConfig::Budget { budget_mb }), costs, &data);
        let report = out.budget.unwrap();
        assert_eq!(report.budget_mb, budget_mb);
        assert!(report.estimated_peak_mb <= budget_mb, "estimate {} MB over the budget {budget_mb} MB", report.estimated_peak_mb);
        let kept = out.retained;
        match expect {
            "all" => assert_eq!(kept, RetainCounts { query_chunks: 3, passage_chunks: 4, head_blocks: 9 }),
            "some" => assert!(kept.query_chunks + kept.passage_chunks + kept.head_blocks > 0 && out.sizes.query_chunks == 3, "{kept:?}"),
            _ => assert_eq!(out.sizes.query_chunks, 3),
        }
        assert_exact(&c, F64_TOL, &format!("budget {budget_mb} MB ({expect})"));
    }
}

/// One step of `config` with the cost model `costs` (no fresh probe), and
/// its comparison with the full-batch step, each from the same generator
/// state.
fn budgeted_step_against_full_batch(
    model: &Model,
    loss: &dyn gradcache::ContrastiveLoss,
    config: StepConfig,
    costs: CostModel,
    data: &Data,
) -> (gradcache::StepOutput, Comparison) {
    let mut gc = model.step(config, loss);
    gc.set_costs(costs);
    let mut run = |full: bool| {
        gradcache::check::zero_grads(&model.vs);
        tch::manual_seed(99);
        let out = if full {
            gc.full_batch_step(&data.queries, &data.passages, &data.targets)
        } else {
            gc.step(&data.queries, &data.passages, &data.targets)
        };
        (out.unwrap(), gradcache::check::GradientSnapshot::take(&model.vs).unwrap())
    };
    let ((out, ours), (reference, theirs)) = (run(false), run(true));
    let c = Comparison { cached_loss: out.loss, reference_loss: reference.loss, grads: ours.compare(&theirs).unwrap() };
    (out, c)
}

/// The reference that shares nothing with the step's layout code: the
/// whole batch through each encoder in one call, the head over the whole
/// grid in one call, the loss and one backward. No `Plan`, no chunks, no
/// blocks, no replay streams.
fn whole_batch(model: &Model, data: &Data, loss: &dyn gradcache::ContrastiveLoss) -> (f64, gradcache::check::GradientSnapshot) {
    use gradcache::Encoder;
    gradcache::check::zero_grads(&model.vs);
    let passage_encoder = model.passage.as_ref().unwrap_or(&model.query);
    let l = tch::with_grad(|| {
        let u = model.query.encode(&data.queries, true).unwrap();
        let v = passage_encoder.encode(&data.passages, true).unwrap();
        // The loss a step trains: L(S), plus a gated head's λ·B over every
        // pair's gates (Mixture of Logits).
        let (s, gates) = model.head.score_gated(&u, &v, true).unwrap();
        let mut l = loss.loss(&s, &data.targets).unwrap();
        if let Some(g) = gates.filter(|_| model.head.balance_weight() > 0.0) {
            l += gradcache::core::balance::GateTotals::of(&g).unwrap().term(model.head.balance_weight()).unwrap();
        }
        l.backward();
        l.double_value(&[])
    });
    (l, gradcache::check::GradientSnapshot::take(&model.vs).unwrap())
}

#[test]
fn chunked_partly_retained_steps_equal_one_unchunked_forward_and_backward() {
    // Dropout off: an unchunked forward draws its masks in another order
    // than a chunked one, so with dropout on the two would differ by design.
    // Dropout with retention is checked against the full-batch step above.
    let _serial = serial();
    for head in [HeadKind::Dot, HeadKind::Mlp, HeadKind::Interaction, HeadKind::MaxSim] {
        for tied in [true, false] {
            for (name, memory) in mixes().into_iter().chain([("recompute all", MemoryConfig::default())]) {
                let model = Model::new(head, tied, Kind::Double, 0.0);
                let data = data(5, 3, LossKind::InfoNce, 12);
                let loss = loss(LossKind::InfoNce);
                let (reference_loss, theirs) = whole_batch(&model, &data, loss.as_ref());
                gradcache::check::zero_grads(&model.vs);
                let out = model.step(layout(memory), loss.as_ref()).step(&data.queries, &data.passages, &data.targets).unwrap();
                let ours = gradcache::check::GradientSnapshot::take(&model.vs).unwrap();
                let c = Comparison { cached_loss: out.loss, reference_loss, grads: ours.compare(&theirs).unwrap() };
                assert_exact(&c, F64_TOL, &format!("{head:?}, tied {tied}: {name} against the unchunked step"));
            }
        }
    }
}

#[test]
fn the_unchunked_reference_catches_a_chunking_bug() {
    // A step whose passage chunks are cut at the wrong place (its "chunks"
    // overlap, as an off-by-one in the layout would do) must fail the
    // comparison: here, the passage input is shifted by one item before the
    // step, which is what encoding the wrong slice amounts to.
    let _serial = serial();
    let model = Model::new(HeadKind::Mlp, true, Kind::Double, 0.0);
    let data = data(5, 3, LossKind::InfoNce, 12);
    let loss = loss(LossKind::InfoNce);
    let (reference_loss, theirs) = whole_batch(&model, &data, loss.as_ref());
    let idx = Tensor::from_slice(&[1i64, 0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
    let shifted =
        gradcache::TokenBatch::new(data.passages.ids().index_select(0, &idx), data.passages.mask().index_select(0, &idx)).unwrap();
    gradcache::check::zero_grads(&model.vs);
    let memory = MemoryConfig::Retain { retain: RetainCounts { query_chunks: 1, passage_chunks: 2, head_blocks: 4 } };
    let out = model.step(layout(memory), loss.as_ref()).step(&data.queries, &shifted, &data.targets).unwrap();
    let ours = gradcache::check::GradientSnapshot::take(&model.vs).unwrap();
    let c = Comparison { cached_loss: out.loss, reference_loss, grads: ours.compare(&theirs).unwrap() };
    assert!(!c.grads.failures(F64_TOL).is_empty(), "two swapped passages went unnoticed");
}

fn sorted(memory: MemoryConfig) -> StepConfig {
    StepConfig { sort_by_length: true, ..layout(memory) }
}

#[test]
fn length_sorted_chunks_pad_less_and_give_the_same_gradients() {
    let _serial = serial();
    // Padding: random lengths 1..=12 in chunks of 2 (queries) and 4
    // (passages); sorted, each chunk pads only to lengths like its own.
    let data = data(9, 3, LossKind::InfoNce, 13);
    let padded = |config: &StepConfig| -> usize {
        let plan = Plan::new(config, 9, 27).unwrap().with_orders(Plan::length_orders(config, &data.queries, &data.passages).unwrap());
        [gradcache::error::Side::Queries, gradcache::error::Side::Passages]
            .iter()
            .map(|&side| {
                let input = if side == gradcache::error::Side::Queries { &data.queries } else { &data.passages };
                plan.chunks(side).iter().map(|c| c.cut(input).unwrap().padded_tokens()).sum::<usize>()
            })
            .sum()
    };
    let (plain, by_length) = (padded(&layout(MemoryConfig::default())), padded(&sorted(MemoryConfig::default())));
    assert!(by_length < plain, "sorting should cut padding: {by_length} vs {plain} padded tokens");

    // Dropout off: against one unchunked forward, every head kind, with
    // and without retention.
    for head in [HeadKind::Mlp, HeadKind::Interaction, HeadKind::MaxSim] {
        for (name, memory) in [("recompute all", MemoryConfig::default()), ("half", mixes()[2].1)] {
            let model = Model::new(head, true, Kind::Double, 0.0);
            let loss = loss(LossKind::InfoNce);
            let (reference_loss, theirs) = whole_batch(&model, &data, loss.as_ref());
            gradcache::check::zero_grads(&model.vs);
            let out = model.step(sorted(memory), loss.as_ref()).step(&data.queries, &data.passages, &data.targets).unwrap();
            let ours = gradcache::check::GradientSnapshot::take(&model.vs).unwrap();
            let c = Comparison { cached_loss: out.loss, reference_loss, grads: ours.compare(&theirs).unwrap() };
            assert_exact(&c, F64_TOL, &format!("{head:?} sorted, {name}, against the unchunked step"));
        }
    }
    // Dropout on: against the full-batch step (same sorted chunks, same
    // streams), tied and separate encoders, under a budget too.
    for tied in [true, false] {
        for (name, memory) in [
            ("recompute all", MemoryConfig::default()),
            ("first of each", mixes()[1].1),
            ("budget", MemoryConfig::Budget { budget_mb: 1e6 }),
        ] {
            let model = Model::new(HeadKind::Interaction, tied, Kind::Double, 0.2);
            let loss = loss(LossKind::InfoNce);
            let c = compare(&model, &data, loss.as_ref(), sorted(memory));
            assert_exact(&c, F64_TOL, &format!("sorted, tied {tied}, {name}, dropout on"));
        }
    }
}

fn by_tokens(query_tokens: usize, passage_tokens: usize, memory: MemoryConfig) -> StepConfig {
    StepConfig { query_chunk_tokens: Some(query_tokens), passage_chunk_tokens: Some(passage_tokens), ..layout(memory) }
}

#[test]
fn token_budget_chunks_stay_within_their_budget_and_give_the_full_batch_gradients() {
    let _serial = serial();
    // Random lengths 1..=12: budgets of 16 and 24 tokens give chunks of
    // one to many items.
    let data = data(9, 3, LossKind::InfoNce, 14);
    let config = by_tokens(16, 24, MemoryConfig::default());
    let plan = Plan::for_batch(&config, &data.queries, &data.passages).unwrap();
    for (side, input, budget) in
        [(gradcache::error::Side::Queries, &data.queries, 16), (gradcache::error::Side::Passages, &data.passages, 24)]
    {
        let chunks = plan.chunks(side);
        let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), input.len(), "{side:?}: every item once");
        assert!(sizes.iter().min() != sizes.iter().max(), "{side:?}: a token budget should vary the items per chunk: {sizes:?}");
        for (i, c) in chunks.iter().enumerate() {
            let items = c.cut(input).unwrap();
            let tokens = items.padded_tokens();
            assert!(c.len() == 1 || tokens <= budget, "{side:?}: a chunk of {} items pads to {tokens} > {budget} tokens", c.len());
            // Greedy: one more item (no longer: they come longest first)
            // would not have fitted.
            let longest = items.lengths().unwrap().unwrap().into_iter().max().unwrap();
            assert!(i + 1 == chunks.len() || (c.len() + 1) * longest > budget, "{side:?}: chunk {i} could have taken another item");
        }
        let mut seen: Vec<usize> = Vec::new();
        for c in &chunks {
            let rows = Tensor::arange(input.len() as i64, (Kind::Int64, tch::Device::Cpu));
            seen.extend(Vec::<i64>::try_from(c.rows(&rows).unwrap()).unwrap().into_iter().map(|i| i as usize));
        }
        seen.sort();
        assert_eq!(seen, (0..input.len()).collect::<Vec<_>>(), "{side:?}: the chunks cover the batch");
    }
    // Dropout off: against one unchunked forward, every head, tied and
    // separate encoders, with and without retention.
    for head in HEADS {
        for tied in [true, false] {
            for (name, memory) in [("recompute all", MemoryConfig::default()), ("half", mixes()[2].1)] {
                let model = Model::new(head, tied, Kind::Double, 0.0);
                let loss = loss(LossKind::InfoNce);
                let (reference_loss, theirs) = whole_batch(&model, &data, loss.as_ref());
                gradcache::check::zero_grads(&model.vs);
                let out = model.step(by_tokens(16, 24, memory), loss.as_ref()).step(&data.queries, &data.passages, &data.targets).unwrap();
                let ours = gradcache::check::GradientSnapshot::take(&model.vs).unwrap();
                let c = Comparison { cached_loss: out.loss, reference_loss, grads: ours.compare(&theirs).unwrap() };
                assert_exact(&c, F64_TOL, &format!("{head:?}, tied {tied}, token chunks, {name}, against the unchunked step"));
            }
        }
    }
    // Dropout on: against the full-batch step on the same chunks and
    // streams, every head, with retention and under a budget.
    for head in HEADS {
        for (name, memory) in [
            ("recompute all", MemoryConfig::default()),
            ("first of each", mixes()[1].1),
            ("budget", MemoryConfig::Budget { budget_mb: 1e6 }),
        ] {
            let model = Model::new(head, true, Kind::Double, 0.2);
            let loss = loss(LossKind::InfoNce);
            let c = compare(&model, &data, loss.as_ref(), by_tokens(16, 24, memory));
            assert_exact(&c, F64_TOL, &format!("{head:?}, token chunks, {name}, dropout on"));
        }
    }
}

fn by_cost(flops: f64, memory: MemoryConfig) -> StepConfig {
    StepConfig { head_block_flops: Some(flops), ..layout(memory) }
}

#[test]
fn cost_sized_blocks_stay_within_their_budget_and_give_the_full_batch_gradients() {
    let _serial = serial();
    let data = data(5, 3, LossKind::InfoNce, 15);
    let mut columns = std::collections::BTreeMap::new();
    for head in HEADS {
        // A budget of a few pairs of this head: blocks of 2 rows and from
        // one to several columns.
        let model = Model::new(head, true, Kind::Double, 0.2);
        let info_nce = loss(LossKind::InfoNce);
        let gc = model.step(layout(MemoryConfig::default()), info_nce.as_ref());
        let plan = Plan::layout_of(gc.config(), &data.queries, &data.passages).unwrap();
        let reps = tch::no_grad(|| {
            gc.representation_pass(&data.queries, &data.passages, &plan, &gradcache::core::replay::ReplaySeeds::from_base(1))
        })
        .unwrap();
        let pair =
            |a: usize, b: usize| model.head.score_flops(&reps.queries.narrow(0, a).unwrap(), &reps.passages.narrow(0, b).unwrap()).unwrap();
        let budget = pair(2, 4);
        let cols = gradcache::core::flops::block_columns(model.head.as_ref(), &reps.queries, &reps.passages, 2, budget).unwrap();
        assert_eq!(cols, 4, "{head:?}: a budget of exactly 2 × 4 pairs is 4 columns");
        assert!(pair(2, cols + 1) > budget, "{head:?}: one column more would fit");
        columns.insert(
            format!("{head:?}"),
            gradcache::core::flops::block_columns(model.head.as_ref(), &reps.queries, &reps.passages, 2, 2e4).unwrap(),
        );
        // Exact: dropout on against the full-batch step on the same blocks,
        // recomputed and retained.
        for (name, memory) in [("recompute all", MemoryConfig::default()), ("half", mixes()[2].1)] {
            let c = compare(&model, &data, loss(LossKind::InfoNce).as_ref(), by_cost(budget, memory));
            assert_exact(&c, F64_TOL, &format!("{head:?}, cost-sized blocks, {name}"));
        }
        let out = model
            .step(by_cost(budget, MemoryConfig::default()), loss(LossKind::InfoNce).as_ref())
            .step(&data.queries, &data.passages, &data.targets)
            .unwrap();
        assert_eq!(out.sizes.block_pairs, (2, 4), "{head:?}: the step used the sized blocks");
    }
    // At one budget, a token interaction head gets narrower blocks than
    // the dot product.
    assert!(columns["Interaction"] < columns["Dot"], "{columns:?}");
    // Dropout off: against the unchunked step.
    let model = Model::new(HeadKind::Interaction, false, Kind::Double, 0.0);
    let loss = loss(LossKind::InfoNce);
    let (reference_loss, theirs) = whole_batch(&model, &data, loss.as_ref());
    gradcache::check::zero_grads(&model.vs);
    let out = model.step(by_cost(1e5, MemoryConfig::default()), loss.as_ref()).step(&data.queries, &data.passages, &data.targets).unwrap();
    let ours = gradcache::check::GradientSnapshot::take(&model.vs).unwrap();
    assert_exact(
        &Comparison { cached_loss: out.loss, reference_loss, grads: ours.compare(&theirs).unwrap() },
        F64_TOL,
        "cost-sized blocks against the unchunked step",
    );
    // Refused with a memory budget, and at zero.
    let err = by_cost(1e6, MemoryConfig::Budget { budget_mb: 100.0 }).validate().unwrap_err();
    assert!(matches!(err, gradcache::GradCacheError::InvalidConfig { field: "head_block_flops", .. }), "{err}");
    assert!(by_cost(0.0, MemoryConfig::default()).validate().is_err());
}

#[test]
fn token_budgets_need_lengths_and_are_refused_at_zero() {
    let t = Tensor::zeros([3, 4], (Kind::Float, tch::Device::Cpu));
    let err = Plan::layout_of(&by_tokens(8, 8, MemoryConfig::default()), &t, &t).unwrap_err();
    assert!(matches!(err, gradcache::GradCacheError::InvalidConfig { field: "query_chunk_tokens", .. }), "{err}");
    let err = Plan::new(&by_tokens(8, 8, MemoryConfig::default()), 3, 3).unwrap_err();
    assert!(matches!(err, gradcache::GradCacheError::InvalidConfig { field: "query_chunk_tokens", .. }), "{err}");
    let err = StepConfig { passage_chunk_tokens: Some(0), ..StepConfig::default() }.validate().unwrap_err();
    assert!(matches!(err, gradcache::GradCacheError::InvalidConfig { field: "passage_chunk_tokens", .. }), "{err}");
    // JSON: the two fields, read and written.
    let read: StepConfig = serde_json::from_str(r#"{"query_chunk_tokens": 512, "passage_chunk_tokens": 2048}"#).unwrap();
    assert_eq!((read.query_chunk_tokens, read.passage_chunk_tokens), (Some(512), Some(2048)));
    let back: StepConfig = serde_json::from_str(&serde_json::to_string(&read).unwrap()).unwrap();
    assert_eq!(back, read);
}

#[test]
fn sorting_needs_inputs_with_lengths() {
    let t = Tensor::zeros([3, 4], (Kind::Float, tch::Device::Cpu));
    let err = Plan::length_orders(&sorted(MemoryConfig::default()), &t, &t).unwrap_err();
    assert!(matches!(err, gradcache::GradCacheError::InvalidConfig { field: "sort_by_length", .. }), "{err}");
    // Off, nothing is asked of the input.
    assert_eq!(Plan::length_orders(&layout(MemoryConfig::default()), &t, &t).unwrap(), PerSide::default());
}

/// The sizes `auto_sizes` picks, as (query chunk, passage chunk, block
/// rows, block columns).
fn sized(costs: &CostModel, budget: f64) -> gradcache::Result<(usize, usize, usize, usize)> {
    let config = StepConfig { auto_sizes: true, ..layout(MemoryConfig::Budget { budget_mb: 1.0 }) };
    let c = Plan::sized_for_budget(&config, 5, 15, costs, (1.0, 1.0), PerSide::new(false, false), budget)?;
    Ok((c.layout.query_chunk_size, c.layout.passage_chunk_size, c.layout.head_block_queries, c.layout.head_block_passages))
}

#[test]
fn sizes_chosen_from_a_budget_give_each_chunk_and_block_a_quarter_of_it() {
    // Worked by hand with the synthetic costs (no caches, headroom 1): a
    // chunk or block may take a quarter of the budget; a query item costs
    // 100, a passage item 10, a pair 1.
    let costs = synthetic();
    // 2000: a quarter is 500, the whole side of 5 queries (500) fits, and
    // so do 15 passages (150) and a 5 × 15 block (75).
    assert_eq!(sized(&costs, 2000.0).unwrap(), (5, 15, 5, 15));
    // 1000: 250 holds 2 queries (200) but not 4 (400); blocks of 2 rows.
    assert_eq!(sized(&costs, 1000.0).unwrap(), (2, 15, 2, 15));
    // 399: a quarter (99.75) is short of one query (100); the least budget
    // is 400 bytes.
    match sized(&costs, 399.0) {
        Err(gradcache::GradCacheError::BudgetTooSmall { needed_mb, .. }) => assert_eq!(needed_mb * 1048576.0, 400.0),
        other => panic!("expected BudgetTooSmall, got {other:?}"),
    }
    // Dear pairs (30 each): 2 rows × 4 columns (240 ≤ 250; 8 would be 480).
    assert_eq!(sized(&CostModel { pair_bytes: Some(30.0), ..costs }, 1000.0).unwrap(), (2, 15, 2, 4));
    // Dearer (200): not even one column for 2 rows, so one row, one column.
    assert_eq!(sized(&CostModel { pair_bytes: Some(200.0), ..costs }, 1000.0).unwrap(), (2, 15, 1, 1));
    // A pair above the quarter: too small, needing 4 × 300.
    match sized(&CostModel { pair_bytes: Some(300.0), ..costs }, 1000.0) {
        Err(gradcache::GradCacheError::BudgetTooSmall { needed_mb, .. }) => assert_eq!(needed_mb * 1048576.0, 1200.0),
        other => panic!("expected BudgetTooSmall, got {other:?}"),
    }
    // A closed-form head runs no head pass: the configured blocks stay.
    assert_eq!(sized(&CostModel { pair_bytes: None, ..costs }, 1000.0).unwrap(), (2, 15, 2, 6));
    // The headroom and the caches come off first: with headroom 2 a query
    // costs 200 (one fits 250) and 15 passages 300 (8 do: 160); caches of
    // 2 × (5 × 10) = 100 leave (1000 − 100) / 4 = 225 (2 queries still fit),
    // of 2 × (5 × 30) = 300 leave 175 (they no longer do).
    assert_eq!(sized(&CostModel { backward_headroom: 2.0, ..costs }, 1000.0).unwrap(), (1, 8, 1, 15));
    assert_eq!(sized(&CostModel { query_rep_bytes: 10.0, ..costs }, 1000.0).unwrap(), (2, 15, 2, 15));
    assert_eq!(sized(&CostModel { query_rep_bytes: 30.0, ..costs }, 1000.0).unwrap(), (1, 15, 1, 15));
    // The widths price each item at the side's longest.
    let config = StepConfig { auto_sizes: true, ..layout(MemoryConfig::Budget { budget_mb: 1.0 }) };
    let wide = Plan::sized_for_budget(&config, 5, 15, &costs, (2.0, 1.0), PerSide::new(false, false), 1000.0).unwrap();
    assert_eq!(wide.layout.query_chunk_size, 1);
}

#[test]
fn auto_sizes_price_a_side_with_lengths_per_padded_token() {
    // The synthetic costs: a query token costs 100, a passage token 10.
    let costs = synthetic();
    let config = StepConfig { auto_sizes: true, ..layout(MemoryConfig::Budget { budget_mb: 1.0 }) };
    let tokens = |budget: f64, widths| {
        let c = Plan::sized_for_budget(&config, 5, 15, &costs, widths, PerSide::new(true, true), budget).unwrap();
        (c.query_chunk_tokens, c.passage_chunk_tokens)
    };
    // 2000: a quarter (500) holds the 5 queries × 1 token whole, and the
    // 15 passages × 1 (150).
    assert_eq!(tokens(2000.0, (1.0, 1.0)), (Some(5), Some(15)));
    // 1000: 250 holds 2 query tokens, not 4; passages still whole.
    assert_eq!(tokens(1000.0, (1.0, 1.0)), (Some(2), Some(15)));
    // Wider items: 5 × 2 query tokens do not fit in 500 (1000), 4 do;
    // 15 × 3 passage tokens (450) fit in 500, and become one chunk.
    assert_eq!(tokens(2000.0, (2.0, 3.0)), (Some(4), Some(45)));
    // Only the sides whose items have lengths.
    let c = Plan::sized_for_budget(&config, 5, 15, &costs, (1.0, 1.0), PerSide::new(false, true), 1000.0).unwrap();
    assert_eq!((c.query_chunk_tokens, c.layout.query_chunk_size, c.passage_chunk_tokens), (None, 2, Some(15)));
}

#[test]
fn auto_sizes_need_a_budget() {
    let config = StepConfig { auto_sizes: true, ..StepConfig::default() };
    match config.validate() {
        Err(gradcache::GradCacheError::InvalidConfig { field: "auto_sizes", .. }) => {}
        other => panic!("expected InvalidConfig for auto_sizes, got {other:?}"),
    }
    let budgeted = StepConfig { auto_sizes: true, memory: MemoryConfig::Budget { budget_mb: 100.0 }, ..StepConfig::default() };
    budgeted.validate().unwrap();
    let read: StepConfig = serde_json::from_str(r#"{"auto_sizes": true, "memory": {"budget": "auto"}}"#).unwrap();
    assert!(read.auto_sizes);
}

#[test]
fn auto_sized_steps_grow_with_the_budget_stay_within_it_and_are_exact() {
    let _serial = serial();
    for head in [HeadKind::Interaction, HeadKind::Dot] {
        let model = Model::new(head, false, Kind::Double, 0.2);
        let data = data(5, 3, LossKind::InfoNce, 13);
        let loss = loss(LossKind::InfoNce);
        let seeds = gradcache::core::replay::ReplaySeeds::from_base(1);
        let mut probe = model.step(layout(MemoryConfig::default()), loss.as_ref());
        // One probe for every budget: on graphs of a few kB, two probes
        // differ by 1–3% (allocator bookkeeping), enough to move a size at
        // a budget on a doubling's edge (on MiniLM the probes of two runs
        // chose the same plans; docs/architecture.md).
        let costs = probe.probe_costs(&data.queries, &data.passages, &seeds).unwrap();
        let mb = 1048576.0;
        // From the least budget that holds one item per chunk up to one that
        // holds the whole batch in one piece, in steps of 1.6×.
        let auto = StepConfig { auto_sizes: true, ..layout(MemoryConfig::Budget { budget_mb: 1.0 }) };
        let mut budget_mb = match Plan::sized_for_budget(&auto, 5, 15, &costs, widths(&data), PerSide::new(true, true), 1.0) {
            Err(gradcache::GradCacheError::BudgetTooSmall { needed_mb, .. }) => needed_mb * 1.0001,
            other => panic!("a 1-byte budget was accepted: {other:?}"),
        };
        let mut last = (0, 0);
        let mut seen = Vec::new();
        while last != (5, 15) {
            let config = StepConfig { auto_sizes: true, ..layout(MemoryConfig::Budget { budget_mb }) };
            let (out, c) = budgeted_step_against_full_batch(&model, loss.as_ref(), config, costs, &data);
            let report = out.budget.unwrap();
            assert!(
                report.estimated_peak_mb <= budget_mb,
                "{head:?}: estimate {} MB over the budget {budget_mb} MB",
                report.estimated_peak_mb
            );
            let now = out.sizes.chunk_items;
            assert!(
                now.0 >= last.0 && now.1 >= last.1,
                "{head:?}: chunks shrank from {last:?} to {now:?} as the budget grew to {budget_mb} MB"
            );
            let chosen = Plan::sized_for_budget(
                &StepConfig { auto_sizes: true, ..layout(MemoryConfig::Budget { budget_mb }) },
                5,
                15,
                &costs,
                widths(&data),
                PerSide::new(true, true),
                budget_mb * mb,
            )
            .unwrap();
            assert!(
                chosen.query_chunk_tokens.is_some() && chosen.passage_chunk_tokens.is_some(),
                "{head:?}: token inputs are cut by tokens"
            );
            let chosen_items = Plan::layout_of(&chosen, &data.queries, &data.passages).unwrap().sizes(false).chunk_items;
            assert_eq!(chosen_items, now, "{head:?}: the step did not use the sizes chosen for {budget_mb} MB");
            assert_exact(&c, F64_TOL, &format!("{head:?}: auto sizes {now:?} at {budget_mb} MB"));
            seen.push(now);
            last = now;
            budget_mb *= 1.6;
            assert!(seen.len() < 40, "{head:?}: sizes never reached the whole batch: {seen:?}");
        }
        assert!(seen.len() >= 3 && seen[0] != (5, 15), "{head:?}: the sweep saw too few layouts: {seen:?}");
    }
}

/// Tokens per item of each side's widest chunk under `layout` (chunks of 2
/// queries and 4 passages), as the step measures them: a chunk pads only to
/// its own longest item.
fn widths(data: &Data) -> (f64, f64) {
    let widest = |input: &gradcache::TokenBatch, size: usize| {
        (0..input.len())
            .step_by(size)
            .map(|s| {
                let len = size.min(input.len() - s);
                input.chunk(s, len).unwrap().padded_tokens() as f64 / len as f64
            })
            .fold(0.0, f64::max)
    };
    (widest(&data.queries, 2), widest(&data.passages, 4))
}
