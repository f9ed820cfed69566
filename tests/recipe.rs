//! The training recipe (`gradcache train`, examples/train_reranker) end to
//! end on a small model: the user's own JSONL in, a bundle out whose scores
//! reproduce the metrics the run reported.

mod common;

use gradcache::app::data::wordnet::{Split, WordSenseData};
use gradcache::app::eval::sense_metrics;
use gradcache::app::recipe::{run, RerankerConfig, Start};
use gradcache::app::reporter::Silent;
use gradcache::cli::TrainArgs;
use gradcache::models::heads::{HeadConfig, MlpHeadConfig};
use gradcache::AppError;
use gradcache::{GradCacheError, Scorer};

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const RECORDS: [&str; 3] = [
    r#"{"query": "how do I reset my router", "positive": "hold the reset button", "negatives": ["the bakery opens at seven"]}"#,
    r#"{"query": "capital of france", "positive": "paris is the capital", "negatives": ["berlin is in germany"]}"#,
    r#"{"query": "boil an egg", "positive": "eight minutes in boiling water", "negatives": ["hens lay eggs"]}"#,
];

/// A small run in `dir`: a 1-layer width-32 BERT, three JSONL records,
/// `steps` steps with a checkpoint after each.
fn small_run(dir: &std::path::Path, steps: usize) -> RerankerConfig {
    if !dir.join("bert").is_dir() {
        common::tiny_bert_folder(&dir.join("bert"), 32, 4, 1, 0);
    }
    std::fs::write(dir.join("train.jsonl"), RECORDS.join("\n")).unwrap();
    let mut c = RerankerConfig {
        model_dir: dir.join("bert"),
        data_dir: repo().join(gradcache::app::data::wordnet::EMBEDDED_TASK_DIR),
        train_jsonl: Some(dir.join("train.jsonl")),
        output_dir: dir.join("run"),
        device: "cpu".into(),
        batch_size: 3,
        dev_queries: 12,
        baselines: None,
        wordnet_eval: Some(true),
        head: HeadConfig::Mlp(MlpHeadConfig { dim: 32, hidden: 8, ..MlpHeadConfig::default() }),
        ..RerankerConfig::default()
    };
    c.train.steps = steps;
    c.train.checkpoint_every = 1;
    c.train.keep_checkpoints = 3;
    c.train.progress = false;
    c
}

#[test]
fn a_run_on_own_data_writes_a_bundle_that_reproduces_its_metrics() {
    let _serial = common::serial();
    let dir = common::scratch("recipe");
    let c = small_run(&dir, 2);
    let report = run(&c, Start::New, &Silent).unwrap();
    assert_eq!(report.bundle, dir.join("run/model"));
    for f in ["config.json", "results.json", "metrics.jsonl", "model/gradcache.json", "model/head.safetensors"] {
        assert!(dir.join("run").join(f).is_file(), "{f}");
    }
    // config.json is the resolved config: the encoder's unset fields as the
    // model folder resolved them (MiniLM's mean Pooling), as the bundle has.
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("run/config.json")).unwrap()).unwrap();
    let bundle: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("run/model/gradcache.json")).unwrap()).unwrap();
    assert_eq!(written["encoder"]["pooling"], "mean", "{}", written["encoder"]);
    // The recipe's `auto` precision is recorded as what ran on this machine.
    let chosen = gradcache::runtime::precision::Precision::Auto.resolve(tch::Device::Cpu).chosen;
    assert_eq!(written["step"]["precision"], chosen.name());
    assert_ne!(written["step"]["precision"], "auto");
    assert_eq!(written["encoder"], bundle["encoder"]);
    let scorer = Scorer::load(&report.bundle, tch::Device::Cpu).unwrap();
    let dev = WordSenseData::read(&c.data_dir).unwrap().sense_eval(Split::Dev, 12);
    let q: Vec<&str> = dev.set.queries.iter().map(|(_, t)| t.as_str()).collect();
    let d: Vec<&str> = dev.set.corpus.iter().map(|(_, t)| t.as_str()).collect();
    let again = sense_metrics(&scorer.score(&q, &d).unwrap(), &dev).unwrap();
    for (name, value) in &again {
        assert_eq!(report.results["after"][name].as_f64().unwrap(), *value, "{name}");
    }

    // The table the command line prints at the end: each row's metrics are
    // the run's, in the columns' order.
    let mut printed = Vec::new();
    gradcache::cli::write_report(&report, &mut printed).unwrap();
    let printed = String::from_utf8(printed).unwrap();
    let row =
        |name: &str| printed.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no `{name}` row in:\n{printed}")).to_string();
    let cells = |line: String| -> Vec<f64> {
        line.split_whitespace().rev().take(6).map(|c| c.parse().unwrap()).collect::<Vec<f64>>().into_iter().rev().collect()
    };
    let columns = ["wsd_accuracy", "top1", "top5", "top20", "mrr10", "ndcg10"];
    // Printed to 3 decimals: within half a unit of the last.
    let same = |printed_row: Vec<f64>, m: &serde_json::Value| {
        printed_row.len() == columns.len()
            && columns.iter().zip(&printed_row).all(|(k, p)| (m[k].as_f64().unwrap() - p).abs() <= 5e-4 + 1e-12)
    };
    assert!(same(cells(row("this run: 2 two-cache steps, seed 0")), &report.results["after"]), "{printed}");
    assert!(same(cells(row("pretrained bert, cosine")), &report.results["pretrained_cosine"]), "{printed}");
    assert!(same(cells(row("encoder + untrained head")), &report.results["before"]), "{printed}");
    assert!(printed.contains(&format!("model bundle in {}", report.bundle.display())), "{printed}");
}

