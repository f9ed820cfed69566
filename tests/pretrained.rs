//! MiniLM through rust-bert: parity with Hugging Face transformers, export
//! that transformers loads, exactness of the two-cache step through a real
//! transformer with dropout, and typed errors for broken model folders.
//!
//! Needs `scripts/gradcache.sh setup` (the model files and `.python`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::serial;
use gradcache::models::encoders::{BertImplementation, Pooling, TextEncoder, TextEncoderConfig};
use gradcache::models::heads::MlpHeadConfig;
use gradcache::models::pretrained::ModelDir;
use gradcache::{Encoder, GradCacheError};
use serde::Deserialize;
use tch::{nn, Device, Kind, Tensor};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn minilm() -> ModelDir {
    let dir = repo().join(gradcache::models::pretrained::EMBEDDED_MODEL_DIR);
    ModelDir::open(&dir).unwrap_or_else(|e| panic!("{e}: run scripts/gradcache.sh setup first"))
}

#[derive(Deserialize)]
struct Fixture {
    sentences: Vec<String>,
    ids: Vec<Vec<i64>>,
    embeddings: Vec<Vec<f32>>,
}

fn fixture() -> Fixture {
    let text = std::fs::read_to_string(repo().join("tests/fixtures/minilm_parity.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

const IMPLEMENTATIONS: [BertImplementation; 2] = [BertImplementation::Fused, BertImplementation::RustBert];

fn encoder_with(vs: &nn::VarStore, model: &ModelDir, implementation: BertImplementation) -> TextEncoder {
    let config = TextEncoderConfig { implementation, pooling: Some(Pooling::Mean), projection: None, normalize: Some(true) };
    let (enc, report) = config.init_pretrained(vs, "encoder", model).unwrap();
    assert_eq!(report.loaded, 101, "every BERT body tensor is loaded");
    enc
}

fn encoder(vs: &nn::VarStore, model: &ModelDir) -> TextEncoder {
    encoder_with(vs, model, BertImplementation::Fused)
}

fn embed(enc: &TextEncoder, model: &ModelDir, sentences: &[String]) -> Tensor {
    let batch = model.tokenizer(128).unwrap().encode(sentences).unwrap();
    tch::no_grad(|| enc.encode(&batch, false).unwrap()).tensor().shallow_clone()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Parity with transformers. The reference is tests/fixtures/minilm_parity.json,
/// written by `./.python tests/fixtures/make_minilm_parity.py` (torch 2.4.0,
/// transformers 4.44.2): `AutoModel` last_hidden_state, mean over the attention
/// mask, `F.normalize`.
#[test]
fn minilm_matches_transformers() {
    let _serial = serial();
    let fx = fixture();
    let model = minilm();
    let batch = model.tokenizer(128).unwrap().encode(&fx.sentences).unwrap();
    for (i, want) in fx.ids.iter().enumerate() {
        let len = want.len() as i64;
        let got = Vec::<i64>::try_from(batch.ids().get(i as i64).narrow(0, 0, len)).unwrap();
        assert_eq!(&got, want, "token ids of {:?}", fx.sentences[i]);
        assert_eq!(batch.mask().get(i as i64).sum(Kind::Int64).int64_value(&[]), len);
    }
    let flat: Vec<f32> = fx.embeddings.concat();
    let want = Tensor::from_slice(&flat).view([fx.sentences.len() as i64, 384]);
    for implementation in IMPLEMENTATIONS {
        let vs = nn::VarStore::new(Device::Cpu);
        let enc = encoder_with(&vs, &model, implementation);
        // MiniLM's file has 104 tensors: the 101 of the body, BERT's position_ids
        // buffer, and the pooler, which sentence embeddings do not use.
        let report = model.load_weights(&vs, enc.body_prefix()).unwrap();
        assert_eq!(report.unused, ["embeddings.position_ids", "pooler.dense.bias", "pooler.dense.weight"]);
        let got = embed(&enc, &model, &fx.sentences);
        let diff = max_diff(&got, &want);
        assert!(diff < 1e-5, "{implementation:?}: max |Δ| = {diff:e}");
    }
}

/// Exports a changed encoder, reads it back with Rust and with transformers.
#[test]
fn exported_encoder_loads_in_rust_and_in_transformers() {
    let _serial = serial();
    let fx = fixture();
    let model = minilm();
    let vs = nn::VarStore::new(Device::Cpu);
    let enc = encoder(&vs, &model);
    // Change the weights, as training would.
    tch::manual_seed(0);
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if name.contains("attention.self.query.weight") {
                let _ = var.f_add_(&(var.randn_like() * 0.05)).unwrap();
            }
        }
    });
    let trained = embed(&enc, &model, &fx.sentences);
    let out = std::env::temp_dir().join(format!("gradcache-export-{}", std::process::id()));
    model.export(&vs, enc.body_prefix(), &out).unwrap();

    // Rust: a fresh store from the exported folder.
    let exported = ModelDir::open(&out).unwrap();
    let vs2 = nn::VarStore::new(Device::Cpu);
    let enc2 = encoder(&vs2, &exported);
    let original = embed(&encoder(&nn::VarStore::new(Device::Cpu), &model), &model, &fx.sentences);
    assert!(max_diff(&trained, &original) > 1e-3, "the weight change did not change the embeddings");
    assert!(max_diff(&embed(&enc2, &exported, &fx.sentences), &trained) < 1e-6);

    // transformers: AutoModel on the folder, mean pooling, normalise.
    let script = r#"
import json, sys, torch
from transformers import AutoModel, AutoTokenizer
path, sentences = sys.argv[1], json.loads(sys.argv[2])
tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
b = tok(sentences, padding=True, return_tensors="pt")
with torch.no_grad():
    h = model(**b).last_hidden_state
m = b["attention_mask"].unsqueeze(-1).float()
e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
print(json.dumps(e.tolist()))
"#;
    let python = repo().join(".python");
    let output = Command::new(&python)
        .args(["-c", script, out.to_str().unwrap(), &serde_json::to_string(&fx.sentences).unwrap()])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/gradcache.sh setup", python.display()));
    assert!(output.status.success(), "python failed: {}", String::from_utf8_lossy(&output.stderr));
    let rows: Vec<Vec<f32>> = serde_json::from_slice(output.stdout.rsplit(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap()).unwrap();
    let theirs = Tensor::from_slice(&rows.concat()).view([fx.sentences.len() as i64, 384]);
    let diff = max_diff(&theirs, &trained);
    assert!(diff < 1e-5, "transformers sees other embeddings: max |Δ| = {diff:e}");
    std::fs::remove_dir_all(&out).unwrap();
}

/// The two-cache step through a real 6-layer transformer with its dropout
/// (0.1 on hidden states and attention), in f64, for both implementations.
#[test]
fn two_cache_step_is_exact_through_minilm_with_dropout() {
    let _serial = serial();
    for implementation in IMPLEMENTATIONS {
        exact_through_minilm(implementation);
    }
}

fn exact_through_minilm(implementation: BertImplementation) {
    let model = minilm();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let config = TextEncoderConfig { implementation, pooling: Some(Pooling::Mean), projection: Some(32), normalize: Some(true) };
    let (enc, _) = config.init_pretrained(&vs, "encoder", &model).unwrap();
    let head = MlpHeadConfig { dim: 32, hidden: 16, dropout: 0.1, residual: None }.init(&(vs.root() / "head")).unwrap();
    vs.double();
    let tok = model.tokenizer(16).unwrap();
    let queries = ["a bank of a river", "money in the bank", "to bank a plane", "a bank of switches"];
    let context = format!("MiniLM ({implementation:?}) + MLP head, f64, dropout 0.1");
    common::assert_exact_through_text_encoder(&vs, &enc, &head, &tok, queries, &context);
}

fn broken_copy(name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let src = minilm().root().to_path_buf();
    let dir = std::env::temp_dir().join(format!("gradcache-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "vocab.txt", "model.safetensors"] {
        let target = dir.join(f);
        let _ = std::fs::remove_file(&target);
        std::os::unix::fs::symlink(src.join(f), &target).unwrap();
    }
    edit(&dir);
    dir
}

#[test]
fn broken_model_folders_give_typed_errors() {
    let _serial = serial();
    let missing = broken_copy("missing", |d| std::fs::remove_file(d.join("vocab.txt")).unwrap());
    assert!(matches!(ModelDir::open(&missing), Err(GradCacheError::Io { path, .. }) if path.ends_with("tokenizer.json")));

    let bad_json = broken_copy("badjson", |d| {
        std::fs::remove_file(d.join("config.json")).unwrap();
        std::fs::write(d.join("config.json"), "{ not json").unwrap();
    });
    assert!(matches!(ModelDir::open(&bad_json), Err(GradCacheError::Json { .. })));

    let wider = broken_copy("wider", |d| {
        let text = std::fs::read_to_string(minilm().root().join("config.json")).unwrap();
        std::fs::remove_file(d.join("config.json")).unwrap();
        std::fs::write(d.join("config.json"), text.replace("\"hidden_size\": 384", "\"hidden_size\": 768")).unwrap();
    });
    let vs = nn::VarStore::new(Device::Cpu);
    let err = TextEncoderConfig::default().init_pretrained(&vs, "enc", &ModelDir::open(&wider).unwrap()).unwrap_err();
    assert!(matches!(err, GradCacheError::WeightShape { .. }), "{err}");

    let deeper = broken_copy("deeper", |d| {
        let text = std::fs::read_to_string(minilm().root().join("config.json")).unwrap();
        std::fs::remove_file(d.join("config.json")).unwrap();
        std::fs::write(d.join("config.json"), text.replace("\"num_hidden_layers\": 6", "\"num_hidden_layers\": 7")).unwrap();
    });
    let vs = nn::VarStore::new(Device::Cpu);
    let err = TextEncoderConfig::default().init_pretrained(&vs, "enc", &ModelDir::open(&deeper).unwrap()).unwrap_err();
    match err {
        GradCacheError::MissingWeights { missing, .. } => assert!(missing.iter().all(|m| m.starts_with("encoder.layer.6.")), "{missing:?}"),
        other => panic!("expected missing weights, got {other}"),
    }

    let garbage = broken_copy("garbage", |d| {
        std::fs::remove_file(d.join("model.safetensors")).unwrap();
        std::fs::write(d.join("model.safetensors"), b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}").unwrap();
    });
    let vs = nn::VarStore::new(Device::Cpu);
    assert!(TextEncoderConfig::default().init_pretrained(&vs, "enc", &ModelDir::open(&garbage).unwrap()).is_err());
    for d in [missing, bad_json, wider, deeper, garbage] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// Control for the exactness test above: dropout (including SDPA's own) is
/// active in train mode, and replayed by re-seeding.
#[test]
fn fused_encoder_dropout_acts_in_train_mode_and_replays() {
    let _serial = serial();
    let model = minilm();
    let vs = nn::VarStore::new(Device::Cpu);
    let enc = encoder(&vs, &model);
    let batch = model.tokenizer(16).unwrap().encode(&["a bank of a river", "money"]).unwrap();
    let run = |seed| {
        tch::manual_seed(seed);
        tch::no_grad(|| enc.encode(&batch, true).unwrap()).tensor().shallow_clone()
    };
    assert!(max_diff(&run(1), &run(2)) > 1e-3);
    assert_eq!(max_diff(&run(1), &run(1)), 0.0);
}

/// Configs name the implementation in snake case; a config without the field
/// gets the fused layers (the default since they matched transformers' speed,
/// docs/encoder-speed.md), and configs written before that, which say
/// `rust_bert`, keep reading as rust-bert.
#[test]
fn implementation_names_in_configs() {
    let parse = |json: &str| serde_json::from_str::<TextEncoderConfig>(json).map(|c| c.implementation);
    assert_eq!(parse(r#"{"implementation": "rust_bert"}"#).unwrap(), BertImplementation::RustBert);
    assert_eq!(parse(r#"{"implementation": "fused"}"#).unwrap(), BertImplementation::Fused);
    assert_eq!(parse("{}").unwrap(), BertImplementation::Fused);
    assert!(parse(r#"{"implementation": "eager"}"#).is_err());
}

/// The encoder's FLOP count (what the step's achieved rates are computed
/// from) against PyTorch's own counter, `torch.utils.flop_counter` over
/// transformers' MiniLM (eager attention, no pooler), forward and backward,
/// at a long and a short padded length (at 128 tokens attention is 5% of
/// the work, so a count that left it out would fail here).
#[test]
fn encoder_flops_match_torchs_flop_counter() {
    let model = minilm();
    let vs = nn::VarStore::new(Device::Cpu);
    let enc = encoder(&vs, &model);
    let script = r#"
import json, sys, torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModel
m = AutoModel.from_pretrained(sys.argv[1], add_pooling_layer=False, attn_implementation="eager").train()
out = []
for n, L in json.loads(sys.argv[2]):
    ids = torch.ones(n, L, dtype=torch.long)
    with FlopCounterMode(display=False) as fc:
        h = m(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        forward = fc.get_total_flops()
        h.sum().backward()
    out.append([forward, fc.get_total_flops()])
print(json.dumps(out))
"#;
    let shapes = [(3usize, 128usize), (5, 16)];
    let python = repo().join(".python");
    let output = Command::new(&python)
        .args(["-c", script, model.root().to_str().unwrap(), &serde_json::to_string(&shapes).unwrap()])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/gradcache.sh setup", python.display()));
    assert!(output.status.success(), "python failed: {}", String::from_utf8_lossy(&output.stderr));
    let counted: Vec<(f64, f64)> = serde_json::from_slice(output.stdout.rsplit(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap()).unwrap();
    for (&(n, len), &(forward, with_backward)) in shapes.iter().zip(&counted) {
        let ids = Tensor::ones([n as i64, len as i64], (Kind::Int64, Device::Cpu));
        let batch = gradcache::TokenBatch::new(ids.shallow_clone(), ids.ones_like()).unwrap();
        let ours = enc.forward_flops(&batch).unwrap();
        assert!((ours - forward).abs() <= 1e-9 * forward, "{n} × {len}: ours {ours:e}, torch {forward:e}");
        let backward = with_backward - forward;
        assert!(
            (backward - gradcache::core::flops::BACKWARD_FACTOR * forward).abs() <= 1e-9 * forward,
            "{n} × {len}: backward {backward:e} vs forward {forward:e}"
        );
    }
}

/// Each head's FLOP count (what cost-sized blocks and the achieved rates
/// use) against torch.utils.flop_counter over the same computation written
/// in PyTorch: the interaction block (cross-attention from the query's
/// tokens to the passage's, self-attention of the first position, its
/// feed-forward layer and score), the MLP over pair features, MaxSim, the
/// poly-encoder and Mixture of Logits, at one block shape with padded token matrices.
#[test]
fn head_flops_match_torchs_flop_counter() {
    use gradcache::models::heads::{InteractionConfig, MaxSimHead, PolyEncoderConfig};
    use gradcache::{Representation, ScoringHead};
    let (a, b, lq, lp, d, h, f, hidden, codes) = (3usize, 5usize, 7usize, 11usize, 32usize, 4usize, 48usize, 24usize, 6usize);
    let script = r#"
import json, sys, torch
from torch.utils.flop_counter import FlopCounterMode
a, b, Lq, Lp, d, H, f, hidden, m = json.loads(sys.argv[1])
u, v, uv, vv = torch.randn(a, Lq, d), torch.randn(b, Lp, d), torch.randn(a, d), torch.randn(b, d)
lin = lambda x, o: x @ torch.randn(x.shape[-1], o) + torch.randn(o)
ln = lambda x: torch.nn.functional.layer_norm(x, x.shape[-1:])
def mh(q, k, val):
    split = lambda x: x.view(*x.shape[:-1], H, d // H).transpose(-3, -2)
    w = (split(q) @ split(k).transpose(-1, -2)).softmax(-1)
    ctx = w @ split(val)
    return ctx.transpose(-3, -2).reshape(*ctx.shape[:-3], ctx.shape[-2], d)
def count(fn):
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()
def interaction():
    q, k, val = lin(u, d).unsqueeze(1), lin(v, d).unsqueeze(0), lin(v, d).unsqueeze(0)
    x = ln(u.unsqueeze(1) + lin(mh(q, k, val), d))
    first = x[:, :, 0:1]
    x0 = ln(first + lin(mh(lin(first, d), lin(x, d), lin(x, d)), d))
    x0 = ln(x0 + lin(torch.nn.functional.gelu(lin(x0, f)), d))
    return lin(x0.squeeze(2), 1)
def mlp():
    hu, hv = uv @ torch.randn(d, hidden), vv @ torch.randn(d, hidden)
    ue, ve = uv.unsqueeze(1), vv.unsqueeze(0)
    pair = torch.cat([(ue - ve).abs(), ue * ve], 2) @ torch.randn(2 * d, hidden)
    return torch.nn.functional.gelu(pair + hu.unsqueeze(1) + hv.unsqueeze(0)) @ torch.randn(hidden, 1)
def maxsim():
    return torch.einsum("aqd,bpd->abqp", u, v).amax(3).sum(2)
def poly():
    c = torch.randn(m, d)
    qc = torch.einsum("amq,aqd->amd", torch.einsum("md,aqd->amq", c, u).softmax(-1), u)
    p = v.mean(1)
    w = torch.einsum("amd,bd->abm", qc, p).softmax(-1)
    return torch.einsum("abd,bd->ab", torch.einsum("abm,amd->abd", w, qc), p)
def mol(Pq=3, Px=2, c=5):
    K = Pq * Px
    f = torch.nn.functional.normalize(lin(uv, Pq * c).view(a, Pq, c), dim=-1)
    g = torch.nn.functional.normalize(lin(vv, Px * c).view(b, Px, c), dim=-1)
    logits = torch.einsum("aic,bjc->abij", f, g).reshape(a, b, K)
    z = lin(logits, K) + torch.nn.functional.silu(lin(uv, K))[:, None] * lin(vv, K)[None]
    return (z.softmax(-1) * logits).sum(-1)
print(json.dumps({"interaction": count(interaction), "mlp": count(mlp), "max_sim": count(maxsim), "poly": count(poly), "mol": count(mol)}))
"#;
    let python = repo().join(".python");
    let shape = serde_json::to_string(&[a, b, lq, lp, d, h, f, hidden, codes]).unwrap();
    let output = Command::new(&python)
        .args(["-c", script, &shape])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/gradcache.sh setup", python.display()));
    assert!(output.status.success(), "python failed: {}", String::from_utf8_lossy(&output.stderr));
    let torch: std::collections::HashMap<String, f64> =
        serde_json::from_slice(output.stdout.rsplit(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap()).unwrap();

    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let tokens = |n: usize, l: usize| {
        Representation::tokens(
            Tensor::zeros([n as i64, l as i64, d as i64], (Kind::Float, Device::Cpu)),
            &Tensor::ones([n as i64, l as i64], (Kind::Float, Device::Cpu)),
        )
        .unwrap()
    };
    let vectors = |n: usize| Representation::vector(Tensor::zeros([n as i64, d as i64], (Kind::Float, Device::Cpu))).unwrap();
    let (u, v) = (tokens(a, lq), tokens(b, lp));
    let interaction =
        InteractionConfig { dim: d, heads: h, ffn: f, residual: None, ..Default::default() }.init(&(&root / "interaction")).unwrap();
    let mlp = MlpHeadConfig { dim: d, hidden, residual: None, ..Default::default() }.init(&(&root / "mlp")).unwrap();
    let poly = PolyEncoderConfig { dim: d, codes, residual: None, ..Default::default() }.init(&(&root / "poly")).unwrap();
    let mol = gradcache::models::heads::MolHeadConfig {
        dim: d,
        query_components: 3,
        passage_components: 2,
        component_dim: 5,
        residual: None,
        ..Default::default()
    }
    .init(&(&root / "mol"))
    .unwrap();
    let ours = [
        ("interaction", interaction.score_flops(&u, &v)),
        ("mlp", mlp.score_flops(&vectors(a), &vectors(b))),
        ("max_sim", MaxSimHead.score_flops(&u, &v)),
        ("poly", poly.score_flops(&u, &v)),
        ("mol", mol.score_flops(&vectors(a), &vectors(b))),
    ];
    for (name, ours) in ours {
        let (ours, theirs) = (ours.unwrap(), torch[name]);
        assert!((ours - theirs).abs() <= 1e-9 * theirs, "{name}: ours {ours:e}, torch {theirs:e}");
    }
}
