//! The distributed step: its layout, the one-process path, and (feature
//! `mpi`) exactness under `mpirun -np 2` and `-np 3` against the
//! single-process full-batch step on the same global batch.

mod common;

use common::*;
use gradcache::core::config::{MemoryConfig, Recompute};
use gradcache::core::distributed::{Collective, Shards, SingleProcess};
use gradcache::core::layout::PerSide;
use gradcache::core::plan::Plan;
use gradcache::error::Side;
use gradcache::StepConfig;
use tch::Kind;

#[test]
fn a_sharded_plan_cuts_each_shard_on_its_own_and_numbers_chunks_globally() {
    let config = StepConfig {
        layout: gradcache::Layout { query_chunk_size: 2, passage_chunk_size: 4, head_block_queries: 3, head_block_passages: 5 },
        ..StepConfig::default()
    };
    // Ranks hold 3, 1 and 4 queries: chunks [0,2) [2,3) | [3,4) | [4,6) [6,8).
    let plan = Plan::sharded(&config, PerSide::new(&[3, 1, 4], &[6, 2, 8]), PerSide::default()).unwrap();
    let q: Vec<(usize, usize)> = plan.chunks(Side::Queries).iter().map(|c| (c.piece.start, c.piece.len)).collect();
    assert_eq!(q, [(0, 2), (2, 1), (3, 1), (4, 2), (6, 2)]);
    let p: Vec<(usize, usize)> = plan.chunks(Side::Passages).iter().map(|c| (c.piece.start, c.piece.len)).collect();
    assert_eq!(p, [(0, 4), (4, 2), (6, 2), (8, 4), (12, 4)]);
    // The pair grid is global: 8 queries in rows of 3, 16 passages in 5s.
    assert_eq!(plan.sizes(false).head_blocks, 3 * 4);
    // One shard is the plain layout.
    assert_eq!(Plan::sharded(&config, PerSide::new(&[8], &[16]), PerSide::default()).unwrap(), Plan::new(&config, 8, 16).unwrap());
    // Rank 1's share: its one query chunk, renumbered from its first row,
    // keeping its global stream (2).
    let share =
        plan.share(PerSide::new(gradcache::core::layout::Piece { start: 3, len: 1 }, gradcache::core::layout::Piece { start: 6, len: 2 }));
    let q: Vec<(usize, usize, usize)> = share.chunks(Side::Queries).iter().map(|c| (c.stream, c.piece.start, c.piece.len)).collect();
    assert_eq!(q, [(2, 0, 1)]);
}

#[test]
fn a_sharded_plan_sorts_and_cuts_by_tokens_within_each_shard() {
    // Token budgets of 6 (queries): rank 0 holds lengths [1, 5, 2], rank 1
    // [4, 4, 3, 1]. Each shard is sorted on its own, longest first, then
    // cut greedily: rank 0 → [5] [2, 1]; rank 1 → [4] [4] [3, 1].
    let config = StepConfig { query_chunk_tokens: Some(6), passage_chunk_tokens: Some(100), ..StepConfig::default() };
    let lengths = [1, 5, 2, 4, 4, 3, 1];
    let plan = Plan::sharded(&config, PerSide::new(&[3, 4], &[2, 2]), PerSide::new(Some(&lengths), Some(&[1, 2, 3, 4]))).unwrap();
    let items = |plan: &Plan| -> Vec<Vec<i64>> {
        let rows = tch::Tensor::arange(7, (Kind::Int64, tch::Device::Cpu));
        plan.chunks(Side::Queries).iter().map(|c| Vec::<i64>::try_from(c.rows(&rows).unwrap()).unwrap()).collect()
    };
    assert_eq!(items(&plan), [vec![1], vec![2, 0], vec![3], vec![4], vec![5, 6]]);
    // Passages: 100 tokens hold each shard whole, still sorted within it.
    let rows = tch::Tensor::arange(4, (Kind::Int64, tch::Device::Cpu));
    let p: Vec<Vec<i64>> = plan.chunks(Side::Passages).iter().map(|c| Vec::<i64>::try_from(c.rows(&rows).unwrap()).unwrap()).collect();
    assert_eq!(p, [vec![1, 0], vec![3, 2]]);
    // Rank 1's share: its own items (local numbering), global streams 2–4.
    let share =
        plan.share(PerSide::new(gradcache::core::layout::Piece { start: 3, len: 4 }, gradcache::core::layout::Piece { start: 2, len: 2 }));
    let local: Vec<(usize, Vec<i64>)> = share
        .chunks(Side::Queries)
        .iter()
        .map(|c| (c.stream, Vec::<i64>::try_from(c.rows(&tch::Tensor::arange(4, (Kind::Int64, tch::Device::Cpu))).unwrap()).unwrap()))
        .collect();
    assert_eq!(local, [(2, vec![0]), (3, vec![1]), (4, vec![2, 3])]);
    // Lengths are needed where a side sorts.
    let err = Plan::sharded(&config, PerSide::new(&[3, 4], &[2, 2]), PerSide::new(None, Some(&[1, 2, 3, 4]))).unwrap_err();
    assert!(matches!(err, gradcache::GradCacheError::InvalidConfig { field: "query_chunk_tokens", .. }), "{err}");
}

