//! The training loop: optimizer parity with PyTorch, schedule, sampling,
//! exact resume, and unusable checkpoints.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use gradcache::app::train::optim::{AdamW, LinearSchedule};
use gradcache::app::train::{sample_indices, TrainConfig, Trainer};
use gradcache::AppError;
use gradcache::{GradCacheError, StepConfig};
use tch::{nn, Device, Kind, Tensor};

/// Reference: torch 2.4.0, float64.
/// ```python
/// w = torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64, requires_grad=True)
/// b = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
/// opt = torch.optim.AdamW([{"params": [w], "weight_decay": 0.1},
///                          {"params": [b], "weight_decay": 0.0}], lr=0.05)
/// for gw, gb in [([[0.1, -0.2], [0.3, 0.0]], [1.0, -0.5]),
///                ([[-0.4, 0.1], [0.2, 0.5]], [0.25, 0.75]),
///                ([[0.0, 0.3], [-0.1, 0.2]], [-1.0, 2.0])]:
///     w.grad, b.grad = torch.tensor(gw, ...), torch.tensor(gb, ...); opt.step()
/// ```
#[test]
fn adamw_matches_torch() {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let mut w = root.var_copy("w", &Tensor::from_slice(&[0.5f64, -1.0, 2.0, 0.25]).view([2, 2]));
    let mut b = root.var_copy("b", &Tensor::from_slice(&[1.0f64, -2.0]));
    vs.double();
    let grads = [([0.1, -0.2, 0.3, 0.0], [1.0, -0.5]), ([-0.4, 0.1, 0.2, 0.5], [0.25, 0.75]), ([0.0, 0.3, -0.1, 0.2], [-1.0, 2.0])];
    let mut opt = AdamW::new(0.1);
    for (gw, gb) in grads {
        w.zero_grad();
        b.zero_grad();
        let loss = (&w * Tensor::from_slice(&gw).view([2, 2])).sum(Kind::Double) + (&b * Tensor::from_slice(&gb)).sum(Kind::Double);
        loss.backward();
        opt.step(&vs, 0.05).unwrap();
    }
    let want_w = [0.49249638054086486, -0.9417928491785676, 1.8447788916115422, 0.17067825573158257];
    let want_b = [0.9076913128634287, -1.9954397425654895];
    let got_w = Vec::<f64>::try_from(w.flatten(0, -1)).unwrap();
    let got_b = Vec::<f64>::try_from(&b).unwrap();
    for (g, e) in got_w.iter().chain(&got_b).zip(want_w.iter().chain(&want_b)) {
        assert!((g - e).abs() < 1e-12, "{got_w:?} {got_b:?}");
    }
}

#[test]
fn schedule_warms_up_then_decays_to_zero() {
    let s = LinearSchedule { peak: 1.0, warmup: 4, total: 10 };
    let lrs: Vec<f64> = (0..10).map(|i| s.lr(i)).collect();
    assert_eq!(&lrs[..4], &[0.25, 0.5, 0.75, 1.0]);
    assert_eq!(lrs[4], 1.0);
    assert!((lrs[9] - 1.0 / 6.0).abs() < 1e-12);
    assert!(lrs[4..].windows(2).all(|w| w[1] < w[0]));
}

#[test]
fn sampling_visits_every_item_once_per_epoch_and_depends_only_on_the_step() {
    let n = 10;
    let epoch: Vec<usize> = (0..5).flat_map(|s| sample_indices(n, 2, s, 7)).collect();
    let mut sorted = epoch.clone();
    sorted.sort();
    assert_eq!(sorted, (0..n).collect::<Vec<_>>());
    assert_eq!(sample_indices(n, 3, 4, 7), sample_indices(n, 3, 4, 7));
    assert_ne!(sample_indices(n, 10, 0, 7), sample_indices(n, 10, 0, 8));
    assert_ne!(sample_indices(n, 10, 0, 7), sample_indices(n, 10, 1, 7), "epochs differ in order");
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gradcache-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        learning_rate: 1e-2,
        warmup_steps: 2,
        checkpoint_every: 3,
        lr_multipliers: BTreeMap::from([("head".to_string(), 3.0)]),
        progress: false,
        ..TrainConfig::default()
    }
}

