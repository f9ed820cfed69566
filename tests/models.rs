//! The model families and formats people bring (docs/models.md): XLM-RoBERTa
//! and ModernBERT models that transformers itself writes, `tokenizer.json`
//! tokenizers trained by the `tokenizers` package, sentence-transformers
//! folders in, and `gradcache export` read back by sentence-transformers
//! and by PyLate.
//!
//! The references come from tests/fixtures/make_model_fixtures.py, run once
//! per test binary with `.python-models` (`scripts/gradcache.sh
//! setup-models`: transformers 4.57.1, tokenizers 0.22.2,
//! sentence-transformers 5.7.0, torch 2.4.0); PyLate runs with
//! `.python-pylate` (`scripts/gradcache.sh setup-pylate`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::serial;
use gradcache::app::error::AppError;
use gradcache::app::export::ExportFormat;
use gradcache::models::encoders::{BertImplementation, Pooling, TextEncoder, TextEncoderConfig};
use gradcache::models::heads::{HeadConfig, MlpHeadConfig};
use gradcache::models::pretrained::ModelDir;
use gradcache::{Encoder, GradCacheError, Layout, ModelConfig, Scorer};
use serde::Deserialize;
use tch::{nn, Device, Kind, Tensor};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    repo().join(".python-models")
}

#[derive(Deserialize)]
struct ModelReference {
    ids: Vec<Vec<i64>>,
    hidden_f32: Vec<Vec<Vec<f64>>>,
    hidden_f64: Vec<Vec<Vec<f64>>>,
}

#[derive(Deserialize)]
struct Reference {
    texts: Vec<String>,
    max_len: usize,
    models: std::collections::HashMap<String, ModelReference>,
    st: std::collections::HashMap<String, Vec<Vec<f32>>>,
}

struct Fixtures {
    dir: PathBuf,
    reference: Reference,
}

/// Writes the models and references once for this test binary.
fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("gradcache-model-fixtures-{}", std::process::id()));
        let output = Command::new(python())
            .arg(repo().join("tests/fixtures/make_model_fixtures.py"))
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}; run scripts/gradcache.sh setup-models", python().display()));
        assert!(output.status.success(), "fixtures failed: {}", String::from_utf8_lossy(&output.stderr));
        let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
        Fixtures { reference: serde_json::from_str(&text).unwrap(), dir }
    })
}

fn model_path(name: &str) -> PathBuf {
    match name {
        "minilm" => repo().join(gradcache::models::pretrained::EMBEDDED_MODEL_DIR),
        other => fixtures().dir.join(other),
    }
}

fn to_tensor(rows: &[Vec<Vec<f64>>]) -> Tensor {
    let (n, l, d) = (rows.len() as i64, rows[0].len() as i64, rows[0][0].len() as i64);
    let flat: Vec<f64> = rows.iter().flatten().flatten().copied().collect();
    Tensor::from_slice(&flat).view([n, l, d])
}

/// Identical ids and masks to transformers' tokenizer (truncation at
/// max_len) for accents, CJK, emoji, an empty text and a long one, with
/// each kind of tokenizer: Unigram (XLM-R), byte-level BPE (ModernBERT) and
/// WordPiece (MiniLM's tokenizer.json).
#[test]
fn tokenizers_match_transformers() {
    let fx = fixtures();
    for name in ["xlmr", "modernbert", "minilm"] {
        let want = &fx.reference.models[name].ids;
        let tok = ModelDir::open(model_path(name)).unwrap().tokenizer(fx.reference.max_len).unwrap();
        let batch = tok.encode(&fx.reference.texts).unwrap();
        assert_eq!(batch.ids().size()[1] as usize, want.iter().map(Vec::len).max().unwrap(), "{name}: padded length");
        for (i, want) in want.iter().enumerate() {
            let len = want.len() as i64;
            let mask = Vec::<i64>::try_from(batch.mask().get(i as i64)).unwrap();
            assert_eq!(mask.iter().sum::<i64>(), len, "{name}: mask of {:?}", fx.reference.texts[i]);
            let got = Vec::<i64>::try_from(batch.ids().get(i as i64).narrow(0, 0, len)).unwrap();
            assert_eq!(&got, want, "{name}: ids of {:?}", fx.reference.texts[i]);
            // One text alone, untruncated then cut, is the same.
            let alone = tok.truncate(tok.ids_untruncated(&fx.reference.texts[i]).unwrap(), false);
            assert_eq!(&alone, want, "{name}: ids_untruncated + truncate of {:?}", fx.reference.texts[i]);
        }
    }
}