#[test]
fn one_process_with_sorted_and_token_chunks_equals_the_full_batch_step() {
    let _serial = serial();
    let layout = gradcache::Layout { query_chunk_size: 2, passage_chunk_size: 3, head_block_queries: 2, head_block_passages: 5 };
    let configs = [
        ("sorted", StepConfig { layout, sort_by_length: true, ..StepConfig::default() }),
        ("token budgets", StepConfig { layout, query_chunk_tokens: Some(16), passage_chunk_tokens: Some(24), ..StepConfig::default() }),
        ("cost-sized blocks", StepConfig { layout, head_block_flops: Some(20_000.0), ..StepConfig::default() }),
    ];
    for (name, config) in configs {
        let (ours, reference, c) = one_process_against_full_batch(HeadKind::Interaction, config);
        assert_eq!(ours.sizes, reference.sizes, "{name}: the same cut");
        assert!(name != "cost-sized blocks" || ours.sizes.block_pairs.1 < 5, "{name}: the blocks were sized: {:?}", ours.sizes);
        assert_exact(&c, F64_TOL, &format!("{name}, one process"));
    }
}

/// The distributed step on one process and the full-batch step, from the
/// same generator state, on 5 queries × 2 passages with dropout on.
fn one_process_against_full_batch(head: HeadKind, config: StepConfig) -> (gradcache::StepOutput, gradcache::StepOutput, Comparison) {
    let model = Model::new(head, true, Kind::Double, 0.2);
    let data = data(5, 2, LossKind::InfoNce, 3);
    let loss = loss(LossKind::InfoNce);
    let mut gc = model.step(config, loss.as_ref());
    gradcache::check::zero_grads(&model.vs);
    tch::manual_seed(7);
    let ours = gc.distributed_step(&data.queries, &data.passages, &data.targets, &model.vs, &SingleProcess).unwrap();
    let ours_grads = gradcache::check::GradientSnapshot::take(&model.vs).unwrap();
    gradcache::check::zero_grads(&model.vs);
    tch::manual_seed(7);
    let reference = gc.full_batch_step(&data.queries, &data.passages, &data.targets).unwrap();
    let theirs = gradcache::check::GradientSnapshot::take(&model.vs).unwrap();
    let c = Comparison { cached_loss: ours.loss, reference_loss: reference.loss, grads: ours_grads.compare(&theirs).unwrap() };
    (ours, reference, c)
}

#[test]
fn one_process_equals_the_full_batch_step() {
    let _serial = serial();
    let config = StepConfig {
        layout: gradcache::Layout { query_chunk_size: 2, passage_chunk_size: 3, head_block_queries: 2, head_block_passages: 5 },
        ..StepConfig::default()
    };
    for head in [HeadKind::Dot, HeadKind::Mlp, HeadKind::Interaction, HeadKind::Mol] {
        let (_, _, c) = one_process_against_full_batch(head, config.clone());
        assert_exact(&c, F64_TOL, &format!("{head:?}, one process"));
    }
}

