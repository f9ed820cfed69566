//! Data readers: WordNet, the prepared task, JSONL records and BEIR folders.

use std::path::{Path, PathBuf};

use gradcache::app::data::beir::read_beir;
use gradcache::app::data::jsonl::read_training_records;
use gradcache::app::data::wordnet::{parse_data_file, Split, WordSenseData};
use gradcache::app::data::{check_negatives, grouped_batch, Malformed, TrainingRecord};
use gradcache::app::error::DataLineError;
use gradcache::AppError;
use gradcache::GradCacheError;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gradcache-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let p = dir.join(file);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

/// A miniature WordNet: "bank" has two noun senses and one verb sense.
fn mini_wordnet() -> PathBuf {
    let d = temp_dir("wn");
    write(&d, "data.noun", "  1 This software and database is provided under a license.\n\
        00000001 06 n 02 bank 0 Bank 1 000 | sloping land beside a body of water; \"they pulled the canoe up on the bank\"; \"he sat on the bank of the river\"\n\
        00000002 14 n 02 depository_financial_institution 0 bank 0 000 | a financial institution; \"he cashed a check at the bank\"\n\
        00000003 14 n 01 river 0 000 | a large natural stream of water; \"the river was full\"\n");
    write(&d, "data.verb", "00000004 40 v 01 bank 0 000 01 + 02 00 | tip laterally; \"the pilot had to bank the aircraft\"\n");
    write(&d, "data.adj", "00000005 00 s 02 handy 0 ready_to_hand(p) 0 000 | easy to reach; \"a handy spot\"\n");
    write(&d, "data.adv", "");
    d
}

#[test]
fn parses_wordnet_lines() {
    let d = mini_wordnet();
    let nouns = parse_data_file(&d.join("data.noun"), 'n').unwrap();
    assert_eq!(nouns.len(), 3, "the license header is skipped");
    assert_eq!(nouns[0].id, "n00000001");
    assert_eq!(nouns[0].lemmas, ["bank", "bank"]);
    assert_eq!(nouns[0].definition, "sloping land beside a body of water");
    assert_eq!(nouns[0].examples, ["they pulled the canoe up on the bank", "he sat on the bank of the river"]);
    assert_eq!(nouns[1].lemmas, ["depository financial institution", "bank"]);
    let adj = parse_data_file(&d.join("data.adj"), 'a').unwrap();
    assert_eq!(adj[0].lemmas, ["handy", "ready to hand"], "adjective markers are stripped");
}

#[test]
fn builds_the_task_and_round_trips_it() {
    let d = mini_wordnet();
    let data = WordSenseData::from_wordnet(&d).unwrap();
    // "river" and "handy" have one sense each: nothing to disambiguate.
    let lemmas: Vec<&str> = data.all_examples().iter().map(|e| e.lemma.as_str()).collect();
    assert_eq!(lemmas, ["bank", "bank", "bank", "bank"]);
    assert_eq!(data.senses_of("bank"), ["n00000001", "n00000002", "v00000004"]);
    assert_eq!(data.sense_text("bank", "v00000004"), "bank: tip laterally");
    let out = d.join("prepared");
    data.write(&out).unwrap();
    assert_eq!(WordSenseData::read(&out).unwrap(), data);
}

#[test]
fn malformed_wordnet_line_names_file_and_line() {
    let d = temp_dir("wnbad");
    let p = write(&d, "data.noun", "  1 header\n00000001 06 n 0z bank 0 000 | a gloss\n");
    match parse_data_file(&p, 'n') {
        Err(AppError::DataLine { path, line: 2, reason: DataLineError::Number(_) }) => assert_eq!(path, p),
        other => panic!("expected a data line error, got {other:?}"),
    }
    let p = write(&d, "data.verb", "00000001 06 v 01 bank 0 000 no separator\n");
    assert!(matches!(parse_data_file(&p, 'v'), Err(AppError::DataLine { line: 1, .. })));
}

#[test]
fn prepared_files_reject_unknown_ids() {
    let d = temp_dir("prepbad");
    write(&d, "synsets.tsv", "n1\tsloping land\n");
    write(&d, "senses.tsv", "bank\tn1 n2\n");
    write(&d, "examples.tsv", "train\tn1\tbank\tthe bank\n");
    let err = WordSenseData::read(&d).unwrap_err();
    assert!(matches!(&err, AppError::DataLine { line: 1, reason: DataLineError::UnknownId(id), .. } if id == "n2"), "{err}");
    write(&d, "senses.tsv", "bank\tn1\n");
    write(&d, "examples.tsv", "train\tn1\tbank\tthe bank\nvalid\tn1\tbank\tx\n");
    assert!(matches!(WordSenseData::read(&d), Err(AppError::DataLine { line: 2, .. })));
}