fn token_encoder(vs: &nn::VarStore, model: &ModelDir, implementation: BertImplementation) -> TextEncoder {
    let config = TextEncoderConfig { implementation, pooling: Some(Pooling::Tokens), projection: None, normalize: Some(false) };
    let (enc, report) = config.init_pretrained(vs, "encoder", model).unwrap();
    assert!(report.loaded > 0);
    enc
}

/// Last hidden states equal transformers' on the model transformers wrote:
/// relative max |Δ| ≤ 1e-4 in f32 and ≤ 1e-10 in f64, over real tokens.
#[test]
fn hidden_states_match_transformers() {
    let _serial = serial();
    let fx = fixtures();
    let cases = [("xlmr", BertImplementation::Fused), ("xlmr", BertImplementation::RustBert), ("modernbert", BertImplementation::Fused)];
    for (name, implementation) in cases {
        let model = ModelDir::open(model_path(name)).unwrap();
        let batch = model.tokenizer(fx.reference.max_len).unwrap().encode(&fx.reference.texts).unwrap();
        let mask = batch.mask().to_kind(Kind::Double).unsqueeze(2);
        for (precision, want, tolerance) in
            [("f32", &fx.reference.models[name].hidden_f32, 1e-4), ("f64", &fx.reference.models[name].hidden_f64, 1e-10)]
        {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let enc = token_encoder(&vs, &model, implementation);
            if precision == "f64" {
                vs.double();
            }
            let got = tch::no_grad(|| enc.encode(&batch, false).unwrap()).tensor().to_kind(Kind::Double);
            let want = to_tensor(want) * &mask;
            let scale = want.abs().max().double_value(&[]);
            let diff = (&got - &want).abs().max().double_value(&[]) / scale;
            assert!(diff <= tolerance, "{name} ({implementation:?}, {precision}): relative max |Δ| = {diff:e}");
        }
    }
}

/// The two-cache step through each family with its dropout on (0.1 on
/// embeddings, attention and MLP), in f64, against the full batch.
#[test]
fn two_cache_step_is_exact_through_xlmr_and_modernbert_with_dropout() {
    let _serial = serial();
    for name in ["xlmr", "modernbert"] {
        let model = ModelDir::open(model_path(name)).unwrap();
        let mut vs = nn::VarStore::new(Device::Cpu);
        let config = TextEncoderConfig { pooling: Some(Pooling::Mean), projection: Some(16), normalize: Some(true), ..Default::default() };
        let (enc, _) = config.init_pretrained(&vs, "encoder", &model).unwrap();
        let head = MlpHeadConfig { dim: 16, hidden: 8, dropout: 0.1, residual: None }.init(&(vs.root() / "head")).unwrap();
        vs.double();
        let tok = model.tokenizer(16).unwrap();
        let queries = ["a bank of a river", "Geld auf der Bank", "銀行の岸", "a bank of switches 🙂"];
        common::assert_exact_through_text_encoder(&vs, &enc, &head, &tok, queries, &format!("{name} + MLP head, f64, dropout 0.1"));
        let queries = tok.encode(&queries).unwrap();
        // Dropout acted: two training-mode encodes with different seeds differ.
        tch::manual_seed(1);
        let a = enc.encode(&queries, true).unwrap().tensor().detach();
        tch::manual_seed(2);
        let b = enc.encode(&queries, true).unwrap().tensor().detach();
        assert!((a - b).abs().max().double_value(&[]) > 1e-6, "{name}: dropout did nothing");
    }
}

