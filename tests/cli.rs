//! The `gradcache` command-line tool.

use std::process::Command;

fn gradcache(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gradcache")).args(args).env("RUST_BACKTRACE", "0").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn check_head_passes_a_built_in_head_and_prints_the_report() {
    let (ok, text) = gradcache(&["check-head", "--head", "interaction", "--dim", "8"]);
    assert!(ok, "{text}");
    assert!(text.contains("head check: PASSED") && text.contains("head.cross.query.weight"), "{text}");
}

#[test]
fn check_head_reads_a_json_head_config() {
    let path = std::env::temp_dir().join(format!("gradcache-head-{}.json", std::process::id()));
    std::fs::write(&path, r#"{"kind": "bilinear", "dim": 8, "rank": 3, "dropout": 0.2}"#).unwrap();
    let (ok, text) = gradcache(&["check-head", "--config", path.to_str().unwrap(), "--f32"]);
    assert!(ok, "{text}");
    assert!(text.contains("head.left") && text.contains("PASSED"), "{text}");
    std::fs::write(&path, r#"{"kind": "bilinear", "dims": 8}"#).unwrap();
    let (ok, text) = gradcache(&["check-head", "--config", path.to_str().unwrap()]);
    assert!(!ok && text.contains("unknown field"), "{text}");
}

#[test]
fn unknown_heads_are_named_errors() {
    let (ok, text) = gradcache(&["check-head", "--head", "transformer"]);
    assert!(!ok);
    assert!(text.contains("must be one of dot, cosine"), "{text}");
}

#[test]
fn prepare_wordnet_writes_the_task_and_its_license() {
    let dir = std::env::temp_dir().join(format!("gradcache-cli-wn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("data.noun"), "  1 WordNet license line.\n00000001 06 n 01 bank 0 000 | sloping land; \"the bank of the river\"\n00000002 06 n 01 bank 0 000 | a financial institution; \"cash at the bank\"\n").unwrap();
    for f in ["data.verb", "data.adj", "data.adv"] {
        std::fs::write(dir.join(f), "").unwrap();
    }
    let out = dir.join("out");
    let (ok, text) = gradcache(&["prepare-wordnet", "--wordnet", dir.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert_eq!(std::fs::read_to_string(out.join("LICENSE-WordNet.txt")).unwrap(), "WordNet license line.\n");
    assert_eq!(std::fs::read_to_string(out.join("senses.tsv")).unwrap(), "bank\tn00000001 n00000002\n");
    let (ok, text) = gradcache(&["prepare-wordnet", "--wordnet", "/nonexistent", "--out", out.to_str().unwrap()]);
    assert!(!ok && text.contains("apt-get install wordnet-base"), "{text}");
}