#[test]
fn gradients_from_earlier_steps_are_kept_not_summed_again() {
    // Two accumulated distributed steps equal two accumulated full-batch
    // steps: the sum over processes covers only each step's own gradient.
    let _serial = serial();
    let config = StepConfig {
        layout: gradcache::Layout { query_chunk_size: 2, passage_chunk_size: 3, ..gradcache::Layout::default() },
        ..StepConfig::default()
    };
    let model = Model::new(HeadKind::Mlp, true, Kind::Double, 0.2);
    let data = data(4, 2, LossKind::InfoNce, 4);
    let loss = loss(LossKind::InfoNce);
    let mut gc = model.step(config, loss.as_ref());
    gradcache::check::zero_grads(&model.vs);
    tch::manual_seed(8);
    for _ in 0..2 {
        gc.distributed_step(&data.queries, &data.passages, &data.targets, &model.vs, &SingleProcess).unwrap();
    }
    let ours = gradcache::check::GradientSnapshot::take(&model.vs).unwrap();
    gradcache::check::zero_grads(&model.vs);
    tch::manual_seed(8);
    for _ in 0..2 {
        gc.full_batch_step(&data.queries, &data.passages, &data.targets).unwrap();
    }
    let theirs = gradcache::check::GradientSnapshot::take(&model.vs).unwrap();
    let c = Comparison { cached_loss: 0.0, reference_loss: 0.0, grads: ours.compare(&theirs).unwrap() };
    assert_exact(&c, F64_TOL, "two accumulated steps");
}

#[test]
fn shards_and_unsupported_settings_are_checked() {
    let _serial = serial();
    let shards = Shards::exchange(&SingleProcess, 3, 6).unwrap();
    assert_eq!((shards.queries.clone(), shards.passages.clone(), shards.own(Side::Passages).len), (vec![3], vec![6], 6));
    let model = Model::new(HeadKind::Mlp, true, Kind::Double, 0.2);
    let data = data(3, 2, LossKind::InfoNce, 5);
    let loss = loss(LossKind::InfoNce);
    let retain = StepConfig { memory: MemoryConfig::Recompute { recompute: Recompute::None }, ..StepConfig::default() };
    let err = model
        .step(retain, loss.as_ref())
        .distributed_step(&data.queries, &data.passages, &data.targets, &model.vs, &SingleProcess)
        .unwrap_err();
    assert!(matches!(err, gradcache::GradCacheError::InvalidConfig { field: "memory", .. }), "{err}");
    assert_eq!(SingleProcess.world_size(), 1);
}

/// `mpirun -np ranks EXAMPLE` with the flags this machine needs (as root:
/// allowed explicitly; more ranks than cores: oversubscribed), for one of
/// this build's examples.
#[cfg(feature = "mpi")]
fn mpirun(ranks: usize, example: &str) -> std::process::Command {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("examples").join(example);
    assert!(
        bin.exists(),
        "{} is not built: run `cargo build --features mpi --examples` first (scripts/gradcache.sh test does)",
        bin.display()
    );
    let mut cmd = std::process::Command::new("mpirun");
    cmd.args(["--oversubscribe", "-np", &ranks.to_string()]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.arg("--allow-run-as-root");
    }
    cmd.arg(bin);
    cmd
}

#[cfg(feature = "mpi")]
#[test]
fn one_two_and_three_processes_equal_the_full_batch_step_and_catch_local_targets() {
    for ranks in [1, 2, 3] {
        let out = mpirun(ranks, "mpi_exactness").output().expect("mpirun (Open MPI) must be installed: scripts/gradcache.sh setup");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "mpirun -np {ranks} failed:\n{stdout}\n{stderr}");
        // Every rank reported every case, and the control was caught.
        let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("rank ")).collect();
        assert_eq!(lines.iter().filter(|l| l.ends_with(": ok")).count(), 14 * ranks, "{stdout}");
        let controls = if ranks > 1 { ranks } else { 0 };
        assert_eq!(lines.iter().filter(|l| l.ends_with("caught (ok)")).count(), controls, "{stdout}");
    }
}