/// The same step under bf16 autocast through XLM-R and ModernBERT (f32
/// weights, dropout on): equal to the full-batch step under the same
/// autocast by tests/precision.rs's criterion (the same loss; a gradient
/// distance under a tenth of bf16's own against f32), and autocast ran.
#[test]
fn two_cache_step_under_bf16_equals_the_full_batch_through_xlmr_and_modernbert() {
    use gradcache::check::{zero_grads, GradientSnapshot};
    use gradcache::runtime::precision::Precision;
    use gradcache::{GradCache, InfoNce, StepConfig, Targets};
    let _serial = serial();
    for name in ["xlmr", "modernbert"] {
        let model = ModelDir::open(model_path(name)).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let config = TextEncoderConfig { pooling: Some(Pooling::Mean), projection: Some(16), normalize: Some(true), ..Default::default() };
        let (enc, _) = config.init_pretrained(&vs, "encoder", &model).unwrap();
        let head = MlpHeadConfig { dim: 16, hidden: 8, dropout: 0.1, residual: None }.init(&(vs.root() / "head")).unwrap();
        let tok = model.tokenizer(16).unwrap();
        let queries = tok.encode(&["a bank of a river", "Geld auf der Bank", "銀行の岸", "a bank of switches 🙂"]).unwrap();
        let passages = tok
            .encode(&[
                "sloping land beside water",
                "a financial institution",
                "tip laterally",
                "an arrangement in a row",
                "a container for coins",
                "a flight maneuver",
                "a long ridge",
                "the funds held by a gambling house",
            ])
            .unwrap();
        let targets = Targets::grouped(4, 8, 2).unwrap();
        let loss = InfoNce { temperature: 0.5, symmetric: false };
        let layout = Layout { query_chunk_size: 3, passage_chunk_size: 3, head_block_queries: 3, head_block_passages: 5 };
        let run = |precision: Precision, full: bool| {
            let mut gc = GradCache::tied(StepConfig { layout, precision, ..StepConfig::default() }, &enc, &head, &loss).unwrap();
            zero_grads(&vs);
            tch::manual_seed(5);
            let out =
                if full { gc.full_batch_step(&queries, &passages, &targets) } else { gc.step(&queries, &passages, &targets) }.unwrap();
            (out.loss, GradientSnapshot::take(&vs).unwrap())
        };
        let (cached_loss, cached) = run(Precision::Bf16, false);
        let (full_loss, full) = run(Precision::Bf16, true);
        let (f32_loss, f32_full) = run(Precision::F32, true);
        let (step, precision) = (cached.relative_distance(&full).unwrap(), full.relative_distance(&f32_full).unwrap());
        eprintln!("{name}: two-cache vs full batch under bf16 {step:.2e}; bf16 vs f32 {precision:.2e}");
        assert!((cached_loss - full_loss).abs() <= 1e-6 * full_loss.abs().max(1.0), "{name}: losses {cached_loss} vs {full_loss}");
        assert!((full_loss - f32_loss).abs() > 1e-6 || precision > 1e-3, "{name}: bf16 changed nothing against f32: autocast is off");
        assert!(
            step <= 0.1 * precision,
            "{name}: the two-cache step's difference ({step:.2e}) is not small against bf16's own ({precision:.2e})"
        );
    }
}

fn cosine_bundle_config() -> ModelConfig {
    ModelConfig::new(TextEncoderConfig::default(), 24, true, HeadConfig::Cosine(Default::default()), Layout::default())
}

