//! The trained model as an artifact: `Scorer` scoring, the model bundle's
//! round trip, its bad-input errors, and two-stage retrieval.

mod common;

use std::collections::HashMap;
use std::path::Path;

use gradcache::app::data::RetrievalSet;
use gradcache::app::metrics::{ranked_metrics, retrieval_metrics};
use gradcache::app::retrieval::{
    evaluate_retrieval, evaluate_two_stage, first_stage, first_stage_vectors, FirstStage, Searcher, StreamingTopK,
};
use gradcache::app::scorer::{ModelConfig, BUNDLE_FILE};
use gradcache::models::encoders::{Pooling, TextEncoderConfig};
use gradcache::models::heads::{HeadConfig, InteractionConfig, InteractionInit, MlpHeadConfig, MolHeadConfig, ResidualConfig};
use gradcache::AppError;
use gradcache::Layout;
use gradcache::{GradCacheError, Scorer};
use tch::{Device, Kind, Tensor};

const QUERIES: [&str; 3] = ["the bank of the river", "a bank account with interest", "to bank on a friend"];
const PASSAGES: [&str; 5] = [
    "sloping land beside a body of water",
    "a financial institution that accepts deposits",
    "have confidence or faith in",
    "a long ridge or pile",
    "an arrangement of similar objects in a row",
];

/// A layout that cuts 3 queries and 5 passages into several chunks and blocks.
fn layout() -> Layout {
    Layout { query_chunk_size: 2, passage_chunk_size: 2, head_block_queries: 2, head_block_passages: 3 }
}

fn vector_model() -> ModelConfig {
    let head = HeadConfig::Mlp(MlpHeadConfig {
        dim: 32,
        hidden: 16,
        dropout: 0.1,
        residual: Some(ResidualConfig { base_scale: None, gate: 0.0 }),
    });
    ModelConfig::new(TextEncoderConfig::default(), 24, true, head, layout())
}

fn token_model() -> ModelConfig {
    let head = HeadConfig::Interaction(InteractionConfig {
        dim: 32,
        heads: 4,
        ffn: 64,
        dropout: 0.1,
        init: InteractionInit::EncoderTopLayer,
        ..InteractionConfig::default()
    });
    ModelConfig::new(TextEncoderConfig { pooling: Some(Pooling::Tokens), ..Default::default() }, 24, true, head, layout())
}

fn untied_projected_model() -> ModelConfig {
    let encoder = TextEncoderConfig { projection: Some(16), ..Default::default() };
    let head = HeadConfig::Mlp(MlpHeadConfig { dim: 16, hidden: 8, dropout: 0.1, residual: None });
    ModelConfig::new(encoder, 24, false, head, layout())
}

/// A model as training leaves it: every weight moved away from its
/// initialisation (so the residual gate is open and the head matters).
fn trained(config: ModelConfig, folder: &Path) -> Scorer {
    let model = common::tiny_bert_folder(folder, 32, 4, 2, 3);
    tch::manual_seed(11);
    let scorer = Scorer::from_pretrained(config, &model, Device::Cpu).unwrap();
    tch::no_grad(|| {
        for (_, mut v) in scorer.var_store().variables() {
            let noise = v.randn_like() * 0.05;
            let _ = v.f_add_(&noise).unwrap();
        }
    });
    scorer
}