fn embedded() -> WordSenseData {
    WordSenseData::read(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(gradcache::app::data::wordnet::EMBEDDED_TASK_DIR)).unwrap()
}

#[test]
fn embedded_task_keeps_held_out_senses_out_of_training() {
    let data = embedded();
    let counts: Vec<usize> = [Split::Train, Split::Dev, Split::Test].iter().map(|s| data.examples(*s).count()).collect();
    assert!(counts[0] > 20_000 && counts[1] > 2_000 && counts[2] > 2_000, "{counts:?}");
    // Compare by synset, not text: WordNet has distinct synsets with the
    // same gloss (e.g. two senses of "mutilate").
    let records = data.training_records();
    assert_eq!(records.len(), counts[0]);
    for (r, e) in records.iter().zip(data.examples(Split::Train)) {
        let allowed: Vec<String> =
            data.senses_of(&e.lemma).iter().filter(|s| Split::of_synset(s) == Split::Train).map(|s| data.sense_text(&e.lemma, s)).collect();
        assert_eq!(r.query, e.text);
        assert_eq!(r.positives, [data.sense_text(&e.lemma, &e.synset)]);
        for passage in &r.negatives {
            assert!(allowed.contains(passage), "held-out sense in training: {passage}");
        }
    }
    assert!(records.iter().filter(|r| !r.negatives.is_empty()).count() > records.len() / 2, "most records have hard negatives");
}

#[test]
fn sense_eval_holds_gold_and_distractors() {
    let data = embedded();
    let eval = data.sense_eval(Split::Dev, 50);
    assert_eq!(eval.set.queries.len(), 50);
    for (q, (cands, gold)) in eval.candidates.iter().zip(&eval.gold).enumerate() {
        assert!(cands.len() >= 2 && cands.contains(gold));
        let (qid, _) = &eval.set.queries[q];
        let (did, _) = &eval.set.corpus[*gold];
        assert_eq!(eval.set.qrels[qid][did], 1);
    }
}

#[test]
fn jsonl_records_and_their_errors() {
    let d = temp_dir("jsonl");
    let p = write(
        &d,
        "train.jsonl",
        r#"{"query": "q1", "positive": "p1", "negatives": ["n1", "n2"]}

{"query": "q2", "positives": ["p2", "p3"]}
"#,
    );
    let read = read_training_records(&p, Malformed::Fail).unwrap();
    assert_eq!(read.items.len(), 2);
    assert_eq!(read.items[1].positives, ["p2", "p3"]);
    assert_eq!(read.items[0].negatives, ["n1", "n2"]);

    let bad = write(&d, "bad.jsonl", "{\"query\": \"q1\", \"positive\": \"p1\"}\n{\"query\": \"q2\"}\nnot json\n{\"query\": \"q3\", \"positive\": \"p\", \"extra\": 1}\n");
    match read_training_records(&bad, Malformed::Fail) {
        Err(AppError::DataLine { path, line: 2, reason: DataLineError::EmptyField("positive") }) => assert_eq!(path, bad),
        other => panic!("{other:?}"),
    }
    let err = read_training_records(&bad, Malformed::Fail).unwrap_err();
    assert!(err.to_string().starts_with(&format!("{}:2:", bad.display())), "{err}");
    let read = read_training_records(&bad, Malformed::Skip).unwrap();
    assert_eq!((read.items.len(), read.skipped), (1, 3), "unknown fields are malformed too");
    assert!(matches!(read_training_records(&d.join("none.jsonl"), Malformed::Fail), Err(AppError::Core(GradCacheError::Io { .. }))));
}

#[test]
fn beir_folders_and_their_errors() {
    let d = temp_dir("beir");
    write(
        &d,
        "corpus.jsonl",
        "{\"_id\": \"d1\", \"title\": \"Bank\", \"text\": \"land by a river\"}\n{\"_id\": \"d2\", \"text\": \"money\"}\n",
    );
    write(&d, "queries.jsonl", "{\"_id\": \"q1\", \"text\": \"river side\"}\n{\"_id\": \"q2\", \"text\": \"unjudged\"}\n");
    write(&d, "qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n");
    let (set, skipped) = read_beir(&d, "test", Malformed::Fail).unwrap();
    assert_eq!(skipped, 0);
    assert_eq!(set.corpus[0].1, "Bank: land by a river");
    assert_eq!(set.queries.len(), 1, "queries without a relevant document are dropped");
    assert_eq!(set.qrels["q1"]["d2"], 0);

    write(&d, "qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td9\t1\n");
    let err = read_beir(&d, "test", Malformed::Fail).unwrap_err();
    assert!(matches!(&err, AppError::DataLine { line: 2, reason: DataLineError::UnknownId(id), .. } if id == "d9"), "{err}");
    write(&d, "qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\tx\n");
    assert!(matches!(read_beir(&d, "test", Malformed::Fail), Err(AppError::DataLine { line: 2, reason: DataLineError::Number(_), .. })));
    write(&d, "qrels/test.tsv", "query-id\tcorpus-id\n");
    assert!(matches!(
        read_beir(&d, "test", Malformed::Fail),
        Err(AppError::DataLine { line: 1, reason: DataLineError::Columns { expected: 3, found: 2 }, .. })
    ));
    let (_, skipped) = {
        write(&d, "qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\n");
        read_beir(&d, "test", Malformed::Skip).unwrap()
    };
    assert_eq!(skipped, 1);
}