fn embeddings(scorer: &Scorer, texts: &[String]) -> Tensor {
    let rep = scorer.encode_passages(texts).unwrap();
    gradcache::app::retrieval::pooled_vectors(&rep).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn rows(v: &[Vec<f32>]) -> Tensor {
    Tensor::from_slice(&v.concat()).view([v.len() as i64, v[0].len() as i64])
}

/// A sentence-transformers folder is run as sentence-transformers runs it:
/// MiniLM's (legacy pooling booleans, mean, Normalize) and one written by
/// sentence-transformers 5.7 (`pooling_mode: cls`, a Dense layer,
/// Normalize), each equal to `SentenceTransformer.encode` within 1e-5,
/// with nothing restated in the config.
#[test]
fn sentence_transformers_folders_are_read_with_their_modules() {
    let _serial = serial();
    let fx = fixtures();
    for (name, path, want) in
        [("minilm", model_path("minilm"), (Pooling::Mean, None, true)), ("st_xlmr", fx.dir.join("st_xlmr"), (Pooling::Cls, Some(16), true))]
    {
        let model = ModelDir::open(&path).unwrap();
        let config = ModelConfig { max_len: 256, ..cosine_bundle_config() };
        let scorer = Scorer::from_pretrained(config, &model, Device::Cpu).unwrap();
        let resolved = &scorer.config().encoder;
        assert_eq!((resolved.pooling(), resolved.projection, resolved.normalize()), want, "{name}: modules resolved");
        let diff = max_diff(&embeddings(&scorer, &fx.reference.texts), &rows(&fx.reference.st[name]));
        assert!(diff < 1e-5, "{name}: max |Δ| against SentenceTransformer.encode = {diff:e}");
    }
    // Stated settings win over the folder's.
    let model = ModelDir::open(fx.dir.join("st_xlmr")).unwrap();
    let stated = TextEncoderConfig { pooling: Some(Pooling::Mean), normalize: Some(false), ..Default::default() }.resolved(&model).unwrap();
    assert_eq!((stated.pooling(), stated.normalize(), stated.projection), (Pooling::Mean, false, Some(16)));
    // A projection of another width than the folder's Dense is refused.
    let both = TextEncoderConfig { projection: Some(8), ..Default::default() }.resolved(&model);
    assert!(matches!(both, Err(GradCacheError::InvalidConfig { field: "projection", .. })), "{both:?}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn edited(name: &str, file: &str, edit: impl FnOnce(String) -> String) -> PathBuf {
    let dir = fixtures().dir.join(format!("edited-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&fixtures().dir.join("st_xlmr"), &dir);
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    std::fs::write(dir.join(file), edit(text)).unwrap();
    dir
}

#[test]
fn what_gradcache_cannot_run_is_a_typed_error_naming_it() {
    // Builds scorers, which draw from libtorch's global generator: not
    // while an exactness test replays its draws.
    let _serial = serial();
    let tanh = edited("tanh", "2_Dense/config.json", |t| t.replace("torch.nn.modules.linear.Identity", "torch.nn.modules.activation.Tanh"));
    let err = ModelDir::open(&tanh).unwrap_err();
    assert!(matches!(&err, GradCacheError::UnsupportedModule { module, .. } if module.contains("Tanh")), "{err}");

    let max = edited("max", "1_Pooling/config.json", |t| t.replace("\"cls\"", "\"max\""));
    let err = ModelDir::open(&max).unwrap_err();
    assert!(matches!(&err, GradCacheError::UnsupportedModule { module, .. } if module.contains("max")), "{err}");

    let unknown = edited("unknown", "modules.json", |t| {
        t.replacen("sentence_transformers.base.modules.dense.Dense", "sentence_transformers.models.LayerNorm", 1)
    });
    let err = ModelDir::open(&unknown).unwrap_err();
    assert!(matches!(&err, GradCacheError::UnsupportedModule { module, .. } if module == "LayerNorm"), "{err}");

    let gpt = edited("gpt2", "config.json", |t| t.replace("\"xlm-roberta\"", "\"gpt2\""));
    let err = ModelDir::open(&gpt).unwrap_err();
    assert!(
        matches!(&err, GradCacheError::UnsupportedModel { model_type, supported, .. } if model_type == "gpt2" && supported.contains("modernbert")),
        "{err}"
    );
    assert!(err.to_string().contains("xlm-roberta"), "the error lists what is supported: {err}");

    // The interaction block's "copy the encoder's top layer" works for
    // XLM-R (BERT's layer layout) and is a typed error for ModernBERT.
    let interaction = |dim: usize| -> HeadConfig {
        serde_json::from_value(
            serde_json::json!({"kind": "interaction", "dim": dim, "heads": 4, "ffn": 64, "dropout": 0.1, "init": "encoder_top_layer"}),
        )
        .unwrap()
    };
    let token_config = |head: HeadConfig| {
        ModelConfig::new(TextEncoderConfig { pooling: Some(Pooling::Tokens), ..Default::default() }, 24, true, head, Layout::default())
    };
    let xlmr = ModelDir::open(model_path("xlmr")).unwrap();
    Scorer::from_pretrained(token_config(interaction(32)), &xlmr, Device::Cpu).unwrap();
    let modernbert = ModelDir::open(model_path("modernbert")).unwrap();
    let mb_head: HeadConfig = serde_json::from_value(
        serde_json::json!({"kind": "interaction", "dim": 32, "heads": 4, "ffn": 48, "dropout": 0.1, "init": "encoder_top_layer"}),
    )
    .unwrap();
    let err = Scorer::from_pretrained(token_config(mb_head), &modernbert, Device::Cpu).unwrap_err();
    assert!(matches!(&err, AppError::Core(GradCacheError::InvalidConfig { field: "init", .. })), "{err}");
}

fn run(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_gradcache")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "gradcache {args:?} failed:\n{text}");
    text
}

fn st_encode(folder: &Path, texts: &[String]) -> Tensor {
    let script = r#"
import json, sys
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device="cpu")
print(json.dumps(model.encode(json.loads(sys.argv[2]), batch_size=4).tolist()))
"#;
    let output =
        Command::new(python()).args(["-c", script, folder.to_str().unwrap(), &serde_json::to_string(texts).unwrap()]).output().unwrap();
    assert!(output.status.success(), "sentence-transformers failed: {}", String::from_utf8_lossy(&output.stderr));
    let line = output.stdout.rsplit(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap().to_vec();
    rows(&serde_json::from_slice::<Vec<Vec<f32>>>(&line).unwrap())
}

/// A sentence-transformers folder in (CLS, Dense, Normalize), as a bundle,
/// exported again: sentence-transformers reads the export and embeds as it
/// embedded the folder it came from.
#[test]
fn export_round_trips_a_sentence_transformers_folder() {
    let _serial = serial();
    let fx = fixtures();
    let model = ModelDir::open(fx.dir.join("st_xlmr")).unwrap();
    let scorer = Scorer::from_pretrained(cosine_bundle_config(), &model, Device::Cpu).unwrap();
    let bundle = fx.dir.join("roundtrip-bundle");
    scorer.save(&bundle).unwrap();
    let out = fx.dir.join("roundtrip-st");
    let _ = std::fs::remove_dir_all(&out);
    let printed =
        run(&["export", "--model", bundle.to_str().unwrap(), "--format", "sentence-transformers", "--output", out.to_str().unwrap()]);
    assert!(printed.contains("Transformer -> Pooling -> Dense -> Normalize"), "{printed}");
    let diff = max_diff(&st_encode(&out, &fx.reference.texts), &rows(&fx.reference.st["st_xlmr"]));
    assert!(diff < 1e-5, "the export embeds otherwise than its source: max |Δ| = {diff:e}");
    // The pooler, which gradcache does not run, travels unchanged, so that
    // transformers finds every weight of its AutoModel.
    let pooler = |dir: &Path| -> Vec<(String, Tensor)> {
        let mut t: Vec<_> = gradcache::models::weights::read_safetensors(&dir.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.starts_with("pooler."))
            .collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let (source, exported) = (pooler(&fx.dir.join("st_xlmr")), pooler(&out));
    assert_eq!(source.len(), 2, "the fixture has a pooler");
    assert_eq!(exported.iter().map(|(k, _)| k).collect::<Vec<_>>(), source.iter().map(|(k, _)| k).collect::<Vec<_>>());
    assert!(source.iter().zip(&exported).all(|((_, a), (_, b))| max_diff(a, b) == 0.0));
    // An export never writes into a folder that holds files.
    let again = Command::new(env!("CARGO_BIN_EXE_gradcache"))
        .args(["export", "--model", bundle.to_str().unwrap(), "--format", "sentence-transformers", "--output", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"), "{}", String::from_utf8_lossy(&again.stderr));
}

/// A new user's path with an XLM-R folder: train from the CLI, evaluate the
/// bundle, export it, and find sentence-transformers' embeddings of the
/// export equal to `gradcache encode`'s.
#[test]
fn xlmr_trains_evaluates_and_exports_from_the_cli() {
    let _serial = serial();
    let fx = fixtures();
    let work = fx.dir.join("cli");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let w = |p: &str| work.join(p).to_str().unwrap().to_string();
    let xlmr = model_path("xlmr");
    let log = run(&[
        "train",
        "--model-dir",
        xlmr.to_str().unwrap(),
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--dev-queries",
        "20",
        "--max-len",
        "24",
        "--output-dir",
        &w("run"),
        "--quiet",
        "--device",
        "cpu",
    ]);
    assert!(log.contains("head.dim 384 -> 32"), "{log}");
    let bundle = work.join("run/model");
    assert!(bundle.join("gradcache.json").is_file(), "{log}");
    let losses: Vec<f64> = std::fs::read_to_string(work.join("run/metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["loss"].as_f64())
        .collect();
    assert!(!losses.is_empty() && losses.iter().all(|l| l.is_finite()), "losses {losses:?}");

    run(&["prepare-wordnet", "--beir", &w("beir"), "--queries", "20"]);
    let eval = run(&[
        "eval",
        "--model",
        bundle.to_str().unwrap(),
        "--data",
        &w("beir/dev"),
        "--split",
        "dev",
        "--output",
        &w("eval"),
        "--quiet",
        "--device",
        "cpu",
    ]);
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(work.join("eval/metrics.json")).unwrap()).unwrap();
    assert!(metrics.to_string().contains("mrr"), "{eval}\n{metrics}");

    run(&["export", "--model", bundle.to_str().unwrap(), "--format", "sentence-transformers", "--output", &w("st")]);
    // `gradcache encode` refuses empty lines.
    let texts: &Vec<String> = &fx.reference.texts.iter().filter(|t| !t.is_empty()).cloned().collect();
    let input: String = texts.iter().map(|t| serde_json::to_string(t).unwrap() + "\n").collect();
    std::fs::write(work.join("texts.jsonl"), input).unwrap();
    // In f32, the precision sentence-transformers runs the export in.
    run(&[
        "encode",
        "--model",
        bundle.to_str().unwrap(),
        "--input",
        &w("texts.jsonl"),
        "--output",
        &w("emb.safetensors"),
        "--quiet",
        "--device",
        "cpu",
        "--precision",
        "f32",
    ]);
    let ours = gradcache::models::weights::read_safetensors(&work.join("emb.safetensors")).unwrap();
    let ours = &ours.iter().find(|(k, _)| k == "embeddings").unwrap().1;
    let theirs = st_encode(&work.join("st"), texts);
    assert_eq!(ours.size(), theirs.size());
    let diff = max_diff(ours, &theirs);
    assert!(diff < 1e-5, "sentence-transformers embeds the export otherwise than gradcache encode: max |Δ| = {diff:e}");
    // The trained weights, not the pretrained ones, were exported.
    let pretrained = Scorer::from_pretrained(
        ModelConfig { encoder: TextEncoderConfig { normalize: Some(false), ..Default::default() }, ..cosine_bundle_config() },
        &ModelDir::open(&xlmr).unwrap(),
        Device::Cpu,
    )
    .unwrap();
    assert!(max_diff(&embeddings(&pretrained, texts), &theirs) > 1e-4, "the export is the pretrained model");
}

fn pylate_python() -> PathBuf {
    repo().join(".python-pylate")
}

/// What PyLate's `ColBERT(folder)` makes of texts: each query's and each
/// document's token vectors (`encode(is_query=…)`), and the MaxSim score of
/// every (query, document) by `pylate.scores.colbert_scores`.
struct PylateOutput {
    queries: Vec<Tensor>,
    documents: Vec<Tensor>,
    scores: Tensor,
}

fn pylate_encode(folder: &Path, texts: &[String]) -> PylateOutput {
    let script = r#"
import json, sys
import torch
from pylate import models, scores
model = models.ColBERT(sys.argv[1], device="cpu")
texts = json.loads(sys.argv[2])
q = model.encode(texts, is_query=True, batch_size=4, convert_to_tensor=False)
d = model.encode(texts, is_query=False, batch_size=4, convert_to_tensor=False)
q = [torch.as_tensor(x) for x in q]
d = [torch.as_tensor(x) for x in d]
s = [[float(scores.colbert_scores(a[None], b[None])[0, 0]) for b in d] for a in q]
print(json.dumps({"queries": [x.tolist() for x in q], "documents": [x.tolist() for x in d], "scores": s}))
"#;
    let output = Command::new(pylate_python())
        .args(["-c", script, folder.to_str().unwrap(), &serde_json::to_string(texts).unwrap()])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/gradcache.sh setup-pylate", pylate_python().display()));
    assert!(output.status.success(), "PyLate failed: {}", String::from_utf8_lossy(&output.stderr));
    let line = output.stdout.rsplit(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap().to_vec();
    #[derive(Deserialize)]
    struct Out {
        queries: Vec<Vec<Vec<f32>>>,
        documents: Vec<Vec<Vec<f32>>>,
        scores: Vec<Vec<f32>>,
    }
    let out: Out = serde_json::from_slice(&line).unwrap();
    PylateOutput {
        queries: out.queries.iter().map(|m| rows(m)).collect(),
        documents: out.documents.iter().map(|m| rows(m)).collect(),
        scores: rows(&out.scores),
    }
}

/// The largest difference between PyLate's per-text token matrices and a
/// token representation's real rows; infinite when a text's token count
/// differs.
fn token_diff(rep: &gradcache::Representation, theirs: &[Tensor]) -> f64 {
    let gradcache::Representation::Tokens { tokens, mask } = rep else { panic!("not a token representation") };
    let mut worst = 0.0f64;
    for (i, t) in theirs.iter().enumerate() {
        let keep = mask.get(i as i64).nonzero().squeeze_dim(1);
        let ours = tokens.get(i as i64).index_select(0, &keep);
        if ours.size() != t.size() {
            eprintln!("text {i}: {:?} token vectors here, {:?} in PyLate", ours.size(), t.size());
            return f64::INFINITY;
        }
        worst = worst.max(max_diff(&ours, t));
    }
    worst
}

/// A MaxSim bundle exported with `--format pylate` is read by PyLate 1.6's
/// `ColBERT` with the token vectors and scores gradcache computes: an
/// XLM-R (tokenizer.json, RoBERTa positions) with a fresh 16-wide
/// projection, and MiniLM without one (an identity Dense). The exported
/// settings matter: with PyLate's default query expansion the same weights
/// give other query vectors, which this comparison sees. Bundles PyLate
/// cannot express are typed errors.
#[test]
fn pylate_reads_a_maxsim_export() {
    let _serial = serial();
    let fx = fixtures();
    let work = fx.dir.join("pylate");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    // PyLate 1.6 runs on sentence-transformers 5.3, which strips a text's
    // leading and trailing whitespace before tokenizing (5.7 and gradcache
    // do not; docs/models.md): compare on stripped texts.
    let texts: &Vec<String> = &fx.reference.texts.iter().map(|t| t.trim().to_string()).collect();
    let maxsim = |projection| ModelConfig {
        encoder: TextEncoderConfig { pooling: Some(Pooling::Tokens), normalize: Some(true), projection, ..Default::default() },
        head: HeadConfig::MaxSim,
        ..cosine_bundle_config()
    };
    for (name, projection, width) in [("xlmr", Some(16), 16), ("minilm", None, 384)] {
        tch::manual_seed(5);
        let scorer = Scorer::from_pretrained(maxsim(projection), &ModelDir::open(model_path(name)).unwrap(), Device::Cpu).unwrap();
        let bundle = work.join(format!("{name}-bundle"));
        scorer.save(&bundle).unwrap();
        let out = work.join(format!("{name}-pylate"));
        let printed = run(&["export", "--model", bundle.to_str().unwrap(), "--format", "pylate", "--output", out.to_str().unwrap()]);
        assert!(printed.contains("Transformer -> Dense") && printed.contains(&format!("token vectors of width {width}")), "{printed}");
        let theirs = pylate_encode(&out, texts);
        let (q, p) = (scorer.encode_queries(texts).unwrap(), scorer.encode_passages(texts).unwrap());
        let (dq, dp) = (token_diff(&q, &theirs.queries), token_diff(&p, &theirs.documents));
        assert!(dq < 1e-5 && dp < 1e-5, "{name}: PyLate's token vectors differ: queries {dq:e}, documents {dp:e}");
        let ds = max_diff(&scorer.score_representations(&q, &p).unwrap(), &theirs.scores);
        assert!(ds < 1e-4, "{name}: PyLate's MaxSim scores differ by {ds:e}");
        eprintln!("{name}: PyLate against gradcache, max |Δ|: query tokens {dq:.1e}, document tokens {dp:.1e}, MaxSim scores {ds:.1e}");

        if name == "xlmr" {
            // Without `do_query_expansion: false` PyLate pads each query to
            // `query_length` with mask tokens whose vectors join MaxSim
            // (ColBERT's query expansion): other vectors from the same weights.
            let defaults = work.join("xlmr-pylate-expanding");
            copy_dir(&out, &defaults);
            let config = defaults.join("config_sentence_transformers.json");
            let edited = std::fs::read_to_string(&config).unwrap().replace("\"do_query_expansion\": false,", "");
            std::fs::write(&config, edited).unwrap();
            let other = pylate_encode(&defaults, texts);
            assert!(token_diff(&q, &other.queries) > 1e-3, "PyLate's query expansion was not detected");
            assert!(token_diff(&p, &other.documents) < 1e-5, "documents do not expand");
        }
    }
    // Bundles PyLate cannot express.
    let model = ModelDir::open(model_path("xlmr")).unwrap();
    let cases = [
        ("cosine", cosine_bundle_config(), "pools one vector"),
        ("untied", ModelConfig { tied: false, ..maxsim(None) }, "not tied"),
        (
            "unnormalised",
            ModelConfig { encoder: TextEncoderConfig { normalize: Some(false), ..maxsim(None).encoder }, ..maxsim(None) },
            "normalises",
        ),
    ];
    for (name, config, reason) in cases {
        let scorer = Scorer::from_pretrained(config, &model, Device::Cpu).unwrap();
        let err =
            gradcache::app::export::export(&scorer, ExportFormat::Pylate, gradcache::error::Side::Passages, &work.join(name)).unwrap_err();
        assert!(matches!(err, AppError::UnsupportedExport { format: "pylate", .. }) && err.to_string().contains(reason), "{name}: {err}");
        assert!(!work.join(name).exists(), "{name}: a refused export left a folder");
    }
    let scorer = Scorer::from_pretrained(maxsim(None), &model, Device::Cpu).unwrap();
    let err =
        gradcache::app::export::export(&scorer, ExportFormat::SentenceTransformers, gradcache::error::Side::Passages, &work.join("st"))
            .unwrap_err();
    assert!(err.to_string().contains("--format pylate"), "{err}");
}

/// The FLOP count of each family (what the step's achieved rates are
/// computed from) against torch.utils.flop_counter over transformers' own
/// model of the same folder (eager attention), forward only: XLM-R (the
/// BERT layout) and ModernBERT, whose gated feed-forward layer is 1.5× as
/// dear per width, at a length under ModernBERT's local window.
#[test]
fn encoder_flops_match_torchs_flop_counter_for_each_family() {
    let script = r#"
import json, sys, torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModel
m = AutoModel.from_pretrained(sys.argv[1], attn_implementation="eager").eval()
n, L = json.loads(sys.argv[2])
ids = torch.ones(n, L, dtype=torch.long)
with torch.no_grad(), FlopCounterMode(display=False) as fc:
    m(input_ids=ids, attention_mask=torch.ones_like(ids))
print(json.dumps(fc.get_total_flops()))
"#;
    let (n, len) = (3usize, 12usize);
    for name in ["xlmr", "modernbert"] {
        let model = ModelDir::open(model_path(name)).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let enc = token_encoder(&vs, &model, BertImplementation::Fused);
        let output = Command::new(python())
            .args(["-c", script, model_path(name).to_str().unwrap(), &serde_json::to_string(&(n, len)).unwrap()])
            .output()
            .unwrap();
        assert!(output.status.success(), "{name}: python failed: {}", String::from_utf8_lossy(&output.stderr));
        let torch: f64 = serde_json::from_slice(output.stdout.rsplit(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap()).unwrap();
        let ids = Tensor::ones([n as i64, len as i64], (Kind::Int64, Device::Cpu));
        let ours = enc.forward_flops(&gradcache::TokenBatch::new(ids.shallow_clone(), ids.ones_like()).unwrap()).unwrap();
        // transformers' XLM-R has a pooler (2·n·d² more), gradcache's not.
        let pooler = if name == "xlmr" { 2.0 * (n * model.architecture().hidden_size().pow(2)) as f64 } else { 0.0 };
        // torch also counts ModernBERT's rotary tables (an outer product of
        // positions and frequencies, a few hundred FLOPs): 1e-3 relative,
        // where a wrong feed-forward width would be 20% off.
        assert!((ours + pooler - torch).abs() <= 1e-3 * torch, "{name}: ours {ours:e} (+ pooler {pooler:e}), torch {torch:e}");
    }
}