#[test]
fn a_saved_bundle_scores_bit_for_bit_like_the_model_in_memory() {
    let _serial = common::serial();
    let dir = common::scratch("bundle-roundtrip");
    for (name, config) in [("vector", vector_model()), ("tokens", token_model()), ("untied", untied_projected_model())] {
        let scorer = trained(config, &dir.join(format!("{name}-bert")));
        let before = scorer.score(&QUERIES, &PASSAGES).unwrap();
        assert_eq!(before.size(), [3, 5]);
        let bundle = dir.join(format!("{name}-bundle"));
        scorer.save(&bundle).unwrap();
        assert!(bundle.join(BUNDLE_FILE).is_file() && bundle.join("query_encoder/model.safetensors").is_file());
        assert_eq!(bundle.join("passage_encoder").is_dir(), name == "untied", "{name}");
        let loaded = Scorer::load(&bundle, Device::Cpu).unwrap();
        assert_eq!(loaded.config(), scorer.config());
        let after = loaded.score(&QUERIES, &PASSAGES).unwrap();
        assert!(before.equal(&after), "{name}: {before} vs {after}");
        // Control: the same architecture from its initialisation scores
        // otherwise, so equality above is the weights' round trip.
        let fresh = Scorer::from_pretrained(
            scorer.config().clone(),
            &gradcache::models::pretrained::ModelDir::open(dir.join(format!("{name}-bert"))).unwrap(),
            Device::Cpu,
        )
        .unwrap();
        let other = fresh.score(&QUERIES, &PASSAGES).unwrap();
        assert!((&other - &before).abs().max().double_value(&[]) > 1e-3, "{name}");
    }
}

#[test]
fn pairs_and_rerank_agree_with_the_grid() {
    let _serial = common::serial();
    let dir = common::scratch("bundle-pairs");
    let scorer = trained(vector_model(), &dir.join("bert"));
    let grid = scorer.score(&QUERIES, &PASSAGES).unwrap().to_kind(Kind::Double);
    let pairs = [(QUERIES[2], PASSAGES[4]), (QUERIES[0], PASSAGES[1]), (QUERIES[2], PASSAGES[0]), (QUERIES[0], PASSAGES[3])];
    let scores = Vec::<f64>::try_from(scorer.score_pairs(&pairs).unwrap().to_kind(Kind::Double)).unwrap();
    for (k, (q, p)) in pairs.iter().enumerate() {
        let (i, j) = (QUERIES.iter().position(|x| x == q).unwrap(), PASSAGES.iter().position(|x| x == p).unwrap());
        approx::assert_abs_diff_eq!(scores[k], grid.double_value(&[i as i64, j as i64]), epsilon = 1e-5);
    }
    let ranked = scorer.rerank(QUERIES[1], &PASSAGES).unwrap();
    assert_eq!(ranked.len(), PASSAGES.len());
    assert!(ranked.windows(2).all(|w| w[0].1 >= w[1].1));
    for (j, s) in &ranked {
        approx::assert_abs_diff_eq!(*s, grid.double_value(&[1, *j as i64]), epsilon = 1e-5);
    }
}

