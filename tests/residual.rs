//! The residual start (`s = e^λ·base + α·Φ`, `α = 0`) and the interaction
//! block initialised from the encoder's top layer.

mod common;

use std::collections::BTreeMap;

use common::{serial, HeadKind, Model};
use gradcache::app::eval::{ReferenceResults, ReferenceRow};
use gradcache::models::encoders::{Pooling, TextEncoderConfig};
use gradcache::models::heads::{HeadConfig, InteractionConfig, InteractionInit, MlpHeadConfig, ResidualConfig};
use gradcache::{GradCacheError, InfoNce, Representation, StepConfig};
use rust_bert::bert::BertConfig;
use tch::{nn, Device, Kind, Tensor};

const D: usize = 16;

fn f64_max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// The encoders' cosine, written out here rather than taken from the crate.
fn cosine(u: &Tensor, v: &Tensor) -> Tensor {
    let un = u / u.norm_scalaropt_dim(2, [1], true);
    let vn = v / v.norm_scalaropt_dim(2, [1], true);
    un.matmul(&vn.tr())
}

/// ColBERT's MaxSim over L2-normalised tokens, by explicit loops over pairs
/// and query tokens (padding excluded on both sides).
fn maxsim_cos(u: &Tensor, mq: &Tensor, v: &Tensor, mp: &Tensor) -> Tensor {
    let (a, b) = (u.size()[0], v.size()[0]);
    let out = Tensor::zeros([a, b], (Kind::Double, Device::Cpu));
    for i in 0..a {
        for j in 0..b {
            let mut total = 0.0;
            for t in 0..u.size()[1] {
                if mq.double_value(&[i, t]) == 0.0 {
                    continue;
                }
                let ut = u.get(i).get(t);
                let ut = &ut / ut.norm();
                let mut best = f64::NEG_INFINITY;
                for k in 0..v.size()[1] {
                    if mp.double_value(&[j, k]) == 0.0 {
                        continue;
                    }
                    let vk = v.get(j).get(k);
                    best = best.max(ut.dot(&(&vk / vk.norm())).double_value(&[]));
                }
                if best.is_finite() {
                    total += best;
                }
            }
            let _ = out.get(i).get(j).fill_(total);
        }
    }
    out
}

fn vectors(n: i64) -> Representation {
    Representation::vector(Tensor::randn([n, D as i64], (Kind::Double, Device::Cpu))).unwrap()
}

fn token_rep(n: i64, len: i64) -> Representation {
    let lengths = Tensor::randint_low(1, len + 1, [n, 1], (Kind::Int64, Device::Cpu));
    let mask = Tensor::arange(len, (Kind::Int64, Device::Cpu)).unsqueeze(0).lt_tensor(&lengths);
    Representation::tokens(Tensor::randn([n, len, D as i64], (Kind::Double, Device::Cpu)), &mask).unwrap()
}

fn learned_heads(residual: Option<ResidualConfig>) -> Vec<HeadConfig> {
    let mut out = Vec::new();
    for kind in ["bilinear", "mlp", "weighted_max_sim", "poly", "interaction", "mol"] {
        let mut c = HeadConfig::named(kind, D, 0.3).unwrap();
        *c.residual_slot().expect("a learned head has a residual field") = residual.clone();
        out.push(c);
    }
    out
}

