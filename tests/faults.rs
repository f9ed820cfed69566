//! Crash tests: the trainer killed with SIGKILL at random points (and right
//! as a checkpoint is being written), resumed each time, ends with the same
//! model and the same metrics log as an uninterrupted run, bit for bit.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RECORDS: [&str; 4] = [
    r#"{"query": "how do I reset my router", "positive": "hold the reset button", "negatives": ["the bakery opens at seven"]}"#,
    r#"{"query": "capital of france", "positive": "paris is the capital", "negatives": ["berlin is in germany"]}"#,
    r#"{"query": "boil an egg", "positive": "eight minutes in boiling water", "negatives": ["hens lay eggs"]}"#,
    r#"{"query": "sort a list in python", "positive": "call sorted on it", "negatives": ["pythons are snakes"]}"#,
];

fn setup(dir: &Path) -> PathBuf {
    common::tiny_bert_folder(&dir.join("bert"), 32, 4, 1, 0);
    std::fs::write(dir.join("train.jsonl"), RECORDS.join("\n")).unwrap();
    let config = serde_json::json!({
        "model_dir": dir.join("bert"), "train_jsonl": dir.join("train.jsonl"),
        "device": "cpu", "batch_size": 4, "dev_queries": 6, "baselines": null,
        "head": {"kind": "mlp", "dim": 32, "hidden": 8},
        "train": {"steps": 8, "checkpoint_every": 1, "keep_checkpoints": 2, "progress": false},
    });
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

fn start(config: &Path, out: &Path, resume: bool, stop_in_checkpoint: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gradcache"));
    cmd.args(["train", "--config", config.to_str().unwrap(), "--output-dir", out.to_str().unwrap(), "--quiet"]);
    if resume {
        cmd.arg("--resume");
    }
    if stop_in_checkpoint {
        // The trainer stops itself half-way through its next checkpoint
        // write: the kill lands there whatever the machine's speed.
        cmd.env(gradcache::app::train::checkpoint::STOP_AT_ENV, "checkpoint");
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

/// The metrics log without wall-clock times.
fn log_lines(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            // Wall-time figures differ between any two runs.
            v.as_object_mut().unwrap().remove("seconds");
            v.as_object_mut().unwrap().remove("gflop_s");
            v.as_object_mut().unwrap().remove("pass_seconds");
            v
        })
        .collect()
}

fn bundle_bytes(out: &Path) -> Vec<Vec<u8>> {
    bundle_files(out, "model")
}

fn bundle_files(out: &Path, bundle: &str) -> Vec<Vec<u8>> {
    ["head.safetensors", "query_encoder/model.safetensors", "gradcache.json"]
        .iter()
        .map(|f| std::fs::read(out.join(bundle).join(f)).unwrap_or_else(|e| panic!("{bundle}/{f}: {e}")))
        .collect()
}

/// When to kill an attempt.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// This many milliseconds after the log shows step `k` done.
    AfterStep(u64, u64),
    /// Half-way through a checkpoint write: the trainer stops itself there
    /// (SIGSTOP, `GRADCACHE_TEST_STOP_AT=checkpoint`) and is killed stopped.
    DuringCheckpoint,
}

/// Whether the process is stopped (state `T` in /proc).
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
        .unwrap_or(false)
}

fn last_logged_step(out: &Path) -> u64 {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .filter_map(|v| v["step"].as_u64())
        .max()
        .unwrap_or(0)
}

fn checkpoint_being_written(out: &Path) -> bool {
    std::fs::read_dir(out.join("checkpoints"))
        .map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().starts_with(".step-")))
        .unwrap_or(false)
}

/// Runs to completion: attempt `i` is killed as `kills[i]` says (later
/// attempts run to the end); every attempt after the first resumes.
/// Returns how many kills landed.
fn run_with_kills(config: &Path, out: &Path, kills: &[Kill]) -> usize {
    let mut killed = 0;
    for attempt in 0.. {
        let kill = kills.get(attempt).copied();
        let mut child = start(config, out, attempt > 0, matches!(kill, Some(Kill::DuringCheckpoint)));
        let mut event: Option<Instant> = None;
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                assert!(status.success(), "attempt {attempt} failed: {err}");
                break true;
            }
            let due = match kill {
                Some(Kill::AfterStep(k, delay)) => {
                    if event.is_none() && last_logged_step(out) >= k {
                        event = Some(Instant::now());
                    }
                    event.is_some_and(|t| t.elapsed() >= Duration::from_millis(delay))
                }
                Some(Kill::DuringCheckpoint) => {
                    let due = stopped(child.id());
                    assert!(!due || checkpoint_being_written(out), "stopped outside a checkpoint write");
                    due
                }
                None => false,
            };
            if due {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                killed += 1;
                break false;
            }
            std::thread::sleep(Duration::from_micros(300));
        };
        if finished {
            return killed;
        }
        assert!(attempt < 40, "never finished");
    }
    unreachable!()
}