#[test]
fn bad_bundles_are_typed_errors_naming_the_file() {
    let _serial = common::serial();
    let dir = common::scratch("bundle-bad");
    let scorer = trained(vector_model(), &dir.join("bert"));
    let good = dir.join("good");
    scorer.save(&good).unwrap();
    let copy = |name: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(d.join("query_encoder")).unwrap();
        for f in [BUNDLE_FILE, "head.safetensors"] {
            std::fs::copy(good.join(f), d.join(f)).unwrap();
        }
        for f in ["config.json", "vocab.txt", "model.safetensors"] {
            std::fs::copy(good.join("query_encoder").join(f), d.join("query_encoder").join(f)).unwrap();
        }
        d
    };
    let edit_json = |d: &Path, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join(BUNDLE_FILE)).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(d.join(BUNDLE_FILE), v.to_string()).unwrap();
    };

    let future = copy("future");
    edit_json(&future, &|v| v["format"] = 2.into());
    assert!(matches!(Scorer::load(&future, Device::Cpu), Err(AppError::BundleFormat { found: 2, supported: 1, .. })));

    let no_head = copy("no-head");
    std::fs::remove_file(no_head.join("head.safetensors")).unwrap();
    assert!(
        matches!(Scorer::load(&no_head, Device::Cpu), Err(AppError::Core(GradCacheError::Io { path, .. })) if path.ends_with("head.safetensors"))
    );

    let no_weights = copy("no-weights");
    std::fs::remove_file(no_weights.join("query_encoder/model.safetensors")).unwrap();
    assert!(
        matches!(Scorer::load(&no_weights, Device::Cpu), Err(AppError::Core(GradCacheError::Io { path, .. })) if path.ends_with("model.safetensors"))
    );

    let wider = copy("wider-head");
    edit_json(&wider, &|v| v["head"]["hidden"] = 24.into());
    assert!(
        matches!(Scorer::load(&wider, Device::Cpu), Err(AppError::Core(GradCacheError::WeightShape { path, .. })) if path.ends_with("head.safetensors"))
    );

    let unknown = copy("unknown-field");
    edit_json(&unknown, &|v| v["pooling"] = "mean".into());
    assert!(
        matches!(Scorer::load(&unknown, Device::Cpu), Err(AppError::Core(GradCacheError::Json { path, .. })) if path.ends_with(BUNDLE_FILE))
    );

    let not_bundle = dir.join("not-a-bundle");
    assert!(
        matches!(Scorer::load(&not_bundle, Device::Cpu), Err(AppError::Core(GradCacheError::Io { path, .. })) if path.ends_with(BUNDLE_FILE))
    );

    // Saving over a folder that is not a bundle leaves it alone.
    std::fs::create_dir_all(&not_bundle).unwrap();
    std::fs::write(not_bundle.join("notes.txt"), "mine").unwrap();
    assert!(matches!(scorer.save(&not_bundle), Err(AppError::NotABundle { path }) if path == not_bundle));
    assert_eq!(std::fs::read_to_string(not_bundle.join("notes.txt")).unwrap(), "mine");
    assert_eq!(std::fs::read_dir(&not_bundle).unwrap().count(), 1);
    // Saving over a bundle replaces it, and leaves no staging folder.
    scorer.save(&good).unwrap();
    let leftovers: Vec<_> =
        std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with('.')).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn streaming_top_k_equals_sorting_the_whole_matrix() {
    tch::manual_seed(5);
    let scores = Tensor::randn([7, 50], (Kind::Float, Device::Cpu));
    for (k, cut) in [(10, 13), (1, 50), (60, 7), (5, 1)] {
        let mut top = StreamingTopK::new(k);
        let mut start = 0;
        while start < 50 {
            let len = cut.min(50 - start);
            top.push(&scores.narrow(1, start, len)).unwrap();
            start += len;
        }
        let got = top.finish().unwrap();
        for (q, row) in got.iter().enumerate() {
            let mut want: Vec<(usize, f64)> = (0..50).map(|d| (d, scores.double_value(&[q as i64, d as i64]))).collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1));
            want.truncate(k);
            let got_ids: Vec<usize> = row.iter().map(|x| x.0).collect();
            let want_ids: Vec<usize> = want.iter().map(|x| x.0).collect();
            assert_eq!(got_ids, want_ids, "k {k}, blocks of {cut}, query {q}");
        }
    }
}

fn small_set() -> RetrievalSet {
    let queries = QUERIES.iter().enumerate().map(|(i, t)| (format!("q{i}"), t.to_string())).collect();
    let corpus = PASSAGES.iter().enumerate().map(|(i, t)| (format!("d{i}"), t.to_string())).collect();
    let qrels = HashMap::from([
        ("q0".to_string(), HashMap::from([("d0".to_string(), 1)])),
        ("q1".to_string(), HashMap::from([("d1".to_string(), 1)])),
        ("q2".to_string(), HashMap::from([("d2".to_string(), 2), ("d3".to_string(), 1)])),
    ]);
    RetrievalSet { queries, corpus, qrels }
}