/// The largest difference between each learned head's scores (train mode,
/// dropout on) and its base, the scaled cosine or the scaled MaxSim.
fn distance_from_base(residual: Option<ResidualConfig>) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for config in learned_heads(residual) {
        tch::manual_seed(7);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let head = config.init(&(vs.root() / "head")).unwrap();
        vs.double();
        // The scale as initialised (ln 20 or ln 5, rounded to f32 when the
        // variable was created), so the comparison itself can be tight.
        let scale = match vs.variables().get("head.residual.log_scale") {
            Some(l) => l.exp().double_value(&[]),
            None => {
                if config.reads_tokens() {
                    5.0
                } else {
                    20.0
                }
            }
        };
        assert!((scale / if config.reads_tokens() { 5.0 } else { 20.0 } - 1.0).abs() < 1e-6, "initial scale {scale}");
        let diff = if config.reads_tokens() {
            let (q, p) = (token_rep(3, 5), token_rep(4, 6));
            let s = head.score(&q, &p, true).unwrap();
            let (Representation::Tokens { tokens: u, mask: mq }, Representation::Tokens { tokens: v, mask: mp }) = (&q, &p) else {
                unreachable!()
            };
            f64_max_diff(&s, &(maxsim_cos(u, mq, v, mp) * scale))
        } else {
            let (q, p) = (vectors(3), vectors(4));
            let s = head.score(&q, &p, true).unwrap();
            f64_max_diff(&s, &(cosine(q.tensor(), p.tensor()) * scale))
        };
        out.push((format!("{config:?}"), diff));
    }
    out
}

#[test]
fn every_learned_head_starts_as_its_base() {
    let _guard = serial();
    for (head, diff) in distance_from_base(Some(ResidualConfig::default())) {
        assert!(diff < 1e-12, "{head}: scores differ from the base by {diff:e} at step 0");
    }
}

#[test]
fn the_comparison_sees_a_head_that_does_not_start_as_its_base() {
    let _guard = serial();
    // Control: an open gate, and the residual start switched off.
    for residual in [Some(ResidualConfig { gate: 0.5, ..Default::default() }), None] {
        for (head, diff) in distance_from_base(residual.clone()) {
            assert!(diff > 1e-3, "{head} with {residual:?}: only {diff:e} from the base");
        }
    }
}

#[test]
fn at_step_0_only_the_gate_and_the_scale_get_gradients() {
    let _guard = serial();
    // The MLP head with the default residual start, dropout on.
    let mut model = Model::new(HeadKind::Mlp, true, Kind::Double, 0.2);
    let config = HeadConfig::Mlp(MlpHeadConfig { dim: D, hidden: 24, dropout: 0.2, residual: Some(ResidualConfig::default()) });
    model.head = config.init(&(model.vs.root() / "residual_mlp")).unwrap();
    model.vs.double();
    let loss = InfoNce { temperature: 0.5, symmetric: false };
    let data = common::data(6, 2, common::LossKind::InfoNce, 3);
    model
        .step(
            StepConfig {
                layout: gradcache::Layout { query_chunk_size: 4, passage_chunk_size: 5, head_block_queries: 4, head_block_passages: 5 },
                ..Default::default()
            },
            &loss,
        )
        .step(&data.queries, &data.passages, &data.targets)
        .unwrap();
    let vars = model.vs.variables();
    let grad_norm = |name: &str| vars[name].grad().norm().double_value(&[]);
    assert!(grad_norm("residual_mlp.residual.gate") > 0.0);
    assert!(grad_norm("residual_mlp.residual.log_scale") > 0.0);
    assert!(vars.keys().any(|k| k.starts_with("encoder.") && grad_norm(k) > 0.0), "the encoder gets no gradient");
    for name in ["residual_mlp.first.weight", "residual_mlp.first.bias", "residual_mlp.second.weight", "residual_mlp.second.bias"] {
        assert_eq!(grad_norm(name), 0.0, "{name} has a gradient while the gate is 0");
    }
}

