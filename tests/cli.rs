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
fn serve_refuses_a_folder_that_is_not_a_bundle_and_bad_limits() {
    let (ok, text) = gradcache(&["serve", "--model", "/nonexistent", "--port", "0"]);
    assert!(!ok && text.contains("not a gradcache model bundle") && !text.contains("listening"), "{text}");
    let (ok, text) = gradcache(&["serve", "--model", "/nonexistent", "--max-batch-tokens", "0"]);
    assert!(!ok && text.contains("max_batch_tokens"), "{text}");
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

mod common;

use gradcache::app::data::beir::{read_beir, write_beir};
use gradcache::app::data::wordnet::{Split, WordSenseData};
use gradcache::app::data::Malformed;
use gradcache::app::metrics::retrieval_metrics;
use gradcache::app::scorer::ModelConfig;
use gradcache::models::heads::{HeadConfig, MlpHeadConfig, ResidualConfig};
use gradcache::Layout;
use gradcache::Scorer;

/// A small "trained" bundle: a tiny BERT with a residual MLP head whose
/// weights (gate included) were moved off their initialisation.
fn bundle(dir: &std::path::Path) -> Scorer {
    bundle_with(
        dir,
        HeadConfig::Mlp(MlpHeadConfig {
            dim: 32,
            hidden: 16,
            dropout: 0.1,
            residual: Some(ResidualConfig { base_scale: None, gate: 0.0 }),
        }),
    )
}

fn bundle_with(dir: &std::path::Path, head: HeadConfig) -> Scorer {
    let model = common::tiny_bert_folder(&dir.join("bert"), 32, 4, 2, 1);
    let layout = Layout { query_chunk_size: 8, passage_chunk_size: 8, head_block_queries: 4, head_block_passages: 16 };
    tch::manual_seed(2);
    let scorer = Scorer::from_pretrained(ModelConfig::new(Default::default(), 32, true, head, layout), &model, tch::Device::Cpu).unwrap();
    tch::no_grad(|| {
        for (_, mut v) in scorer.var_store().variables() {
            let noise = v.randn_like() * 0.05;
            let _ = v.f_add_(&noise).unwrap();
        }
    });
    scorer.save(&dir.join("model")).unwrap();
    // In process at the commands' default precision (`auto`: bf16 on a CPU
    // with bfloat16 units), which the comparisons below hold them to.
    scorer.with_precision(gradcache::runtime::precision::Precision::Auto).unwrap()
}

#[test]
fn eval_on_the_wordnet_beir_export_reproduces_the_full_grid_metrics() {
    let _serial = common::serial();
    let dir = common::scratch("cli-eval");
    let scorer = bundle(&dir);
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let beir = dir.join("beir");
    let (ok, text) = gradcache(&[
        "prepare-wordnet",
        "--out",
        repo.join(gradcache::app::data::wordnet::EMBEDDED_TASK_DIR).to_str().unwrap(),
        "--beir",
        beir.to_str().unwrap(),
        "--queries",
        "24",
    ]);
    assert!(ok, "{text}");
    // The export is the set the training run evaluates.
    let task = WordSenseData::read(&repo.join(gradcache::app::data::wordnet::EMBEDDED_TASK_DIR)).unwrap();
    let dev = task.sense_eval(Split::Dev, 24);
    let (read, skipped) = read_beir(&beir.join("dev"), "dev", Malformed::Fail).unwrap();
    assert_eq!((read, skipped), (dev.set.clone(), 0));

    let out = dir.join("eval-out");
    let corpus = dev.set.corpus.len().to_string();
    let (ok, text) = gradcache(&[
        "eval",
        "--model",
        dir.join("model").to_str().unwrap(),
        "--data",
        beir.join("dev").to_str().unwrap(),
        "--split",
        "dev",
        "--retrieve-k",
        &corpus,
        "--output",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("first stage") && text.contains("reranked by the head"), "{text}");
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    // What the training run prints: the head over the whole grid. Two
    // processes may sum in another order (libtorch's threads), so the
    // scores are compared with a tolerance and the ranking up to near-ties:
    // a tiny random model has pairs of documents within 1e-6 of each other,
    // which either process may order either way.
    let queries: Vec<&str> = dev.set.queries.iter().map(|(_, t)| t.as_str()).collect();
    let docs: Vec<&str> = dev.set.corpus.iter().map(|(_, t)| t.as_str()).collect();
    let grid = scorer.score(&queries, &docs).unwrap();
    let grid: Vec<Vec<f64>> = Vec::<Vec<f64>>::try_from(grid.to_kind(tch::Kind::Double)).unwrap();
    let run = std::fs::read_to_string(out.join("run.trec")).unwrap();
    let query_row: std::collections::HashMap<&str, usize> =
        dev.set.queries.iter().enumerate().map(|(i, (id, _))| (id.as_str(), i)).collect();
    let doc_col: std::collections::HashMap<&str, usize> = dev.set.corpus.iter().enumerate().map(|(i, (id, _))| (id.as_str(), i)).collect();
    // The CLI's ranking, as scores that order documents as it did.
    let mut by_rank = vec![vec![0.0f64; docs.len()]; queries.len()];
    let mut ranked: Vec<Vec<(usize, f64)>> = vec![Vec::new(); queries.len()];
    for line in run.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (q, d, rank, score) = (query_row[f[0]], doc_col[f[2]], f[3].parse::<usize>().unwrap(), f[4].parse::<f64>().unwrap());
        const TOL: f64 = 1e-5;
        assert!(
            (score - grid[q][d]).abs() <= TOL * grid[q][d].abs().max(1.0),
            "{}/{}: the CLI scored {score}, in process {}",
            f[0],
            f[2],
            grid[q][d]
        );
        by_rank[q][d] = -(rank as f64);
        ranked[q].push((rank, grid[q][d]));
    }
    for (q, r) in ranked.iter_mut().enumerate() {
        r.sort_by_key(|&(rank, _)| rank);
        for pair in r.windows(2) {
            assert!(
                pair[0].1 >= pair[1].1 - 1e-5,
                "query {q}: the CLI ranks {:?} above {:?} against the in-process scores",
                pair[0],
                pair[1]
            );
        }
    }
    let relevance = dev.set.relevance().unwrap();
    let cli_ranking = retrieval_metrics(&tch::Tensor::from_slice2(&by_rank), &relevance).unwrap();
    let in_process = retrieval_metrics(&tch::Tensor::from_slice2(&grid), &relevance).unwrap();
    for (name, got_ranking, grid_metric) in [
        ("top1", cli_ranking.top1, in_process.top1),
        ("top5", cli_ranking.top5, in_process.top5),
        ("mrr10", cli_ranking.mrr10, in_process.mrr10),
        ("ndcg10", cli_ranking.ndcg10, in_process.ndcg10),
    ] {
        let got = metrics["reranked"][name].as_f64().unwrap();
        // The metrics the CLI reports are those of its ranking, which the
        // checks above show is the in-process grid's up to near-ties.
        approx::assert_abs_diff_eq!(got, got_ranking, epsilon = 1e-9);
        eprintln!("{name}: CLI {got}, in-process grid {grid_metric}");
    }
    let run = std::fs::read_to_string(out.join("run.trec")).unwrap();
    assert_eq!(run.lines().count(), dev.set.queries.len() * dev.set.corpus.len());
    assert!(run.lines().next().unwrap().starts_with("q0 Q0 "), "{run}");
}

#[test]
fn eval_names_a_qrel_outside_the_corpus() {
    let _serial = common::serial();
    let dir = common::scratch("cli-eval-bad");
    bundle(&dir);
    let set = gradcache::app::data::RetrievalSet {
        queries: vec![("q1".into(), "a query".into())],
        corpus: vec![("d1".into(), "a document".into())],
        qrels: [("q1".to_string(), [("d1".to_string(), 1)].into())].into(),
    };
    let data = dir.join("beir");
    write_beir(&set, &data, "test").unwrap();
    std::fs::write(data.join("qrels/test.tsv"), "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td404\t1\n").unwrap();
    let (ok, text) = gradcache(&["eval", "--model", dir.join("model").to_str().unwrap(), "--data", data.to_str().unwrap(), "--quiet"]);
    assert!(!ok);
    assert!(text.contains("test.tsv:3") && text.contains("d404"), "{text}");
}

#[test]
fn rerank_sorts_each_line_and_keeps_its_fields() {
    let _serial = common::serial();
    let dir = common::scratch("cli-rerank");
    let scorer = bundle(&dir);
    let input = dir.join("requests.jsonl");
    let cands = ["a dog barks at night", "the stock market fell", "puppies play in the yard"];
    std::fs::write(
        &input,
        format!(
            "{}\n\n{}\n",
            serde_json::json!({"query": "pets at home", "candidates": [cands[0], {"id": 7, "text": cands[1]}, cands[2]], "qid": "x"}),
            serde_json::json!({"query": "no candidates", "candidates": []})
        ),
    )
    .unwrap();
    let output = dir.join("ranked.jsonl");
    let (ok, text) = gradcache(&[
        "rerank",
        "--model",
        dir.join("model").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["qid"], "x");
    let want = scorer.rerank("pets at home", &cands).unwrap();
    let got = lines[0]["candidates"].as_array().unwrap();
    assert_eq!(got.len(), 3);
    for ((i, s), g) in want.iter().zip(got) {
        assert_eq!(g["text"], cands[*i]);
        approx::assert_abs_diff_eq!(g["score"].as_f64().unwrap(), *s, epsilon = 1e-6);
    }
    let with_id = got.iter().find(|g| g["text"] == cands[1]).unwrap();
    assert_eq!(with_id["id"], 7);
    assert_eq!(lines[1]["candidates"], serde_json::json!([]));

    // A malformed line names the file and the line; no output is written.
    std::fs::write(&input, "{\"query\": \"q\", \"candidates\": [\"a\"]}\n{\"query\": \"q\", \"candidates\": \"a\"}\n").unwrap();
    let fresh = dir.join("not-written.jsonl");
    let (ok, text) = gradcache(&[
        "rerank",
        "--model",
        dir.join("model").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        fresh.to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("requests.jsonl:2"), "{text}");
    assert!(!fresh.exists());
}

#[test]
fn encode_writes_the_encoder_vectors_and_the_ids() {
    let _serial = common::serial();
    let dir = common::scratch("cli-encode");
    let scorer = bundle(&dir);
    let input = dir.join("texts.jsonl");
    std::fs::write(
        &input,
        "{\"_id\": \"a\", \"text\": \"first text\"}\n{\"id\": 2, \"title\": \"T\", \"text\": \"second\"}\n\"third, bare\"\n",
    )
    .unwrap();
    let out = dir.join("emb.safetensors");
    let (ok, text) = gradcache(&[
        "encode",
        "--model",
        dir.join("model").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(ok, "{text}");
    let tensors = tch::Tensor::read_safetensors(&out).unwrap();
    let (name, emb) = &tensors[0];
    assert_eq!(name, "embeddings");
    let want = scorer.encode_passages(&["first text", "T: second", "third, bare"]).unwrap();
    assert!(emb.allclose(want.tensor(), 1e-6, 1e-6, false), "{emb} vs {}", want.tensor());
    assert_eq!(std::fs::read_to_string(dir.join("emb.safetensors.ids.txt")).unwrap(), "a\n2\n\n");
}

/// A Mixture of Logits bundle: `encode` also writes each text's component
/// embeddings, `eval --first-stage head-union` ranks the corpus with the
/// head, and a component search with another head is refused by name.
#[test]
fn a_mol_bundle_encodes_its_components_and_retrieves_with_the_head() {
    let _serial = common::serial();
    let dir = common::scratch("cli-mol");
    let head = HeadConfig::Mol(gradcache::models::heads::MolHeadConfig {
        dim: 32,
        query_components: 3,
        passage_components: 2,
        component_dim: 8,
        ..Default::default()
    });
    let scorer = bundle_with(&dir, head);
    let input = dir.join("texts.jsonl");
    std::fs::write(&input, "\"a bank of a river\"\n\"a bank that lends\"\n").unwrap();
    let out = dir.join("emb.safetensors");
    let (ok, text) = gradcache(&[
        "encode",
        "--model",
        dir.join("model").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("components [2, 2, 8]"), "{text}");
    let tensors: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(&out).unwrap().into_iter().collect();
    let rep = scorer.encode_passages(&["a bank of a river", "a bank that lends"]).unwrap();
    let want = tch::no_grad(|| scorer.precision().run(|| scorer.head().components(&rep, gradcache::core::layout::Side::Passages).unwrap()))
        .unwrap();
    assert!(tensors["components"].to_kind(tch::Kind::Float).allclose(&want.to_kind(tch::Kind::Float), 1e-5, 1e-5, false));

    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let beir = dir.join("beir");
    let (ok, text) = gradcache(&[
        "prepare-wordnet",
        "--out",
        repo.join(gradcache::app::data::wordnet::EMBEDDED_TASK_DIR).to_str().unwrap(),
        "--beir",
        beir.to_str().unwrap(),
        "--queries",
        "12",
    ]);
    assert!(ok, "{text}");
    let eval = |model: &std::path::Path, how: &str| {
        let out = dir.join(format!("eval-{how}"));
        let (ok, text) = gradcache(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data",
            beir.join("dev").to_str().unwrap(),
            "--split",
            "dev",
            "--first-stage",
            how,
            "--retrieve-k",
            "10",
            "--output",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        (ok, text, out)
    };
    let (ok, text, out) = eval(&dir.join("model"), "head-union");
    assert!(ok, "{text}");
    assert!(text.contains("the head as first stage (head-union)"), "{text}");
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["first_stage_kind"], "head-union");
    assert_eq!(std::fs::read_to_string(out.join("run.trec")).unwrap().lines().count(), 12 * 10);

    let other = dir.join("other");
    bundle(&other);
    let (ok, text, _) = eval(&other.join("model"), "head-mean");
    assert!(!ok && text.contains("first_stage") && text.contains("Mixture of Logits"), "{text}");
    let (ok, text, _) = eval(&other.join("model"), "nearest");
    assert!(!ok && text.contains("cosine, head, head-union, head-mean"), "{text}");
}

/// `gradcache plot` draws a run's loss and its dev metric into a PNG (the
/// run's own `metrics.jsonl`, torn last line and all), names the metric it
/// drew, and refuses a metric the run does not log by listing those it does.
#[test]
fn plot_draws_a_runs_loss_and_dev_metric_into_a_png() {
    let dir = common::scratch("cli-plot");
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let mut log = String::new();
    for step in 1..=20 {
        log += &format!("{{\"step\": {step}, \"loss\": {}, \"lr\": 0.001}}\n", 2.0 / step as f64);
        if step % 5 == 0 {
            log += &format!(
                "{{\"step\": {step}, \"eval\": {{\"reranked.mrr10\": {}, \"first_stage.mrr10\": 0.4}}}}\n",
                0.4 + step as f64 / 100.0
            );
        }
    }
    log += "{\"step\": 21, \"lo";
    std::fs::write(run.join("metrics.jsonl"), log).unwrap();
    let (ok, text) = gradcache(&["plot", run.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("loss over 20 steps, reranked.mrr10 at 4 evaluations"), "{text}");
    let png = std::fs::read(run.join("plot.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (u32::from_be_bytes(png[16..20].try_into().unwrap()), u32::from_be_bytes(png[20..24].try_into().unwrap()));
    assert_eq!((w, h), (1000, 700));
    let out = dir.join("first.png");
    let (ok, text) = gradcache(&["plot", run.to_str().unwrap(), "--metric", "first_stage.mrr10", "--output", out.to_str().unwrap()]);
    assert!(ok && out.is_file(), "{text}");
    let (ok, text) = gradcache(&["plot", run.to_str().unwrap(), "--metric", "wsd"]);
    assert!(!ok && text.contains("first_stage.mrr10, reranked.mrr10"), "{text}");
    let (ok, text) = gradcache(&["plot", dir.join("nothing").to_str().unwrap()]);
    assert!(!ok && text.contains("metrics.jsonl"), "{text}");
}