/// Trains a tiny model (dropout on) with the two-cache step; batch `i` is a
/// function of `i` only.
fn train(out: &Path, steps: usize, resume: bool) -> (Vec<f64>, WeightSnapshot) {
    let model = Model::new(HeadKind::Mlp, true, Kind::Float, 0.2);
    let loss = loss(LossKind::InfoNce);
    let step_config = StepConfig {
        layout: gradcache::Layout { query_chunk_size: 3, passage_chunk_size: 4, head_block_queries: 3, head_block_passages: 5 },
        ..StepConfig::default()
    };
    let mut gc = model.step(step_config, loss.as_ref());
    let mut trainer = Trainer::new(config(steps), &model.vs, out, resume).unwrap();
    let summary = trainer
        .run(
            |i| {
                let d = data(6, 2, LossKind::InfoNce, 1000 + i as i64);
                gc.step(&d.queries, &d.passages, &d.targets)
            },
            |_| Ok::<_, AppError>(BTreeMap::new()),
            &gradcache::app::reporter::Silent,
        )
        .unwrap();
    (summary.losses, WeightSnapshot::take(&model.vs))
}

/// The weights themselves (not their gradients), by name.
struct WeightSnapshot(Vec<(String, Tensor)>);
impl WeightSnapshot {
    fn take(vs: &nn::VarStore) -> Self {
        let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        WeightSnapshot(v)
    }
}

#[test]
fn resume_continues_exactly() {
    let _serial = serial();
    let (full_losses, full_weights) = train(&out_dir("full"), 6, false);
    let dir = out_dir("resumed");
    let (first, _) = train(&dir, 3, false);
    let (rest, resumed_weights) = train(&dir, 6, true);
    assert_eq!(first.len() + rest.len(), 6);
    let joined: Vec<f64> = first.iter().chain(&rest).copied().collect();
    assert_eq!(joined, full_losses, "losses after the resume differ");
    for ((name, a), (_, b)) in full_weights.0.iter().zip(&resumed_weights.0) {
        assert!(a.equal(b), "{name} differs after the resume");
    }
    // The log has each step once.
    let log = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
    // The step plan is logged once, on the first step (not again on resume).
    let planned: Vec<u64> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e.get("plan").is_some())
        .map(|e| {
            assert!(e["plan"]["query_chunks"].as_u64().unwrap() >= 1, "{e}");
            e["step"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(planned, [1]);
}

#[test]
fn resuming_a_finished_run_reports_the_model_as_it_stands() {
    let _serial = serial();
    let dir = out_dir("finished");
    train(&dir, 3, false);
    let model = Model::new(HeadKind::Mlp, true, Kind::Float, 0.2);
    let mut trainer = Trainer::new(config(3), &model.vs, &dir, true).unwrap();
    assert_eq!(trainer.first_step(), 3);
    let mut evaluated = Vec::new();
    let summary = trainer
        .run(
            |_| -> Result<gradcache::StepOutput, AppError> { panic!("no step is left to run") },
            |i| {
                evaluated.push(i);
                Ok::<_, AppError>(BTreeMap::from([("wsd_accuracy".to_string(), 0.5)]))
            },
            &gradcache::app::reporter::Silent,
        )
        .unwrap();
    assert!(summary.losses.is_empty());
    assert_eq!(evaluated, [3]);
    assert_eq!(summary.after["wsd_accuracy"], 0.5);
}

#[test]
fn resuming_without_the_optimizer_state_would_diverge() {
    // Control for the test above: it passes because the checkpoint carries
    // AdamW's moments, not by accident. Replace them with a fresh state and
    // steps 4..6 differ.
    let _serial = serial();
    let (full_losses, _) = train(&out_dir("control-full"), 6, false);
    let dir = out_dir("control");
    train(&dir, 3, false);
    let ckpt = dir.join("checkpoints/step-000003");
    AdamW::new(0.01).save(&ckpt.join("optimizer.safetensors")).unwrap();
    // Record the replacement's checksum, as if the checkpoint had been
    // written that way (otherwise the resume rightly refuses the file).
    let mut state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ckpt.join("state.json")).unwrap()).unwrap();
    state["checksums"]["optimizer.safetensors"] =
        gradcache::app::train::checkpoint::sha256_file(&ckpt.join("optimizer.safetensors")).unwrap().into();
    std::fs::write(ckpt.join("state.json"), state.to_string()).unwrap();
    let (rest, _) = train(&dir, 6, true);
    assert_eq!(rest.len(), 3, "still resumes at step 3");
    assert_eq!(rest[0], full_losses[3], "step 4's loss only depends on the restored weights");
    assert_ne!(rest[1..], full_losses[4..], "later steps depend on the optimizer state");
}

#[test]
fn a_fresh_run_keeps_the_previous_one_aside() {
    let _serial = serial();
    let dir = out_dir("fresh");
    train(&dir, 6, false);
    train(&dir, 3, false);
    let steps =
        |d: &str| -> Vec<usize> { gradcache::app::train::checkpoint::list(&dir.join(d)).unwrap().into_iter().map(|(s, _)| s).collect() };
    assert_eq!(steps("checkpoints"), [3], "no stale checkpoint of the earlier run");
    assert_eq!(steps("checkpoints.previous"), [3, 6]);
    let lines = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap().lines().count();
    assert_eq!((lines("metrics.jsonl"), lines("metrics.previous.jsonl")), (3, 6));
}