#[test]
fn two_stage_with_the_whole_corpus_equals_the_head_over_the_grid() {
    let _serial = common::serial();
    let dir = common::scratch("two-stage");
    for config in [vector_model(), token_model()] {
        let scorer = trained(config, &dir.join("bert"));
        let set = small_set();
        let mut quiet = |_: &str, _: usize, _: usize| {};
        let run = evaluate_two_stage(&scorer, &set, PASSAGES.len(), &mut quiet).unwrap();
        let grid = scorer.score(&QUERIES, &PASSAGES).unwrap();
        let relevance = set.relevance().unwrap();
        let full = retrieval_metrics(&grid, &relevance).unwrap();
        approx::assert_abs_diff_eq!(run.reranked_metrics.mrr10, full.mrr10, epsilon = 1e-12);
        approx::assert_abs_diff_eq!(run.reranked_metrics.ndcg10, full.ndcg10, epsilon = 1e-12);
        // Stage one is the cosine of the first-stage vectors.
        let q = first_stage_vectors(&scorer.encode_queries(&QUERIES).unwrap()).unwrap();
        let d = first_stage_vectors(&scorer.encode_passages(&PASSAGES).unwrap()).unwrap();
        let cos = q.matmul(&d.transpose(0, 1));
        approx::assert_abs_diff_eq!(run.first_stage_metrics.mrr10, retrieval_metrics(&cos, &relevance).unwrap().mrr10, epsilon = 1e-12);
        // With k = 2 only two candidates per query reach the head.
        let short = first_stage(&scorer, &QUERIES, &PASSAGES, 2, &mut quiet).unwrap();
        assert!(short.iter().all(|r| r.len() == 2));
    }
}

#[test]
fn metrics_of_cut_rankings_count_what_is_missing_as_not_retrieved() {
    // Query 0: relevant doc 3 at rank 2. Query 1: its relevant doc 9 was cut.
    let rankings = vec![vec![5, 3, 1], vec![0, 1]];
    let relevance = vec![vec![(3, 1)], vec![(9, 1)]];
    let m = ranked_metrics(&rankings, &relevance).unwrap();
    approx::assert_abs_diff_eq!(m.top1, 0.0);
    approx::assert_abs_diff_eq!(m.top5, 0.5);
    approx::assert_abs_diff_eq!(m.mrr10, 0.25); // (1/2 + 0) / 2
    approx::assert_abs_diff_eq!(m.recall100, 0.5);
    approx::assert_abs_diff_eq!(m.ndcg10, (1.0 / 3f64.log2()) / 2.0, epsilon = 1e-12);
}

