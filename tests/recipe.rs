//! The training recipe (`gradcache train`, examples/train_reranker) end to
//! end on a small model: the user's own JSONL in, a bundle out whose scores
//! reproduce the metrics the run reported.

mod common;

use gradcache::data::wordnet::{Split, WordSenseData};
use gradcache::eval::sense_metrics;
use gradcache::heads::{HeadConfig, MlpHeadConfig};
use gradcache::train::reranker::{run, RerankerConfig, TrainArgs};
use gradcache::{GradCacheError, Scorer};

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn a_run_on_own_data_writes_a_bundle_that_reproduces_its_metrics() {
    let _serial = common::serial();
    let dir = common::scratch("recipe");
    common::tiny_bert_folder(&dir.join("bert"), 32, 4, 1, 0);
    let records = [
        r#"{"query": "how do I reset my router", "positive": "hold the reset button", "negatives": ["the bakery opens at seven"]}"#,
        r#"{"query": "capital of france", "positive": "paris is the capital", "negatives": ["berlin is in germany"]}"#,
        r#"{"query": "boil an egg", "positive": "eight minutes in boiling water", "negatives": ["hens lay eggs"]}"#,
    ];
    std::fs::write(dir.join("train.jsonl"), records.join("\n")).unwrap();
    let mut c = RerankerConfig {
        model_dir: dir.join("bert"),
        data_dir: repo().join("examples/data/wordnet"),
        train_jsonl: Some(dir.join("train.jsonl")),
        output_dir: dir.join("run"),
        device: "cpu".into(),
        batch_size: 3,
        dev_queries: 12,
        baselines: None,
        head: HeadConfig::Mlp(MlpHeadConfig { dim: 32, hidden: 8, ..MlpHeadConfig::default() }),
        ..RerankerConfig::default()
    };
    c.train.steps = 2;
    c.train.progress = false;
    let report = run(&c, false).unwrap();
    assert_eq!(report.bundle, dir.join("run/model"));
    for f in ["config.json", "results.json", "metrics.jsonl", "model/gradcache.json", "model/head.safetensors"] {
        assert!(dir.join("run").join(f).is_file(), "{f}");
    }
    let scorer = Scorer::load(&report.bundle, tch::Device::Cpu).unwrap();
    let dev = WordSenseData::read(&c.data_dir).unwrap().sense_eval(Split::Dev, 12);
    let q: Vec<&str> = dev.set.queries.iter().map(|(_, t)| t.as_str()).collect();
    let d: Vec<&str> = dev.set.corpus.iter().map(|(_, t)| t.as_str()).collect();
    let again = sense_metrics(&scorer.score(&q, &d).unwrap(), &dev).unwrap();
    for (name, value) in &again {
        assert_eq!(report.results["after"][name].as_f64().unwrap(), *value, "{name}");
    }
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
    std::fs::write(&path, r#"{"train": {"stepz": 7}}"#).unwrap();
    assert!(matches!(RerankerConfig::read(&path), Err(GradCacheError::Json { path: p, .. }) if p == path));
    let bad = RerankerConfig { batch_size: 0, ..RerankerConfig::default() };
    assert!(matches!(bad.validate(), Err(GradCacheError::InvalidConfig { .. })));
}