/// Dev pairs unlike the training records, and distractors.
const DEV_PAIRS: [(&str, &str); 6] = [
    ("reset the router", "hold the reset button for ten seconds"),
    ("what is the capital of france", "paris is the capital of france"),
    ("how long to boil an egg", "eight minutes in boiling water"),
    ("sort a python list", "call sorted on the list"),
    ("when does the bakery open", "the bakery opens at seven"),
    ("where is berlin", "berlin is in germany"),
];
const DISTRACTORS: [&str; 6] = [
    "hens lay eggs",
    "pythons are snakes",
    "the river bank was muddy",
    "routers forward packets",
    "france borders spain",
    "bread needs flour",
];

/// Training on one's own records with one's own dev set: evaluated at
/// every step (and before), the WordNet task left out, the best model
/// kept. The kept step is the best logged one, its bundle scores what was
/// logged, and the last model is kept beside it.
#[test]
fn eval_data_is_evaluated_while_training_and_the_best_model_is_kept() {
    let _serial = common::serial();
    let dir = common::scratch("recipe-best");
    common::pairs_beir(&dir.join("dev"), &DEV_PAIRS, &DISTRACTORS);
    let mut c = small_run(&dir, 6);
    c.wordnet_eval = None;
    c.eval_data = Some(dir.join("dev"));
    c.select_best = Some("mrr10".into());
    c.train.eval_every = 1;
    c.train.learning_rate = 1e-3;
    let report = run(&c, Start::New, &Silent).unwrap();

    let evals: Vec<(u64, serde_json::Value)> = std::fs::read_to_string(dir.join("run/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("eval").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["eval"].clone()))
        .collect();
    assert_eq!(evals.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5, 6], "an evaluation before and after every step");
    assert!(evals.iter().all(|(_, m)| m.get("wsd_accuracy").is_none() && m.get("reranked.mrr10").is_some()), "{evals:?}");
    // The first evaluation with the highest logged reranked MRR@10.
    let (want_step, want_value) = evals.iter().fold((0, f64::NEG_INFINITY), |(bs, bv), (s, m)| {
        let v = m["reranked.mrr10"].as_f64().unwrap();
        if v > bv {
            (*s, v)
        } else {
            (bs, bv)
        }
    });
    let best = &report.results["best"];
    assert_eq!((best["metric"].as_str(), best["step"].as_u64()), (Some("reranked.mrr10"), Some(want_step)), "{best}");
    assert_eq!(report.bundle, dir.join("run/model"));

    // Each kept bundle scores what was logged at its step.
    let (set, _) = gradcache::app::data::beir::read_beir(&dir.join("dev"), "dev", gradcache::app::data::Malformed::Fail).unwrap();
    let measure = |bundle: &std::path::Path| {
        let scorer = Scorer::load(bundle, tch::Device::Cpu).unwrap();
        gradcache::app::retrieval::evaluate_two_stage(&scorer, &set, 100usize.min(set.corpus.len()), &mut |_, _, _| {})
            .unwrap()
            .reranked_metrics
            .mrr10
    };
    assert_eq!(measure(&dir.join("run/model")), want_value, "the kept bundle is not the best step's model");
    let last = evals.last().unwrap().1["reranked.mrr10"].as_f64().unwrap();
    assert_eq!(measure(&dir.join("run/last")), last, "run/last is not the last model");
    if want_step != 6 {
        let differ =
            std::fs::read(dir.join("run/model/head.safetensors")).unwrap() != std::fs::read(dir.join("run/last/head.safetensors")).unwrap();
        assert!(differ, "the best and the last model are the same files");
    }

    // The printed report names the kept step, with the eval set's table.
    let mut printed = Vec::new();
    gradcache::cli::write_report(&report, &mut printed).unwrap();
    let printed = String::from_utf8(printed).unwrap();
    assert!(printed.contains(&format!("best by reranked.mrr10: step {want_step}")), "{printed}");
    assert!(printed.contains("dev dev (6 queries, 12 documents)") && !printed.contains("WSD acc"), "{printed}");

    // A metric no evaluation logs is refused before anything runs.
    let mut wrong = c.clone();
    wrong.select_best = Some("wsd_accuracy".into());
    wrong.output_dir = dir.join("wrong");
    let err = run(&wrong, Start::New, &Silent).unwrap_err();
    assert!(matches!(&err, AppError::UnknownMetric { known, .. } if known.contains(&"reranked.mrr10".to_string())), "{err}");
    assert!(!dir.join("wrong").exists());
}

#[test]
fn config_files_merge_over_the_defaults_and_name_unknown_fields() {
    let dir = common::scratch("recipe-config");
    let path = dir.join("c.json");
    std::fs::write(&path, r#"{"train": {"steps": 7}, "head": {"kind": "mlp", "hidden": 64}}"#).unwrap();
    let c = RerankerConfig::read(&path).unwrap();
    assert_eq!(c.train.steps, 7);
    assert_eq!(c.train.learning_rate, RerankerConfig::default().train.learning_rate, "unnamed fields keep their defaults");
    let args = TrainArgs { config: Some(path.clone()), steps: Some(3), ..TrainArgs::default() };
    assert_eq!(args.resolve().unwrap().train.steps, 3, "flags override the file");
    // The memory flags reach the step's config.
    let memory = "1500".parse::<gradcache::core::config::MemoryConfig>().unwrap();
    let args = TrainArgs { config: Some(path.clone()), memory: Some(memory), sort_by_length: true, ..TrainArgs::default() };
    let step = args.resolve().unwrap().step;
    assert_eq!((step.memory, step.sort_by_length), (gradcache::core::config::MemoryConfig::Budget { budget_mb: 1500.0 }, true));
    // --chunk-tokens sets both sides' token budgets; a side's own flag wins.
    let args = TrainArgs { chunk_tokens: Some(1024), passage_chunk_tokens: Some(4096), ..TrainArgs::default() };
    let step = args.resolve().unwrap().step;
    assert_eq!((step.query_chunk_tokens, step.passage_chunk_tokens), (Some(1024), Some(4096)));
    let args = TrainArgs { head_block_flops: Some(5e8), ..TrainArgs::default() };
    assert_eq!(args.resolve().unwrap().step.head_block_flops, Some(5e8));
    std::fs::write(&path, r#"{"train": {"stepz": 7}}"#).unwrap();
    assert!(matches!(RerankerConfig::read(&path), Err(AppError::Core(GradCacheError::Json { path: p, .. })) if p == path));
    let bad = RerankerConfig { batch_size: 0, ..RerankerConfig::default() };
    assert!(matches!(bad.validate(), Err(AppError::Core(GradCacheError::InvalidConfig { .. }))));
}

fn folder_snapshot(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_run_folder_changes_only_for_a_valid_resume_or_an_explicit_overwrite() {
    let _serial = common::serial();
    let dir = common::scratch("recipe-folder");
    let c = small_run(&dir, 2);
    run(&c, Start::New, &Silent).unwrap();
    let before = folder_snapshot(&c.output_dir);

    // A second new run into the same folder is refused.
    assert!(matches!(run(&c, Start::New, &Silent), Err(AppError::RunExists { .. })));
    // A resume with a setting that shapes training changed is refused,
    // naming it; so is a changed training file and a changed training block.
    let mut other = c.clone();
    other.batch_size = 2;
    other.loss.temperature = 0.5;
    match run(&other, Start::Resume, &Silent) {
        Err(AppError::ResumeMismatch { fields, .. }) => {
            assert!(fields.iter().any(|f| f.starts_with("batch_size: 3 -> 2")), "{fields:?}");
            assert!(fields.iter().any(|f| f.starts_with("loss.temperature")), "{fields:?}");
        }
        other => panic!("{other:?}"),
    }
    let mut lr = c.clone();
    lr.train.learning_rate = 1.0;
    assert!(
        matches!(run(&lr, Start::Resume, &Silent), Err(AppError::ResumeMismatch { fields, .. }) if fields[0].starts_with("train.learning_rate"))
    );
    std::fs::write(dir.join("train.jsonl"), RECORDS[..2].join("\n")).unwrap();
    assert!(
        matches!(run(&c, Start::Resume, &Silent), Err(AppError::ResumeMismatch { fields, .. }) if fields[0].starts_with("data.sha256"))
    );
    std::fs::write(dir.join("train.jsonl"), RECORDS.join("\n")).unwrap();
    // Bad data fails before anything is written.
    let mut empty = c.clone();
    std::fs::write(dir.join("empty.jsonl"), "\n").unwrap();
    empty.train_jsonl = Some(dir.join("empty.jsonl"));
    assert!(matches!(run(&empty, Start::Overwrite, &Silent), Err(AppError::NoRecords { path, .. }) if path == dir.join("empty.jsonl")));
    assert!(folder_snapshot(&c.output_dir) == before, "the refused runs changed the run folder");

    // More steps may be asked on resume; the report keeps the run's "before".
    let mut longer = c.clone();
    longer.train.steps = 3;
    let report = run(&longer, Start::Resume, &Silent).unwrap();
    assert!(report.results.get("before").is_some(), "{}", report.results);
    // An explicit overwrite starts over, keeping the old run one generation back.
    run(&c, Start::Overwrite, &Silent).unwrap();
    assert!(c.output_dir.join("checkpoints.previous").is_dir());
}

#[test]
fn a_custom_model_folder_that_is_missing_is_named_without_the_setup_hint() {
    let dir = common::scratch("recipe-model");
    let c = RerankerConfig { model_dir: dir.join("nope"), output_dir: dir.join("run"), ..RerankerConfig::default() };
    let err = run(&c, Start::New, &Silent).unwrap_err();
    assert!(matches!(&err, AppError::Core(GradCacheError::Io { path, .. }) if path == &dir.join("nope")), "{err}");
    assert!(!err.to_string().contains("setup"), "{err}");
    assert!(!c.output_dir.exists(), "nothing written");
}

/// Damage done to the newest checkpoint: each is caught, and resume falls
/// back to the older intact one (or says none is left), never a silent load.
#[test]
fn damaged_checkpoints_are_skipped_for_the_newest_intact_one() {
    let _serial = common::serial();
    let dir = common::scratch("recipe-damage");
    let c = small_run(&dir, 3);
    run(&c, Start::New, &Silent).unwrap();
    let newest = c.output_dir.join("checkpoints/step-000003");
    let pristine = folder_snapshot(&newest);
    type Damage = fn(&std::path::Path);
    let damages: [(&str, Damage); 3] = [
        ("truncate", |p| {
            let b = std::fs::read(p).unwrap();
            std::fs::write(p, &b[..b.len() / 2]).unwrap()
        }),
        ("flip", |p| {
            let mut b = std::fs::read(p).unwrap();
            let at = b.len() - 5;
            b[at] ^= 0x55;
            std::fs::write(p, b).unwrap()
        }),
        ("delete", |p| std::fs::remove_file(p).unwrap()),
    ];
    for file in ["model.safetensors", "optimizer.safetensors", "state.json"] {
        for (name, damage) in damages {
            for (p, bytes) in &pristine {
                std::fs::write(p, bytes).unwrap();
            }
            damage(&newest.join(file));
            let mut longer = c.clone();
            longer.train.steps = 4;
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&longer, Start::Resume, &Silent)));
            let result = outcome.unwrap_or_else(|_| panic!("{file} {name}: panicked"));
            result.unwrap_or_else(|e| panic!("{file} {name}: {e}"));
            // Resumed from step 2: one metrics line per step 1..4, each once.
            let log = std::fs::read_to_string(c.output_dir.join("metrics.jsonl")).unwrap();
            let steps: Vec<u64> = log
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v.get("loss").is_some())
                .map(|v| v["step"].as_u64().unwrap())
                .collect();
            assert_eq!(steps, [1, 2, 3, 4], "{file} {name}");
            // Back to the 3-step state for the next damage.
            std::fs::remove_dir_all(c.output_dir.join("checkpoints/step-000004")).unwrap();
        }
    }
}