#[test]
fn a_judgement_outside_the_corpus_is_a_typed_error_not_a_panic() {
    let mut set = small_set();
    set.qrels.get_mut("q1").unwrap().insert("missing-doc".to_string(), 1);
    match set.relevance() {
        Err(AppError::UnknownDocument { query, document }) => assert_eq!((query.as_str(), document.as_str()), ("q1", "missing-doc")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_model_of_another_width_works_and_a_head_of_the_wrong_width_is_named() {
    let _serial = common::serial();
    let dir = common::scratch("bundle-width");
    // Width 48, not MiniLM's 384: the head's dim is checked against the
    // model's own config.json.
    let model = common::tiny_bert_folder(&dir.join("bert"), 48, 4, 1, 0);
    let head = |dim| HeadConfig::Mlp(MlpHeadConfig { dim, hidden: 8, dropout: 0.0, residual: None });
    let ok =
        Scorer::from_pretrained(ModelConfig::new(TextEncoderConfig::default(), 16, true, head(48), layout()), &model, Device::Cpu).unwrap();
    assert_eq!(ok.score(&QUERIES, &PASSAGES).unwrap().size(), [3, 5]);
    let err = Scorer::from_pretrained(ModelConfig::new(TextEncoderConfig::default(), 16, true, head(384), layout()), &model, Device::Cpu)
        .unwrap_err();
    assert!(matches!(err, AppError::Core(GradCacheError::InvalidConfig { field: "head.dim", .. })), "{err}");
}

#[test]
fn a_bf16_scorer_scores_near_f32_and_f16_is_refused() {
    let _serial = common::serial();
    let dir = common::scratch("bundle-bf16");
    for (name, config) in [("vector", vector_model()), ("tokens", token_model())] {
        let scorer = trained(config, &dir.join(format!("{name}-bert")));
        let f32_scores = scorer.score(&QUERIES, &PASSAGES).unwrap();
        let many: Vec<String> = (0..60)
            .map(|i| {
                format!(
                    "{} {}",
                    PASSAGES[i % PASSAGES.len()],
                    ["river", "bank", "money", "faith", "row", "ridge"][i % 6].repeat(1 + i / 30)
                )
            })
            .collect();
        let scorer = scorer.with_precision(gradcache::runtime::precision::Precision::Bf16).unwrap();
        let bf16_scores = scorer.score(&QUERIES, &PASSAGES).unwrap();
        // bfloat16 keeps 8 bits of mantissa: the scores move (autocast is
        // on), by about its rounding relative to their spread.
        let diff = (&bf16_scores.to_kind(Kind::Double) - &f32_scores.to_kind(Kind::Double)).abs().max().double_value(&[]);
        let spread = f32_scores.to_kind(Kind::Double).abs().max().double_value(&[]);
        assert!(diff > 0.0, "{name}: bf16 scores equal f32's: autocast is off");
        assert!(diff <= 0.05 * spread.max(1.0), "{name}: bf16 moved scores by {diff} (largest {spread})");
        assert_eq!(scorer.precision(), gradcache::runtime::precision::Precision::Bf16);
        // Ranking scores come out in float32, not on bf16's grid, where
        // near candidates tie and corpus order breaks the tie. A float32
        // score of bf16 representations lands on that grid (low 16 bits
        // zero) about once in 65536; a score computed in bf16 always does.
        // Counting distinct values instead depends on the CPU: two texts
        // whose float32 representations differ only by rounding noise can
        // meet in bf16 on one machine and not on another.
        let bf16_many = scorer.score(&QUERIES, &many).unwrap();
        assert_eq!(bf16_many.kind(), Kind::Float, "{name}: ranking scores in {:?}", bf16_many.kind());
        let on_grid = |t: &Tensor| {
            let values = Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap();
            (values.iter().filter(|x| x.to_bits() & 0xffff == 0).count(), values.len())
        };
        let (grid, all) = on_grid(&bf16_many);
        assert_eq!(all, QUERIES.len() * many.len());
        assert!(grid * 10 < all, "{name}: {grid} of {all} ranking scores lie on bf16's grid");
        // The check catches scores that went through bf16.
        let (grid, _) = on_grid(&bf16_many.to_kind(Kind::BFloat16).to_kind(Kind::Float));
        assert_eq!(grid, all, "{name}: the grid check misses bf16 scores");
        match scorer.with_precision(gradcache::runtime::precision::Precision::F16) {
            Err(AppError::Core(GradCacheError::InvalidConfig { field: "precision", .. })) => {}
            other => panic!("expected f16 to be refused, got {:?}", other.map(|s| s.precision())),
        }
    }
}

/// Stage two over the representations stage one kept
/// (`rerank_encoded`, what `evaluate_two_stage` does when they fit its
/// memory share) ranks as re-encoding every candidate does
/// (`rerank_candidates`), for a vector and a token head.
#[test]
fn reranking_kept_representations_equals_encoding_the_candidates_again() {
    use gradcache::app::retrieval::{rerank_candidates, rerank_encoded, Encoded};
    let _serial = common::serial();
    let dir = common::scratch("rerank-kept");
    for config in [vector_model(), token_model()] {
        let scorer = trained(config, &dir.join("bert"));
        let mut quiet = |_: &str, _: usize, _: usize| {};
        let candidates = first_stage(&scorer, &QUERIES, &PASSAGES, 3, &mut quiet).unwrap();
        let again = rerank_candidates(&scorer, &QUERIES, &PASSAGES, &candidates, &mut quiet).unwrap();
        // The corpus encoded in two pieces of different padded widths, as
        // stage one's blocks are.
        let parts = [scorer.encode_passages(&PASSAGES[..2]).unwrap(), scorer.encode_passages(&PASSAGES[2..]).unwrap()];
        let encoded = Encoded {
            queries: scorer.encode_queries(&QUERIES).unwrap(),
            corpus: gradcache::core::representation::Representation::cat(&parts).unwrap(),
        };
        let kept = rerank_encoded(&scorer, &encoded, &candidates, &mut quiet).unwrap();
        assert_eq!(kept.len(), again.len());
        for (k, a) in kept.iter().zip(&again) {
            assert_eq!(k.iter().map(|&(d, _)| d).collect::<Vec<_>>(), a.iter().map(|&(d, _)| d).collect::<Vec<_>>());
            for (&(_, x), &(_, y)) in k.iter().zip(a) {
                assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{x} vs {y}");
            }
        }
        // Candidates naming a document the kept corpus lacks are refused.
        let mut bad = candidates.clone();
        bad[0][0].0 = PASSAGES.len();
        assert!(rerank_encoded(&scorer, &encoded, &bad, &mut quiet).is_err());
    }
}

fn mol_model(residual: Option<ResidualConfig>) -> ModelConfig {
    let head = HeadConfig::Mol(MolHeadConfig {
        dim: 32,
        query_components: 3,
        passage_components: 2,
        component_dim: 8,
        residual,
        ..MolHeadConfig::default()
    });
    ModelConfig::new(TextEncoderConfig::default(), 24, true, head, layout())
}

/// The head as its own first stage: exact search is the head's grid sorted
/// (for any head); a component search with k = the corpus finds every
/// document and, rescored, ranks as the head does; with a small k it
/// rescores only its candidates, and it refuses a head without components.
#[test]
fn the_head_as_first_stage_equals_its_grid_and_component_searches_rescore_exactly() {
    let _serial = common::serial();
    let dir = common::scratch("head-first-stage");
    let set = small_set();
    let relevance = set.relevance().unwrap();
    let mut quiet = |_: &str, _: usize, _: usize| {};
    for config in [mol_model(None), mol_model(Some(ResidualConfig { base_scale: None, gate: 0.0 })), vector_model()] {
        let is_mol = matches!(config.head, HeadConfig::Mol(_));
        let scorer = trained(config, &dir.join("bert"));
        let grid = scorer.score(&QUERIES, &PASSAGES).unwrap();
        let full = retrieval_metrics(&grid, &relevance).unwrap();
        let exact = evaluate_retrieval(&scorer, &set, PASSAGES.len(), FirstStage::Head, &mut quiet).unwrap();
        approx::assert_abs_diff_eq!(exact.first_stage_metrics.mrr10, full.mrr10, epsilon = 1e-12);
        // Exact top 2 is the grid's top 2, scores included.
        let top2 = evaluate_retrieval(&scorer, &set, 2, FirstStage::Head, &mut quiet).unwrap();
        for (q, row) in top2.first_stage.iter().enumerate() {
            let mut want: Vec<(usize, f64)> = (0..PASSAGES.len()).map(|d| (d, grid.double_value(&[q as i64, d as i64]))).collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1));
            assert_eq!(row.iter().map(|r| r.0).collect::<Vec<_>>(), want[..2].iter().map(|r| r.0).collect::<Vec<_>>());
            for (&(_, got), &(_, w)) in row.iter().zip(&want) {
                approx::assert_abs_diff_eq!(got, w, epsilon = 1e-5);
            }
        }
        for how in [FirstStage::HeadUnion, FirstStage::HeadMean] {
            if !is_mol {
                let err = evaluate_retrieval(&scorer, &set, 2, how, &mut quiet).unwrap_err();
                assert!(matches!(err, AppError::Core(GradCacheError::InvalidConfig { field: "first_stage", .. })), "{err}");
                continue;
            }
            let all = evaluate_retrieval(&scorer, &set, PASSAGES.len(), how, &mut quiet).unwrap();
            approx::assert_abs_diff_eq!(all.first_stage_metrics.mrr10, full.mrr10, epsilon = 1e-12);
            let short = evaluate_retrieval(&scorer, &set, 1, how, &mut quiet).unwrap();
            for (q, row) in short.first_stage.iter().enumerate() {
                assert_eq!(row.len(), 1, "{how:?}: cut to k");
                approx::assert_abs_diff_eq!(row[0].1, grid.double_value(&[q as i64, row[0].0 as i64]), epsilon = 1e-5);
            }
        }
    }
}

/// head-mean searches the mean of each side's components; head-union each
/// query component against every document's best component (and the
/// cosine's list for a residual head): the candidate lists are those
/// searches written out here.
#[test]
fn component_searches_find_the_candidates_their_definitions_give() {
    let _serial = common::serial();
    let dir = common::scratch("component-search");
    for residual in [None, Some(ResidualConfig { base_scale: None, gate: 0.0 })] {
        let scorer = trained(mol_model(residual.clone()), &dir.join("bert"));
        let (q, p) = (scorer.encode_queries(&QUERIES).unwrap(), scorer.encode_passages(&PASSAGES).unwrap());
        let (fq, gp) = tch::no_grad(|| {
            let side = |r, s| scorer.head().components(r, s).unwrap().unwrap();
            (side(&q, gradcache::core::layout::Side::Queries), side(&p, gradcache::core::layout::Side::Passages))
        });
        let top = |scores: &Tensor, k: i64| -> Vec<Vec<usize>> {
            (0..scores.size()[0])
                .map(|r| Vec::<i64>::try_from(scores.get(r).topk(k, 0, true, true).1).unwrap().into_iter().map(|i| i as usize).collect())
                .collect()
        };
        let found = |how| {
            let mut s = Searcher::new(&scorer, &q, 2, how).unwrap();
            s.push(&p.narrow(0, 3).unwrap()).unwrap();
            s.push(&p.narrow(3, 2).unwrap()).unwrap();
            s.finish()
                .unwrap()
                .into_iter()
                .map(|r| {
                    let mut d: Vec<usize> = r.into_iter().map(|x| x.0).collect();
                    d.sort();
                    d
                })
                .collect::<Vec<_>>()
        };
        let cosine = top(&first_stage_vectors(&q).unwrap().matmul(&first_stage_vectors(&p).unwrap().tr()), 2);
        let with_base = |mut lists: Vec<Vec<usize>>| -> Vec<Vec<usize>> {
            for (l, c) in lists.iter_mut().zip(&cosine) {
                if residual.is_some() {
                    l.extend(c);
                }
                l.sort();
                l.dedup();
            }
            lists
        };
        let mean = top(&fq.mean_dim(1, false, None).matmul(&gp.mean_dim(1, false, None).tr()), 2);
        assert_eq!(found(FirstStage::HeadMean), with_base(mean), "head-mean, residual {residual:?}");
        let best = (fq.unsqueeze(1).unsqueeze(3) * gp.unsqueeze(0).unsqueeze(2)).sum_dim_intlist(-1, false, None::<Kind>).amax([3], false); // [Q, C, P_q]
        let mut union: Vec<Vec<usize>> = vec![Vec::new(); QUERIES.len()];
        for i in 0..fq.size()[1] {
            for (u, t) in union.iter_mut().zip(top(&best.select(2, i), 2)) {
                u.extend(t);
            }
        }
        assert_eq!(found(FirstStage::HeadUnion), with_base(union), "head-union, residual {residual:?}");
    }
}