/// Under bf16 autocast the distributed step (one process here; two in
/// `a_two_process_training_run_writes_the_weights_of_a_one_process_run`,
/// which trains in bf16) equals the full-batch step under the same
/// autocast by tests/precision.rs's criterion: the same loss, and a
/// gradient distance under a tenth of what bf16 itself moves against f32
/// (per parameter this tiny encoder's bf16 rounding reaches 2e-3 of the
/// largest gradient in the single-process step as well).
#[test]
fn one_process_equals_the_full_batch_step_under_bf16() {
    use gradcache::check::{zero_grads, GradientSnapshot};
    use gradcache::runtime::precision::Precision;
    let _serial = serial();
    let layout = gradcache::Layout { query_chunk_size: 2, passage_chunk_size: 3, head_block_queries: 2, head_block_passages: 5 };
    for head in [HeadKind::Mlp, HeadKind::Interaction] {
        let model = Model::new(head, true, Kind::Float, 0.2);
        let data = data(5, 2, LossKind::InfoNce, 3);
        let loss = loss(LossKind::InfoNce);
        let run = |precision: Precision, distributed: bool| {
            let mut gc = model.step(StepConfig { layout, precision, ..StepConfig::default() }, loss.as_ref());
            zero_grads(&model.vs);
            tch::manual_seed(7);
            let out = if distributed {
                gc.distributed_step(&data.queries, &data.passages, &data.targets, &model.vs, &SingleProcess).unwrap()
            } else {
                gc.full_batch_step(&data.queries, &data.passages, &data.targets).unwrap()
            };
            (out.loss, GradientSnapshot::take(&model.vs).unwrap())
        };
        let (ours_loss, ours) = run(Precision::Bf16, true);
        let (full_loss, full) = run(Precision::Bf16, false);
        let (f32_loss, f32_full) = run(Precision::F32, false);
        let (step, precision) = (ours.relative_distance(&full).unwrap(), full.relative_distance(&f32_full).unwrap());
        assert!((ours_loss - full_loss).abs() <= 1e-6 * full_loss.abs().max(1.0), "{head:?}: losses {ours_loss} vs {full_loss}");
        assert!((full_loss - f32_loss).abs() > 1e-6, "{head:?}: bf16 loss equals f32's: autocast is off");
        assert!(
            step <= 0.1 * precision,
            "{head:?}: the distributed step's difference ({step:.2e}) is not small against bf16's own ({precision:.2e})"
        );
    }
}

/// A small recipe run's config: a 1-layer width-32 BERT, eight JSONL
/// records, batches of 4 queries in chunks of 2 (so each of 2 processes
/// holds whole chunks, and draws the same dropout streams as one process).
#[cfg(feature = "mpi")]
fn small_recipe(dir: &std::path::Path) -> gradcache::app::recipe::RerankerConfig {
    use gradcache::models::heads::{HeadConfig, MlpHeadConfig};
    common::tiny_bert_folder(&dir.join("bert"), 32, 4, 1, 0);
    let records: Vec<String> = (0..8)
        .map(|i| serde_json::json!({"query": format!("question {i} about topic {}", i * 7), "positive": format!("answer {i} on topic {}", i * 7), "negatives": [format!("unrelated text {i}")]}).to_string())
        .collect();
    std::fs::write(dir.join("train.jsonl"), records.join("\n")).unwrap();
    let mut c = gradcache::app::recipe::RerankerConfig {
        model_dir: dir.join("bert"),
        data_dir: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(gradcache::app::data::wordnet::EMBEDDED_TASK_DIR),
        train_jsonl: Some(dir.join("train.jsonl")),
        device: "cpu".into(),
        batch_size: 4,
        dev_queries: 8,
        baselines: None,
        head: HeadConfig::Mlp(MlpHeadConfig { dim: 32, hidden: 8, ..MlpHeadConfig::default() }),
        check_weights_every: 1,
        ..Default::default()
    };
    c.step.layout.query_chunk_size = 2;
    c.step.layout.passage_chunk_size = 2;
    // Item chunks in batch order: each process's are then the one
    // process's, and so are the dropout draws (token budgets sort within
    // each process's share, a different cut from one process's).
    c.step.query_chunk_tokens = None;
    c.step.passage_chunk_tokens = None;
    // The processes' step in bf16 whatever the machine (the recipe's auto
    // would pick f32 where the CPU lacks bfloat16 units).
    c.step.precision = gradcache::runtime::precision::Precision::Bf16;
    c.train.steps = 3;
    c.train.checkpoint_every = 1;
    c.train.progress = false;
    c
}

#[cfg(feature = "mpi")]
fn bundle_weights(dir: &std::path::Path) -> Vec<(String, tch::Tensor)> {
    let mut all = Vec::new();
    for file in ["model/head.safetensors", "model/query_encoder/model.safetensors"] {
        let mut named = tch::Tensor::read_safetensors(dir.join(file)).unwrap();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        all.extend(named.into_iter().map(|(n, t)| (format!("{file}:{n}"), t)));
    }
    all
}