#[test]
fn unusable_checkpoints_are_clear_errors() {
    let _serial = serial();
    let dir = out_dir("corrupt");
    train(&dir, 3, false);
    let ckpt = dir.join("checkpoints/step-000003");
    assert!(ckpt.join("model.safetensors").is_file());
    let model = Model::new(HeadKind::Mlp, true, Kind::Float, 0.2);

    // Another training configuration.
    let other = TrainConfig { learning_rate: 0.5, ..config(6) };
    let err = Trainer::new(other, &model.vs, &dir, true).unwrap_err();
    assert!(matches!(&err, AppError::ResumeMismatch { fields, .. } if fields == &["train.learning_rate: 0.01 -> 0.5"]), "{err}");

    // Another model: separate encoders instead of a tied one.
    let separate = Model::new(HeadKind::Mlp, false, Kind::Float, 0.2);
    let err = Trainer::new(config(6), &separate.vs, &dir, true).unwrap_err();
    assert!(matches!(err, AppError::Checkpoint { .. }), "{err}");

    // Corrupt state and truncated weights.
    let state = std::fs::read(ckpt.join("state.json")).unwrap();
    std::fs::write(ckpt.join("state.json"), b"{\"step\": 3, \"conf").unwrap();
    let err = Trainer::new(config(6), &model.vs, &dir, true).unwrap_err();
    assert!(matches!(&err, AppError::Checkpoint { reason, .. } if reason.contains("state.json is corrupt")), "{err}");
    std::fs::write(ckpt.join("state.json"), state).unwrap();
    let weights = std::fs::read(ckpt.join("model.safetensors")).unwrap();
    std::fs::write(ckpt.join("model.safetensors"), &weights[..weights.len() / 2]).unwrap();
    assert!(Trainer::new(config(6), &model.vs, &dir, true).is_err());
}

