//! `gradcache mine` on a corpus where the answer is known
//! (tests/fixtures/mine): the embedded MiniLM's first stage, a planted
//! near-copy of a positive that the false-negative guard must drop, and
//! records that `gradcache train` reads.

use std::path::{Path, PathBuf};
use std::process::Command;

use gradcache::app::data::jsonl::read_training_records;
use gradcache::app::data::Malformed;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const NEAR_COPY: &str = "hold the router's reset button for 10 seconds";

fn mine(out: &Path, extra: &[&str]) -> Vec<gradcache::app::data::TrainingRecord> {
    let fixtures = repo().join("tests/fixtures/mine");
    let output = Command::new(env!("CARGO_BIN_EXE_gradcache"))
        .args(["mine", "--model", gradcache::models::pretrained::EMBEDDED_MODEL_DIR, "--negatives", "2", "--quiet", "--device", "cpu"])
        .arg("--pairs")
        .arg(fixtures.join("pairs.jsonl"))
        .arg("--corpus")
        .arg(fixtures.join("corpus.jsonl"))
        .arg("--output")
        .arg(out)
        .args(extra)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    read_training_records(out, Malformed::Fail).unwrap().items
}

#[test]
fn mined_negatives_leave_out_positives_and_near_copies_of_them() {
    let dir = std::env::temp_dir().join(format!("gradcache-mine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let records = mine(&dir.join("default.jsonl"), &[]);
    assert_eq!(records.len(), 3);
    let corpus = std::fs::read_to_string(repo().join("tests/fixtures/mine/corpus.jsonl")).unwrap();
    for r in &records {
        assert_eq!(r.negatives.len(), 2, "{r:?}");
        for n in &r.negatives {
            assert!(!r.positives.contains(n), "a positive mined as a negative: {r:?}");
            assert!(corpus.contains(&format!("\"{n}\"")), "not a corpus text: {n}");
        }
    }
    // The near-copy of the first positive outranks every real negative of
    // its query, and the 5 % relative margin drops it…
    assert!(!records[0].negatives.iter().any(|n| n == NEAR_COPY), "{:?}", records[0]);
    // …which is the guard's doing: without it the near-copy is the first
    // negative.
    let unguarded = mine(&dir.join("unguarded.jsonl"), &["--relative-margin", "0"]);
    assert_eq!(unguarded[0].negatives[0], NEAR_COPY, "{:?}", unguarded[0]);
    // The window: from rank 1 on, the first candidate is skipped.
    let shifted = mine(&dir.join("shifted.jsonl"), &["--relative-margin", "0", "--range-min", "1"]);
    assert_eq!(shifted[0].negatives[0], unguarded[0].negatives[1], "{:?} vs {:?}", shifted[0], unguarded[0]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_mining_settings_are_refused_before_any_work() {
    let out = std::env::temp_dir().join(format!("gradcache-mine-bad-{}.jsonl", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_gradcache"))
        .args(["mine", "--model", "no-such-model", "--pairs", "p", "--corpus", "c", "--range-min", "5", "--range-max", "5", "--output"])
        .arg(&out)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("range_max"), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(!out.exists());
}