#[cfg(feature = "mpi")]
#[test]
fn a_two_process_training_run_writes_the_weights_of_a_one_process_run() {
    let _serial = serial();
    let dir = scratch("distributed_recipe");
    let mut c = small_recipe(&dir);
    let config = dir.join("config.json");
    std::fs::write(&config, serde_json::to_string_pretty(&c).unwrap()).unwrap();

    let two = dir.join("two");
    let stdout = mpirun_recipe(&config, &two, &[]);
    assert!(stdout.contains("2 processes (MPI)"), "{stdout}");
    // Rank 0 alone wrote the folder: one log line per step.
    let log = std::fs::read_to_string(two.join("metrics.jsonl")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("\"loss\"")).count(), 3, "{log}");

    c.output_dir = dir.join("one");
    gradcache::app::recipe::run(&c, gradcache::app::recipe::Start::New, &gradcache::app::reporter::Silent).unwrap();
    let (a, b) = (bundle_weights(&two), bundle_weights(&c.output_dir));
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f64;
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let d = (x - y).abs().max().double_value(&[]);
        worst = worst.max(d);
        assert!(d <= 1e-5, "{name}: the two runs' weights differ by {d}");
    }
    println!("largest weight difference, 2 processes vs 1: {worst:e}");
}

/// A pretend second process whose every gathered row is this one's, with
/// its first value nudged: what a diverged process would report.
struct DivergedPeer;

impl Collective for DivergedPeer {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        2
    }
    fn all_gather(&self, local: &tch::Tensor) -> gradcache::Result<tch::Tensor> {
        let other = local.copy();
        let _ = other.flatten(0, -1).get(0).f_add_scalar_(1e-12)?;
        Ok(tch::Tensor::cat(&[local, &other], 0))
    }
    fn all_reduce_sum(&self, tensor: &tch::Tensor) -> gradcache::Result<tch::Tensor> {
        Ok(tensor * 2)
    }
    fn broadcast(&self, tensor: &tch::Tensor, _root: usize) -> gradcache::Result<tch::Tensor> {
        Ok(tensor.copy())
    }
    fn barrier(&self) {}
    fn traffic(&self) -> gradcache::core::distributed::Traffic {
        Default::default()
    }
}

#[test]
fn the_weight_check_passes_for_one_process_and_catches_a_diverged_one() {
    let _serial = serial();
    let model = Model::new(HeadKind::Mlp, true, Kind::Double, 0.2);
    gradcache::core::distributed::check_same_weights(&model.vs, &SingleProcess, 5).unwrap();
    let err = gradcache::core::distributed::check_same_weights(&model.vs, &DivergedPeer, 5).unwrap_err();
    assert!(err.to_string().contains("differ before step 5"), "{err}");
}

#[cfg(feature = "mpi")]
fn mpirun_recipe(config: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> String {
    let run = mpirun(2, "train_reranker").arg("--config").arg(config).arg("--output-dir").arg(out).args(extra).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(
        run.status.success(),
        "{stdout}\n{}\n(examples are built by `cargo build --features mpi --examples`)",
        String::from_utf8_lossy(&run.stderr)
    );
    stdout
}

#[cfg(feature = "mpi")]
#[test]
fn a_two_process_run_resumed_under_two_processes_ends_like_an_uninterrupted_one() {
    let _serial = serial();
    let dir = scratch("distributed_resume");
    let mut c = small_recipe(&dir);
    c.train.steps = 4;
    // Token budgets, as the recipe's default cuts: each process sorts its
    // share and cuts it into chunks of one or two of these short texts.
    c.step.query_chunk_tokens = Some(12);
    c.step.passage_chunk_tokens = Some(12);
    let config = dir.join("config.json");
    std::fs::write(&config, serde_json::to_string_pretty(&c).unwrap()).unwrap();
    mpirun_recipe(&config, &dir.join("whole"), &[]);
    // The same run stopped after 2 steps (the checkpoint of step 2 is what
    // a crash at step 3 would leave), then resumed to 4.
    let mut first = c.clone();
    first.train.steps = 2;
    let short = dir.join("short.json");
    std::fs::write(&short, serde_json::to_string_pretty(&first).unwrap()).unwrap();
    let split = dir.join("split");
    mpirun_recipe(&short, &split, &[]);
    let resumed = mpirun_recipe(&config, &split, &["--resume"]);
    assert!(resumed.contains("resuming from"), "{resumed}");
    for ((name, x), (_, y)) in bundle_weights(&dir.join("whole")).iter().zip(&bundle_weights(&split)) {
        assert!(x.equal(y), "{name} differs after the resume");
    }
}