#[test]
fn training_configs_are_validated() {
    assert!(matches!(
        TrainConfig { steps: 0, ..TrainConfig::default() }.validate(),
        Err(AppError::Core(GradCacheError::InvalidConfig { field: "steps", .. }))
    ));
    assert!(matches!(
        TrainConfig { learning_rate: f64::NAN, ..TrainConfig::default() }.validate(),
        Err(AppError::Core(GradCacheError::InvalidConfig { field: "learning_rate", .. }))
    ));
    let err = serde_json::from_str::<TrainConfig>(r#"{"step": 5}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field"));
}

#[test]
fn a_non_finite_gradient_stops_before_the_update() {
    let _serial = serial();
    let model = Model::new(HeadKind::Dot, true, Kind::Float, 0.0);
    let loss = loss(LossKind::InfoNce);
    let mut gc = model.step(StepConfig::default(), loss.as_ref());
    let before = WeightSnapshot::take(&model.vs);
    let mut trainer = Trainer::new(config(2), &model.vs, &out_dir("nan"), false).unwrap();
    let err = trainer
        .run(
            |i| {
                let d = data(4, 2, LossKind::InfoNce, i as i64);
                let out = gc.step(&d.queries, &d.passages, &d.targets)?;
                let g = model.vs.variables()["encoder.mix.bias"].grad();
                let _ = g.shallow_clone().fill_(f64::NAN);
                Ok::<_, gradcache::GradCacheError>(out)
            },
            |_| Ok::<_, AppError>(BTreeMap::new()),
            &gradcache::app::reporter::Silent,
        )
        .unwrap_err();
    assert!(matches!(err, AppError::NonFiniteGradient { step: 1 }), "{err}");
    for ((name, a), (_, b)) in before.0.iter().zip(&WeightSnapshot::take(&model.vs).0) {
        assert!(a.equal(b), "{name} was updated");
    }
}

/// Float32 CPU variables take AdamW's fused one-pass update (two threads
/// from 65,536 elements); float64 ones the tensor ops that
/// `adamw_matches_torch` checks against torch. The same three steps from
/// the same values and gradients agree to float32 rounding, for a matrix
/// (weight decay) and a vector (none), large and small.
#[test]
fn adamw_in_float32_follows_the_float64_update() {
    // Draws from libtorch's global generator, which other tests seed.
    let _serial = serial();
    let run = |kind: Kind| -> Vec<Tensor> {
        let mut vs = nn::VarStore::new(Device::Cpu);
        tch::manual_seed(11);
        let shapes: [&[i64]; 3] = [&[300, 256], &[256], &[3, 5]];
        for (i, s) in shapes.iter().enumerate() {
            let _ = vs.root().var_copy(&format!("w{i}"), &Tensor::randn(*s, (Kind::Double, Device::Cpu)));
        }
        let grads: Vec<Vec<Tensor>> =
            (0..3).map(|_| shapes.iter().map(|s| Tensor::randn(*s, (Kind::Double, Device::Cpu))).collect()).collect();
        if kind == Kind::Double {
            vs.double();
        } else {
            vs.float();
        }
        let vars: Vec<Tensor> = vs.root().get("w0").into_iter().chain(vs.root().get("w1")).chain(vs.root().get("w2")).collect();
        let mut opt = AdamW::new(0.1);
        for step in &grads {
            let loss = vars
                .iter()
                .zip(step)
                .map(|(w, g)| (w * g.to_kind(kind)).sum(kind))
                .fold(Tensor::zeros([], (kind, Device::Cpu)), |a, b| a + b);
            for w in &vars {
                let mut w = w.shallow_clone();
                w.zero_grad();
            }
            loss.backward();
            opt.step(&vs, 0.05).unwrap();
        }
        vars.iter().map(|w| w.to_kind(Kind::Double)).collect()
    };
    let (f32_vars, f64_vars) = (run(Kind::Float), run(Kind::Double));
    for (a, b) in f32_vars.iter().zip(&f64_vars) {
        let diff = (a - b).abs().max().double_value(&[]);
        let scale = b.abs().max().double_value(&[]);
        assert!(diff <= 1e-5 * scale.max(1.0), "float32 update off by {diff} (values up to {scale})");
        // It moved: the update is not a no-op.
        assert!(scale > 0.0);
    }
}

/// TensorBoard's own reader (`EventAccumulator`, the `tensorboard` package
/// in the test venv) reads every scalar of `metrics.jsonl` back from
/// `OUTPUT/tensorboard/`, equal in float32, step for step; after a resume,
/// each step once (the kept entries, then the new ones) — with an eval
/// entry among them.
#[test]
fn tensorboard_reads_back_every_scalar_of_the_metrics_log() {
    let _serial = serial();
    let dir = out_dir("tensorboard");
    // A tiny run with an evaluation every 2 steps, cut after 3 and resumed.
    let run = |steps: usize, resume: bool| {
        let model = Model::new(HeadKind::Mlp, true, Kind::Float, 0.2);
        let loss = loss(LossKind::InfoNce);
        let mut gc = model.step(StepConfig::default(), loss.as_ref());
        let mut trainer = Trainer::new(TrainConfig { eval_every: 2, ..config(steps) }, &model.vs, &dir, resume).unwrap();
        trainer
            .run(
                |i| {
                    let d = data(6, 2, LossKind::InfoNce, 1000 + i as i64);
                    gc.step(&d.queries, &d.passages, &d.targets)
                },
                |step| Ok::<_, AppError>(BTreeMap::from([("reranked.mrr10".to_string(), step as f64 / 10.0)])),
                &gradcache::app::reporter::Silent,
            )
            .unwrap();
    };
    run(3, false);
    run(6, true);
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}))
"#;
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".python");
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(dir.join("tensorboard"))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/gradcache.sh setup", python.display()));
    assert!(out.status.success(), "tensorboard's reader failed: {}", String::from_utf8_lossy(&out.stderr));
    let read: BTreeMap<String, Vec<(i64, f64)>> = serde_json::from_slice(&out.stdout).unwrap();
    let log = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let mut want: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for line in log.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        for (tag, v) in gradcache::app::train::tensorboard::entry_scalars(&e) {
            want.entry(tag).or_default().push((e["step"].as_i64().unwrap(), f64::from(v)));
        }
    }
    for tag in ["train/loss", "train/lr", "train/grad_norm", "pass_seconds/encoder", "gflop_s/head", "eval/reranked.mrr10"] {
        assert!(want.contains_key(tag), "metrics.jsonl has no {tag}: {:?}", want.keys());
    }
    assert_eq!(read.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    // Float32 is what an event holds; JSON printing may differ in the
    // last digit of the f64 it widens to.
    let as_f32 = |p: &[(i64, f64)]| p.iter().map(|&(s, v)| (s, v as f32)).collect::<Vec<_>>();
    for (tag, points) in &want {
        assert_eq!(as_f32(&read[tag]), as_f32(points), "{tag}");
    }
    // Before training, every 2 steps, and at the end of the first run (3).
    assert_eq!(want["eval/reranked.mrr10"].iter().map(|p| p.0).collect::<Vec<_>>(), [0, 2, 3, 4, 6]);
    assert_eq!(want["train/loss"].iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    // The fresh run of another folder set the earlier files aside, not mixed.
    let files = std::fs::read_dir(dir.join("tensorboard")).unwrap().count();
    assert_eq!(files, 1, "one event file after the resume");
}