#[test]
fn residual_configs_read_from_json() {
    let c: HeadConfig = serde_json::from_str(r#"{"kind": "mlp"}"#).unwrap();
    assert_eq!(c.residual(), Some(&ResidualConfig { base_scale: None, gate: 0.0 }));
    let c: HeadConfig = serde_json::from_str(r#"{"kind": "mlp", "residual": null}"#).unwrap();
    assert_eq!(c.residual(), None);
    let c: HeadConfig =
        serde_json::from_str(r#"{"kind": "interaction", "residual": {"base_scale": 2}, "init": "encoder_top_layer"}"#).unwrap();
    let HeadConfig::Interaction(i) = &c else { panic!("{c:?}") };
    assert_eq!((i.init, i.residual.as_ref().and_then(|r| r.base_scale)), (InteractionInit::EncoderTopLayer, Some(2.0)));
    assert!(serde_json::from_str::<HeadConfig>(r#"{"kind": "mlp", "residual": {"gait": 0}}"#).is_err());
    assert!(serde_json::from_str::<HeadConfig>(r#"{"kind": "interaction", "init": "bottom_layer"}"#).is_err());
    // Bad values are typed errors at init.
    let vs = nn::VarStore::new(Device::Cpu);
    let bad = HeadConfig::Mlp(MlpHeadConfig {
        dim: D,
        residual: Some(ResidualConfig { base_scale: Some(0.0), gate: 0.0 }),
        ..Default::default()
    });
    assert!(matches!(bad.init(&vs.root()), Err(GradCacheError::InvalidConfig { field: "residual.base_scale", .. })));
}

/// A 3-layer BERT of width `D` with 2 heads and fresh weights, token states out.
fn small_bert(vs: &nn::VarStore) -> gradcache::models::encoders::TextEncoder {
    let bert = BertConfig {
        hidden_size: D as i64,
        intermediate_size: 20,
        num_attention_heads: 2,
        num_hidden_layers: 3,
        vocab_size: 50,
        max_position_embeddings: 16,
        ..BertConfig::default()
    };
    TextEncoderConfig { pooling: Some(Pooling::Tokens), ..Default::default() }
        .init_fresh(vs, "encoder", &gradcache::models::pretrained::Architecture::bert(bert, 1e-12))
        .unwrap()
}

fn interaction(heads: usize, ffn: usize, init: InteractionInit) -> HeadConfig {
    HeadConfig::Interaction(InteractionConfig { dim: D, heads, ffn, dropout: 0.1, residual: Some(ResidualConfig::default()), init })
}

#[test]
fn interaction_block_starts_from_the_top_layer() {
    let _guard = serial();
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let encoder = small_bert(&vs);
    interaction(2, 20, InteractionInit::EncoderTopLayer).init_with_encoder(&vs, "head", &encoder).unwrap();
    let vars = vs.variables();
    let same = |a: &str, b: &str| f64_max_diff(&vars[a], &vars[b]) == 0.0;
    // Both attentions from the top layer's (layer 2 of 0..3) self-attention.
    for side in ["cross", "self"] {
        for (part, bert) in [("query", "self.query"), ("key", "self.key"), ("value", "self.value"), ("output", "output.dense")] {
            for p in ["weight", "bias"] {
                let (h, l) = (format!("head.{side}.{part}.{p}"), format!("encoder.bert.encoder.layer.2.attention.{bert}.{p}"));
                assert!(same(&h, &l), "{h} != {l}");
                assert!(!same(&format!("head.{side}.{part}.weight"), &format!("encoder.bert.encoder.layer.1.attention.{bert}.weight")));
            }
        }
        assert!(same(&format!("head.{side}_norm.weight"), "encoder.bert.encoder.layer.2.attention.output.LayerNorm.weight"));
    }
    assert!(same("head.ffn.up.weight", "encoder.bert.encoder.layer.2.intermediate.dense.weight"));
    assert!(same("head.ffn.down.bias", "encoder.bert.encoder.layer.2.output.dense.bias"));
    assert!(same("head.ffn_norm.bias", "encoder.bert.encoder.layer.2.output.LayerNorm.bias"));
    // A copy, not a shared tensor: training the head leaves the encoder alone.
    tch::no_grad(|| {
        let _ = vars["head.ffn.up.weight"].shallow_clone().fill_(0.25);
    });
    assert!(!same("head.ffn.up.weight", "encoder.bert.encoder.layer.2.intermediate.dense.weight"));

    // The random initialisation stays random.
    let vs2 = nn::VarStore::new(Device::Cpu);
    let encoder2 = small_bert(&vs2);
    interaction(2, 20, InteractionInit::Random).init_with_encoder(&vs2, "head", &encoder2).unwrap();
    let v2 = vs2.variables();
    assert!(f64_max_diff(&v2["head.ffn.up.weight"], &v2["encoder.bert.encoder.layer.2.intermediate.dense.weight"]) > 0.0);
}

#[test]
fn interaction_block_that_does_not_fit_the_layer_is_a_typed_error() {
    let _guard = serial();
    let vs = nn::VarStore::new(Device::Cpu);
    let encoder = small_bert(&vs);
    let top = InteractionInit::EncoderTopLayer;
    assert!(matches!(
        interaction(4, 20, top).init_with_encoder(&vs, "h1", &encoder),
        Err(GradCacheError::InvalidConfig { field: "heads", .. })
    ));
    match interaction(2, 24, top).init_with_encoder(&vs, "h2", &encoder) {
        Err(GradCacheError::LayerInit { reason, .. }) => assert!(reason.contains("h2.ffn.up.weight"), "{reason}"),
        Err(other) => panic!("expected LayerInit, got {other}"),
        Ok(_) => panic!("expected LayerInit, got a head"),
    }
    // Without the encoder, the layer initialisation cannot silently be skipped.
    assert!(matches!(interaction(2, 20, top).init(&(vs.root() / "h3")), Err(GradCacheError::InvalidConfig { field: "init", .. })));
}

#[test]
fn reference_results_compare_budgets() {
    let budget =
        |steps: u64| BTreeMap::from([("steps".to_string(), serde_json::json!(steps)), ("batch_size".to_string(), serde_json::json!(64))]);
    let r = ReferenceResults {
        budget: budget(100),
        command: "benchmarks/heads/compare.sh cosine".into(),
        rows: vec![ReferenceRow { name: "cosine".into(), seeds: 3, mean: BTreeMap::new(), sd: BTreeMap::new() }],
    };
    assert!(r.differences(&budget(100)).is_empty());
    assert_eq!(r.differences(&budget(50)), vec!["steps".to_string()]);
    let mut extra = budget(100);
    extra.insert("eval_split".into(), serde_json::json!("test"));
    assert_eq!(r.differences(&extra), vec!["eval_split".to_string()]);
    let dir = std::env::temp_dir().join(format!("gradcache-reference-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("baselines.json");
    std::fs::write(&path, serde_json::to_vec(&r).unwrap()).unwrap();
    assert_eq!(ReferenceResults::read(&path).unwrap(), r);
    std::fs::write(&path, b"{\"budget\": {}, \"rows\": []}").unwrap();
    assert!(matches!(ReferenceResults::read(&path), Err(gradcache::AppError::Core(GradCacheError::Json { .. }))));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The main job prints the committed baselines beside its own row only when
/// its budget is theirs: the default run's budget (what
/// `scripts/gradcache.sh train` runs) equals the one recorded in
/// docs/results/heads/baselines.json, so a new budget field that the
/// committed file lacks shows up here instead of silently dropping the
/// baseline rows from the README's output.
#[test]
fn the_main_jobs_budget_is_the_committed_baselines_budget() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: gradcache::cli::TrainArgs,
    }
    let config = Cli::try_parse_from(["train_reranker"]).unwrap().args.resolve().unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(config.baselines.as_ref().unwrap());
    let committed = ReferenceResults::read(&path).unwrap();
    assert_eq!(committed.differences(&config.budget()), Vec::<String>::new());
    // A run evaluated on other data is not comparable with them.
    let other = gradcache::app::recipe::RerankerConfig { eval_data: Some("my-dev".into()), ..config };
    assert_eq!(committed.differences(&other.budget()), vec!["eval_data".to_string()]);
}