#[test]
fn a_partial_block_keeps_the_documented_values_of_every_field_it_does_not_name() {
    // One field per block; every other field of the block must keep the
    // recipe's documented default (not the block type's own Default).
    let dir = common::scratch("recipe-blocks");
    let defaults = serde_json::to_value(RerankerConfig::default()).unwrap();
    let cases = [
        ("train", "checkpoint_every", serde_json::json!(2)),
        ("step", "head_block_passages", serde_json::json!(32)),
        ("encoder", "normalize", serde_json::json!(true)),
        ("loss", "temperature", serde_json::json!(0.5)),
        ("head", "hidden", serde_json::json!(64)),
    ];
    for (block, field, value) in cases {
        let path = dir.join(format!("{block}.json"));
        std::fs::write(&path, serde_json::json!({ block: { field: value.clone() } }).to_string()).unwrap();
        let got = serde_json::to_value(RerankerConfig::read(&path).unwrap()).unwrap();
        let mut want = defaults.clone();
        want[block][field] = value;
        assert_eq!(got, want, "block {block}");
    }
}

/// `text` with what varies between runs and machines replaced: the scratch
/// folder by `DIR`, decimals (losses, metrics, rates, seconds) by `F`,
/// durations (`1m05s`, `1h02m`) by `T`.
fn console_shape(text: &str, dir: &std::path::Path) -> String {
    let text = text.replace(&dir.display().to_string(), "DIR");
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let digits = |mut j: usize| {
        while j < chars.len() && chars[j].is_ascii_digit() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let after_word = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if !chars[i].is_ascii_digit() || after_word {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let end = digits(i);
        let unit = chars.get(end).copied();
        if unit == Some('.') && chars.get(end + 1).is_some_and(char::is_ascii_digit) {
            out.push('F');
            i = digits(end + 1);
        } else if matches!(unit, Some('m' | 'h')) && digits(end + 1) == end + 3 {
            out.push('T');
            let next = if unit == Some('m') { 's' } else { 'm' };
            i = end + 3 + usize::from(chars.get(end + 3) == Some(&next));
        } else {
            let rest: String = chars[end..chars.len().min(end + 9)].iter().collect();
            if rest.starts_with("/s") || rest.starts_with(" GFLOP/s") {
                out.push('R');
            } else if rest.starts_with(" s)") || rest.starts_with(" s,") {
                out.push('T');
            } else {
                out.extend(&chars[i..end]);
            }
            i = end;
        }
    }
    // Which evaluation is best can turn on a last-digit difference between CPUs.
    out.lines()
        .map(|l| match (l.starts_with("best by "), l.find(": step ")) {
            (true, Some(at)) => format!("{}: step S{}", &l[..at], l[at + 7..].trim_start_matches(|c: char| c.is_ascii_digit())),
            _ => l.to_string(),
        })
        .map(|l| l + "\n")
        .collect()
}

/// The main job's console lines (stdout and stderr of `gradcache train`),
/// held line for line but for timings and numbers that vary by machine,
/// across a run with every header line, evaluations during training, the
/// best model kept, a test split and a resume; and a run with nothing to
/// evaluate. `GRADCACHE_WRITE_CONSOLE=1` rewrites tests/fixtures/console/.
#[test]
fn the_console_output_of_a_run_stays_line_for_line() {
    let _serial = common::serial();
    let dir = common::scratch("recipe-console");
    common::tiny_bert_folder(&dir.join("bert"), 32, 4, 1, 0);
    std::fs::write(dir.join("train.jsonl"), RECORDS.join("\n")).unwrap();
    common::pairs_beir(&dir.join("dev"), &DEV_PAIRS, &DISTRACTORS);
    std::fs::write(dir.join("c.json"), r#"{"train": {"checkpoint_every": 2}}"#).unwrap();
    // From the repository, as the README runs it: the WordNet task is found there.
    let train = |args: &[&str]| {
        let mut all =
            vec!["train", "--model-dir", "DIR/bert", "--train-jsonl", "DIR/train.jsonl", "--batch-size", "3", "--precision", "f32"];
        all.extend(args);
        let all: Vec<String> = all.iter().map(|a| a.replace("DIR", &dir.display().to_string())).collect();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gradcache"))
            .args(&all)
            .current_dir(repo())
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        assert!(out.status.success(), "{all:?}: {}", String::from_utf8_lossy(&out.stderr));
        let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
        let command = console_shape(&all.join(" "), &dir);
        format!("$ gradcache {command}\n--- stdout\n{}--- stderr\n{}", console_shape(&stdout, &dir), console_shape(&stderr, &dir))
    };
    let watched = [
        "--config",
        "DIR/c.json",
        "--output-dir",
        "DIR/run",
        "--steps",
        "4",
        "--dev-queries",
        "12",
        "--test-queries",
        "6",
        "--eval-every",
        "2",
        "--eval-data",
        "DIR/dev",
        "--wordnet-eval",
        "--select-best",
        "mrr10",
    ];
    let mut resumed = watched.to_vec();
    resumed.push("--resume");
    let shown = [train(&watched), train(&resumed), train(&["--output-dir", "DIR/bare", "--steps", "1", "--quiet"])].join("\n");
    let fixture = repo().join("tests/fixtures/console/train.txt");
    if std::env::var_os("GRADCACHE_WRITE_CONSOLE").is_some() {
        std::fs::create_dir_all(fixture.parent().unwrap()).unwrap();
        std::fs::write(&fixture, &shown).unwrap();
    }
    let want = std::fs::read_to_string(&fixture).unwrap();
    for (i, (got, want)) in shown.lines().zip(want.lines()).enumerate() {
        assert_eq!(got, want, "line {} of the console differs; all of it:\n{shown}", i + 1);
    }
    assert_eq!(shown.lines().count(), want.lines().count(), "the console has other lines; all of it:\n{shown}");
}

/// `gradcache train` started outside the checkout still finds the embedded
/// WordNet task and baselines (in the checkout it was built from) and says
/// so in the run's resolved config; a model folder that is not there is
/// named in the error.
#[test]
fn train_runs_from_a_folder_outside_the_checkout() {
    let _serial = common::serial();
    let dir = common::scratch("recipe-elsewhere");
    common::tiny_bert_folder(&dir.join("bert"), 32, 4, 1, 0);
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gradcache"))
            .arg("train")
            .args(args)
            .current_dir(&dir)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    let out = run(&["--model-dir", "bert", "--batch-size", "3", "--precision", "f32", "--steps", "1", "--dev-queries", "6"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("runs/train_reranker/config.json")).unwrap()).unwrap();
    assert_eq!(config["data_dir"], serde_json::json!(repo().join("examples/data/wordnet")), "{config}");
    assert_eq!(config["baselines"], serde_json::json!(repo().join("docs/results/heads/baselines.json")), "{config}");
    assert_eq!(config["model_dir"], "bert", "a path the user gave stays as given");
    let out = run(&["--model-dir", "nowhere", "--output-dir", "other"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("nowhere") && stderr.contains("model folder missing"), "{stderr}");
}

#[test]
fn the_console_shape_masks_timings_and_keeps_words_and_counts() {
    let dir = std::path::Path::new("/tmp/x");
    assert_eq!(
        console_shape("step 3/10 [==  ] loss 0.6931 | 2.50 steps/s | ETA 1m05s in /tmp/x/run, 2h03m", dir),
        "step 3/10 [==  ] loss F | F steps/s | ETA T in DIR/run, T\n"
    );
    assert_eq!(
        console_shape("bf16 x2 64 queries 1e-3\n12/12 (260/s, ETA 0 s) of a 124 GFLOP/s", dir),
        "bf16 x2 64 queries 1e-3\n12/12 (R/s, ETA T s) of a R GFLOP/s\n"
    );
    assert_eq!(console_shape("best by mrr10: step 12 (0.5), kept", dir), "best by mrr10: step S (F), kept\n");
}

/// What a [`gradcache::app::reporter::Reporter`] receives, kept by kind.
#[derive(Default)]
struct Recorder {
    lines: std::cell::RefCell<Vec<(&'static str, String)>>,
}

impl gradcache::app::reporter::Reporter for Recorder {
    fn say(&self, line: &str) {
        self.lines.borrow_mut().push(("say", line.to_string()));
    }
    fn warn(&self, line: &str) {
        self.lines.borrow_mut().push(("warn", line.to_string()));
    }
    fn step(&self, p: &gradcache::app::reporter::StepProgress) {
        self.lines.borrow_mut().push(("step", format!("{}/{}", p.done, p.total)));
    }
    fn note(&self, line: &str) {
        self.lines.borrow_mut().push(("note", line.to_string()));
    }
    fn work(&self, what: &str, done: usize, total: usize) {
        self.lines.borrow_mut().push(("work", format!("{what} {done}/{total}")));
    }
}

/// Called as a library, the recipe hands everything it has to say to the
/// caller's reporter: the header, each step, the plan, each evaluation and
/// the passes over the dev set; with `progress` off, only the header.
#[test]
fn a_library_run_reports_to_its_reporter() {
    let _serial = common::serial();
    let dir = common::scratch("recipe-reporter");
    common::pairs_beir(&dir.join("dev"), &DEV_PAIRS, &DISTRACTORS);
    let mut c = small_run(&dir, 3);
    c.eval_data = Some(dir.join("dev"));
    c.train.progress = true;
    let recorder = Recorder::default();
    run(&c, Start::New, &recorder).unwrap();
    let lines = recorder.lines.into_inner();
    let of = |kind: &str| lines.iter().filter(|(k, _)| *k == kind).map(|(_, l)| l.clone()).collect::<Vec<_>>();
    assert!(of("say").iter().any(|l| l.starts_with("train_reranker: 3 training records")), "{lines:?}");
    assert!(of("say").iter().any(|l| l.starts_with("batch 3 queries x 2 passages each")), "{lines:?}");
    assert_eq!(of("step"), ["1/3", "2/3", "3/3"]);
    assert!(of("note").iter().any(|l| l.starts_with("step plan:")), "{lines:?}");
    // Before and after training; the pretrained baseline's evaluation logs nothing.
    assert_eq!(of("note").iter().filter(|l| l.starts_with("eval @ step")).count(), 2, "{lines:?}");
    assert!(of("work").iter().any(|l| l.starts_with("reranking")), "{lines:?}");

    let mut quiet = c.clone();
    quiet.train.progress = false;
    quiet.output_dir = dir.join("quiet");
    let recorder = Recorder::default();
    run(&quiet, Start::New, &recorder).unwrap();
    let kinds: std::collections::BTreeSet<&str> = recorder.lines.borrow().iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, ["say"].into_iter().collect(), "{:?}", recorder.lines.borrow());
}