#[test]
fn killed_and_resumed_runs_end_bit_for_bit_like_an_uninterrupted_one() {
    let _serial = common::serial();
    let dir = common::scratch("faults");
    let config = setup(&dir);
    let reference = dir.join("reference");
    assert_eq!(run_with_kills(&config, &reference, &[]), 0);
    let reference_log = log_lines(&reference);
    assert_eq!(reference_log.iter().filter(|l| l.get("loss").is_some()).count(), 8);

    // Kills spread over the run with fixed pseudo-random delays (the test
    // must be repeatable), two of them during a checkpoint write.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut delay = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % 30
    };
    let kills = [
        Kill::AfterStep(0, delay()),
        Kill::AfterStep(1, delay()),
        Kill::DuringCheckpoint,
        Kill::AfterStep(3, delay()),
        Kill::DuringCheckpoint,
        Kill::AfterStep(5, delay()),
        Kill::AfterStep(6, delay()),
    ];
    let interrupted = dir.join("interrupted");
    let killed = run_with_kills(&config, &interrupted, &kills);
    assert!(killed >= 4, "only {killed} kills landed before the run finished");
    assert_eq!(log_lines(&interrupted), reference_log, "the metrics log differs from the uninterrupted run");
    assert!(bundle_bytes(&interrupted) == bundle_bytes(&reference), "the trained model differs from the uninterrupted run");
}

/// With a dev set and `select_best`, killed and resumed runs keep the same
/// best model (and the same last one) as an uninterrupted run: the choice
/// is part of what a resume restores.
#[test]
fn killed_and_resumed_runs_keep_the_same_best_model() {
    let _serial = common::serial();
    let dir = common::scratch("faults-best");
    let config = setup(&dir);
    // A dev set that training works against: each training query judged
    // against its own hard negative, its positive a distractor. The first
    // evaluations are the best, before any kill, so a resume that forgot
    // them would keep a later model.
    let pairs = [
        ("how do I reset my router", "the bakery opens at seven"),
        ("capital of france", "berlin is in germany"),
        ("boil an egg", "hens lay eggs"),
        ("sort a list in python", "pythons are snakes"),
    ];
    let positives = ["hold the reset button", "paris is the capital", "eight minutes in boiling water", "call sorted on it"];
    common::pairs_beir(&dir.join("dev"), &pairs, &positives);
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["eval_data"] = serde_json::json!(dir.join("dev"));
    json["select_best"] = "mrr10".into();
    json["train"]["steps"] = 6.into();
    json["train"]["eval_every"] = 1.into();
    json["train"]["learning_rate"] = 1e-3.into();
    std::fs::write(&config, json.to_string()).unwrap();

    let reference = dir.join("reference");
    assert_eq!(run_with_kills(&config, &reference, &[]), 0);
    let best = |out: &Path| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap()["best"]["step"]
            .clone()
    };
    let kept = best(&reference).as_u64().unwrap();
    eprintln!("reference keeps step {kept}");
    assert!(kept < 3, "the uninterrupted run keeps step {kept}: the test needs a best before the kill after step 3 to mean anything");
    let interrupted = dir.join("interrupted");
    let kills = [Kill::AfterStep(1, 5), Kill::AfterStep(3, 0), Kill::DuringCheckpoint, Kill::AfterStep(5, 3)];
    let killed = run_with_kills(&config, &interrupted, &kills);
    assert!(killed >= 2, "only {killed} kills landed before the run finished");
    assert_eq!(log_lines(&interrupted), log_lines(&reference), "the metrics log differs from the uninterrupted run");
    assert_eq!(best(&interrupted), best(&reference), "another step was kept");
    assert!(bundle_files(&interrupted, "model") == bundle_files(&reference, "model"), "the kept model differs");
    assert!(bundle_files(&interrupted, "last") == bundle_files(&reference, "last"), "the last model differs");
}
