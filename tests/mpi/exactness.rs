//! Run under `mpirun -np R` by `tests/distributed.rs` (built as the example
//! `mpi_exactness`, feature `mpi`): on every rank, the distributed step over
//! this rank's uneven shard of a global batch, against the full-batch step
//! over the whole batch cut the same way (`sharded_full_batch_step`), for
//! vector and token heads, every loss, f64 and f32, tied and separate
//! encoders, chunks sorted by length and cut by token budget within each
//! shard, cost-sized head blocks, dropout on; then a control with targets left in local indices
//! (not re-indexed after the gather), which must fail the comparison. Each
//! rank prints one line per case; the exit status is 1 if any case fails.

#[path = "../common/mod.rs"]
mod common;

use common::*;
use gradcache::check::{zero_grads, GradientSnapshot};
use gradcache::core::distributed::mpi::MpiCollective;
use gradcache::core::distributed::Collective;
use gradcache::{Chunk, StepConfig, Targets};
use tch::Kind;

const GROUP: usize = 2;

/// Uneven query shards for `world` ranks over `n` queries.
fn shards(n: usize, world: usize) -> Vec<usize> {
    // Rank r gets about n / world, the last ones one more.
    let base = n / world;
    let extra = n % world;
    (0..world).map(|r| base + usize::from(r >= world - extra)).collect()
}

fn main() {
    let collective = MpiCollective::init().expect("MPI");
    tch::set_num_threads(1);
    let (rank, world) = (collective.rank(), collective.world_size());
    let n = 2 * world + 1;
    let q_shards = shards(n, world);
    let p_shards: Vec<usize> = q_shards.iter().map(|q| q * GROUP).collect();
    let q_off: usize = q_shards[..rank].iter().sum();
    let config = StepConfig {
        layout: gradcache::Layout { query_chunk_size: 2, passage_chunk_size: 3, head_block_queries: 2, head_block_passages: 5 },
        ..StepConfig::default()
    };

    let sorted = StepConfig { sort_by_length: true, ..config.clone() };
    let by_tokens = StepConfig { query_chunk_tokens: Some(16), passage_chunk_tokens: Some(24), ..config.clone() };
    let by_cost = StepConfig { head_block_flops: Some(20_000.0), ..config.clone() };
    let mut cases = Vec::new();
    for head in [HeadKind::Dot, HeadKind::Mlp, HeadKind::MaxSim, HeadKind::Interaction] {
        cases.push((head, LossKind::InfoNce, Kind::Double, true, "items", config.clone()));
    }
    for loss in [LossKind::MultiPositive, LossKind::Symmetric, LossKind::Distill] {
        cases.push((HeadKind::Mlp, loss, Kind::Double, true, "items", config.clone()));
    }
    cases.push((HeadKind::Bilinear, LossKind::InfoNce, Kind::Double, false, "items", config.clone()));
    cases.push((HeadKind::Interaction, LossKind::InfoNce, Kind::Float, true, "items", config.clone()));
    cases.push((HeadKind::MaxSim, LossKind::InfoNce, Kind::Double, true, "sorted", sorted));
    cases.push((HeadKind::Interaction, LossKind::InfoNce, Kind::Double, false, "token budgets", by_tokens));
    cases.push((HeadKind::Mlp, LossKind::InfoNce, Kind::Double, true, "cost-sized blocks", by_cost));
    // The load-balancing term's batch-mean gate is summed across processes.
    cases.push((HeadKind::Mol, LossKind::InfoNce, Kind::Double, true, "items", config.clone()));
    cases.push((HeadKind::ResidualMol, LossKind::Symmetric, Kind::Double, false, "items", config.clone()));

    let mut failed = 0;
    let run = |model: &Model, data: &Data, loss_kind: LossKind, targets: &Targets, config: &StepConfig| {
        let loss = loss(loss_kind);
        let mut gc = model.step(config.clone(), loss.as_ref());
        let local_q = data.queries.chunk(q_off, q_shards[rank]).unwrap();
        let local_p = data.passages.chunk(q_off * GROUP, p_shards[rank]).unwrap();
        zero_grads(&model.vs);
        tch::manual_seed(99);
        let ours = gc.distributed_step(&local_q, &local_p, targets, &model.vs, &collective).unwrap();
        let ours_grads = GradientSnapshot::take(&model.vs).unwrap();
        zero_grads(&model.vs);
        tch::manual_seed(99);
        let reference = gc.sharded_full_batch_step(&data.queries, &data.passages, &data.targets, &q_shards, &p_shards).unwrap();
        let theirs = GradientSnapshot::take(&model.vs).unwrap();
        // Each process counts the head FLOPs of its own blocks: together,
        // the one-process step's count over the same grid.
        let score_flops = ours.flops.score.expect("every test head counts its FLOPs");
        let summed = collective.all_reduce_sum(&tch::Tensor::from_slice(&[score_flops])).unwrap().double_value(&[0]);
        let whole = gc.step(&data.queries, &data.passages, &data.targets).unwrap().flops.score.unwrap();
        let flops_ok = (summed - whole).abs() <= 1e-9 * whole;
        (ours.loss, reference.loss, ours_grads.compare(&theirs).unwrap(), flops_ok)
    };
    for (head, loss_kind, kind, tied, chunks, config) in cases {
        let model = Model::new(head, tied, kind, 0.2);
        let data = data(n, GROUP, loss_kind, 21);
        let (ours, theirs, grads, flops_ok) = run(&model, &data, loss_kind, &data.targets, &config);
        let tol = if kind == Kind::Double { F64_TOL } else { F32_TOL };
        let loss_ok = (ours - theirs).abs() <= tol.abs + tol.rel * theirs.abs();
        let ok = loss_ok && grads.failures(tol).is_empty() && flops_ok;
        failed += usize::from(!ok);
        println!(
            "rank {rank}/{world}: {head:?} {loss_kind:?} {kind:?} tied {tied}, {chunks}: loss {ours:.15} vs {theirs:.15}, max |grad diff| {:.1e}, head FLOPs summed over processes {}: {}",
            grads.max_abs_diff(),
            if flops_ok { "= one process's" } else { "DIFFER" },
            if ok { "ok" } else { "FAILED" }
        );
    }

    if world == 1 {
        // One process has no local numbering to get wrong.
        drop(collective);
        std::process::exit(i32::from(failed > 0));
    }
    // The control: every rank labels its queries' positives with local
    // passage indices (query i of rank r → passage i·g, not
    // (offset_r + i)·g), as a gather that forgets to re-index would.
    let model = Model::new(HeadKind::Mlp, true, Kind::Double, 0.2);
    let data = data(n, GROUP, LossKind::InfoNce, 21);
    let mut positives = Vec::new();
    for &q in &q_shards {
        positives.extend((0..q).map(|i| vec![i * GROUP]));
    }
    let local_targets = Targets::from_positives(n * GROUP, positives).unwrap();
    let (ours, theirs, grads, _) = run(&model, &data, LossKind::InfoNce, &local_targets, &config);
    let caught = (ours - theirs).abs() > 1e-6 || !grads.failures(F64_TOL).is_empty();
    failed += usize::from(!caught);
    println!(
        "rank {rank}/{world}: control, targets in local indices: loss {ours:.6} vs {theirs:.6}: {}",
        if caught { "caught (ok)" } else { "NOT CAUGHT" }
    );
    collective.barrier();
    // MPI is finalised when the collective is dropped: before exiting.
    drop(collective);
    std::process::exit(i32::from(failed > 0));
}