fn record(q: &str, positives: &[&str], negatives: &[&str]) -> TrainingRecord {
    TrainingRecord {
        query: q.into(),
        positives: positives.iter().map(|s| s.to_string()).collect(),
        negatives: negatives.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn grouped_batch_lays_out_positive_then_negatives_and_finds_shared_positives() {
    let records = vec![
        record("q0", &["p0a", "p0b"], &["n0a", "n0b", "n0c"]),
        record("q1", &["shared"], &[]),
        record("q2", &["shared"], &["n2a", "n2b"]),
    ];
    // Rotation 1: second positive of q0, negatives from index 1 on.
    let b = grouped_batch(&records, &[0, 1, 2], 3, 1).unwrap();
    assert_eq!(b.queries, ["q0", "q1", "q2"]);
    assert_eq!(
        b.passages,
        // q1 has no negatives: it borrows the positives of q2 and (wrapping) q0.
        ["p0b", "n0b", "n0c", "shared", "shared", "p0a", "shared", "n2b", "n2a"]
    );
    // q1 and q2 share a positive text: both count every copy of it.
    assert_eq!(b.positives, vec![vec![0], vec![3, 4, 6], vec![3, 4, 6]]);
}

#[test]
fn grouped_batch_rejects_bad_requests_with_typed_errors() {
    let records = vec![record("q0", &["p"], &[]), record("q1", &[], &[])];
    for (picks, group) in [(vec![0], 0), (vec![], 2), (vec![5], 2), (vec![1], 2)] {
        match grouped_batch(&records, &picks, group, 0) {
            Err(AppError::Core(GradCacheError::InvalidConfig { .. })) => {}
            other => panic!("picks {picks:?}, group {group}: expected InvalidConfig, got {other:?}"),
        }
    }
}

#[test]
fn a_record_short_of_negatives_is_an_error_not_a_silent_reuse() {
    // Group of 3 needs 2 negatives; q1 has 1. It used to be repeated.
    let records = vec![record("q0", &["p0"], &["a", "b"]), record("q1", &["p1"], &["only"])];
    match grouped_batch(&records, &[0, 1], 3, 0) {
        Err(AppError::TooFewNegatives { record: 1, has: 1, group_size: 3 }) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(check_negatives(&records, 3), Err(AppError::TooFewNegatives { record: 1, .. })));
    assert!(check_negatives(&records, 2).is_ok());
    // A record without negatives takes other queries' positives: allowed.
    assert!(check_negatives(&[record("q", &["p"], &[])], 5).is_ok());
}

#[test]
fn a_line_that_is_not_utf8_is_named_and_skippable() {
    let d = temp_dir("utf8");
    let p = d.join("train.jsonl");
    let mut bytes = b"{\"query\": \"q1\", \"positive\": \"p1\"}\n{\"query\": \"q\xff2\", \"positive\": \"p2\"}\n".to_vec();
    bytes.extend_from_slice(b"{\"query\": \"q3\", \"positive\": \"p3\"}\r\n");
    std::fs::write(&p, bytes).unwrap();
    match read_training_records(&p, Malformed::Fail) {
        Err(AppError::DataLine { line: 2, reason: DataLineError::NotUtf8 { byte: 13 }, .. }) => {}
        other => panic!("{other:?}"),
    }
    let read = read_training_records(&p, Malformed::Skip).unwrap();
    assert_eq!((read.items.len(), read.skipped), (2, 1));
    assert_eq!(read.items[1].positives, ["p3"], "a CRLF line ending is not part of the text");
}

/// Parquet tables as pyarrow writes them (what Hugging Face `datasets`
/// exports): both sentence-transformers layouts read as the same records;
/// a table without a positive column names the columns it has; a row with
/// an empty query names its row.
#[test]
fn parquet_tables_in_sentence_transformers_layouts_read_as_records() {
    use gradcache::app::data::parquet::read_training_file;
    use gradcache::app::data::{Malformed, TrainingRecord};
    let dir = std::env::temp_dir().join(format!("gradcache-parquet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
d = sys.argv[1]
pq.write_table(pa.table({"anchor": ["reset the router", "capital of france"], "positive": ["hold the button", "paris"],
                         "negative_1": ["bake bread", "berlin"], "negative_2": ["feed the cat", "rome"], "score": [1.0, 0.5]}), d + "/triplets.parquet")
pq.write_table(pa.table({"query": ["reset the router", "capital of france"], "positive": ["hold the button", "paris"],
                         "negatives": [["bake bread", "feed the cat"], ["berlin", "rome"]]}), d + "/lists.parquet", compression="zstd")
pq.write_table(pa.table({"anchor": ["a"], "answer": ["b"]}), d + "/no_positive.parquet")
pq.write_table(pa.table({"query": ["fine", "  "], "positive": ["yes", "no"]}), d + "/empty_query.parquet")
"#;
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".python-models");
    let out = std::process::Command::new(&python)
        .args(["-c", script, dir.to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/gradcache.sh setup-models", python.display()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = vec![
        TrainingRecord {
            query: "reset the router".into(),
            positives: vec!["hold the button".into()],
            negatives: vec!["bake bread".into(), "feed the cat".into()],
        },
        TrainingRecord {
            query: "capital of france".into(),
            positives: vec!["paris".into()],
            negatives: vec!["berlin".into(), "rome".into()],
        },
    ];
    for file in ["triplets.parquet", "lists.parquet"] {
        assert_eq!(read_training_file(&dir.join(file), Malformed::Fail).unwrap().items, want, "{file}");
    }
    let err = read_training_file(&dir.join("no_positive.parquet"), Malformed::Fail).unwrap_err();
    assert!(matches!(&err, gradcache::AppError::MissingColumn { found, .. } if found == &["anchor", "answer"]), "{err}");
    assert!(err.to_string().contains("positive") && err.to_string().contains("answer"), "{err}");
    let err = read_training_file(&dir.join("empty_query.parquet"), Malformed::Fail).unwrap_err();
    assert!(matches!(&err, gradcache::AppError::DataLine { line: 2, .. }), "{err}");
    let read = read_training_file(&dir.join("empty_query.parquet"), Malformed::Skip).unwrap();
    assert_eq!((read.items.len(), read.skipped), (1, 1));
    // Not Parquet at all.
    std::fs::write(dir.join("text.parquet"), "query,positive\n").unwrap();
    assert!(matches!(read_training_file(&dir.join("text.parquet"), Malformed::Fail), Err(gradcache::AppError::Parquet { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// TREC run files separate fields by whitespace: the WordNet evaluation's
/// ids have none (multi-word lemmas as `power_play#…`), and an id with a
/// space is refused by name before a run file is written, not written as a
/// line with seven fields.
#[test]
fn trec_runs_refuse_ids_with_whitespace() {
    use gradcache::app::retrieval::{check_trec_ids, write_trec_run};
    for split in [Split::Dev, Split::Test] {
        let eval = embedded().sense_eval(split, 300);
        assert!(eval.set.corpus.iter().any(|(id, _)| id.contains('_')), "a multi-word lemma among the senses");
        check_trec_ids(&eval.set).unwrap();
    }
    let mut set = embedded().sense_eval(Split::Dev, 2).set;
    set.corpus[0].0 = "power play#n1".into();
    let rankings: Vec<Vec<(usize, f64)>> = set.queries.iter().map(|_| vec![(0, 1.0)]).collect();
    let dir = temp_dir("trec");
    let err = write_trec_run(&dir.join("run.trec"), &set, &rankings, "t").unwrap_err();
    assert!(matches!(&err, AppError::TrecId { what: "document", id } if id == "power play#n1"), "{err}");
    assert!(!dir.join("run.trec").exists());
}

/// The benchmarks' shared batch: training records with a hard negative,
/// in the training split's order, each a real (query, positive, negative)
/// of one record; fewer when asked for more than there are.
#[test]
fn hard_negative_triples_are_records_with_a_negative_in_order() {
    let data = embedded();
    let records = data.training_records();
    let triples = data.hard_negative_triples(64);
    assert_eq!(triples.len(), 64);
    let mut from = 0;
    for (q, p, n) in &triples {
        let at = records[from..].iter().position(|r| &r.query == q && r.positives[0] == *p).map(|i| i + from);
        let at = at.unwrap_or_else(|| panic!("{q:?} is not a later training record"));
        assert!(records[at].negatives.first() == Some(n) && n != p, "{q:?}");
        // Records without a negative between two triples are the ones skipped.
        assert!(records[from..at].iter().all(|r| r.negatives.is_empty()), "a record with a negative was skipped before {q:?}");
        from = at + 1;
    }
    let all = records.iter().filter(|r| !r.negatives.is_empty()).count();
    assert_eq!(data.hard_negative_triples(all + 10).len(), all);
}
