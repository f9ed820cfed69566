//! The pieces the step is made of, each against a naive computation.

mod common;

use common::serial;
use gradcache::core::replay::ReplaySeeds;
use gradcache::error::ReplayStage;
use gradcache::models::heads::{MaxSimHead, MlpHeadConfig};
use gradcache::{Chunk, Representation, ScoringHead, TokenBatch};
use tch::{nn, Device, Kind, Tensor};

fn right_padded(lengths: &[i64], width: i64) -> TokenBatch {
    let n = lengths.len() as i64;
    let len = Tensor::from_slice(lengths).view([n, 1]);
    let mask = Tensor::arange(width, (Kind::Int64, Device::Cpu)).unsqueeze(0).lt_tensor(&len).to_kind(Kind::Int64);
    let ids = (Tensor::arange(n * width, (Kind::Int64, Device::Cpu)).view([n, width]) + 1) * &mask;
    TokenBatch::new(ids, mask).unwrap()
}

#[test]
fn token_chunks_drop_padding_no_item_uses() {
    let batch = right_padded(&[3, 1, 5, 2], 6);
    assert_eq!(batch.chunk(0, 2).unwrap().ids().size(), [2, 3]);
    assert_eq!(batch.chunk(1, 1).unwrap().ids().size(), [1, 1]);
    assert_eq!(batch.chunk(1, 3).unwrap().ids().size(), [3, 5]);
    // The kept columns are the original ones.
    let c = batch.chunk(2, 2).unwrap();
    assert!(c.ids().equal(&batch.ids().narrow(0, 2, 2).narrow(1, 0, 5)));
}

#[test]
fn concatenated_token_chunks_are_padded_with_masked_zeros() {
    let a = Representation::tokens(Tensor::ones([1, 2, 3], (Kind::Float, Device::Cpu)), &Tensor::ones([1, 2], (Kind::Int64, Device::Cpu)))
        .unwrap();
    let b = Representation::tokens(Tensor::ones([2, 4, 3], (Kind::Float, Device::Cpu)), &Tensor::ones([2, 4], (Kind::Int64, Device::Cpu)))
        .unwrap();
    let cat = Representation::cat(&[a, b]).unwrap();
    assert_eq!(cat.tensor().size(), [3, 4, 3]);
    let mask = cat.mask().unwrap();
    assert_eq!(Vec::<f32>::try_from(mask.narrow(0, 0, 1).flatten(0, -1)).unwrap(), [1.0, 1.0, 0.0, 0.0]);
    assert_eq!(cat.tensor().narrow(0, 0, 1).narrow(1, 2, 2).abs().sum(Kind::Float).double_value(&[]), 0.0);
    // Mixing kinds is an error, not a panic.
    let v = Representation::vector(Tensor::ones([1, 3], (Kind::Float, Device::Cpu))).unwrap();
    assert!(Representation::cat(&[v, cat]).is_err());
}

#[test]
fn seeds_replay_the_same_numbers_and_separate_streams() {
    let _serial = serial();
    let seeds = ReplaySeeds::from_base(42);
    let draw = |stream, index| {
        seeds.enter(stream, index);
        Tensor::randn([4], (Kind::Float, Device::Cpu))
    };
    assert!(draw(ReplayStage::QueryChunk, 3).equal(&draw(ReplayStage::QueryChunk, 3)));
    assert!(!draw(ReplayStage::QueryChunk, 3).equal(&draw(ReplayStage::QueryChunk, 4)));
    assert!(!draw(ReplayStage::QueryChunk, 0).equal(&draw(ReplayStage::PassageChunk, 0)));
    assert_ne!(seeds.seed(ReplayStage::HeadBlock, 0), ReplaySeeds::from_base(43).seed(ReplayStage::HeadBlock, 0));
    assert_ne!(seeds.child(0), seeds.child(1));
}

#[test]
fn maxsim_equals_the_explicit_double_loop() {
    let _serial = serial();
    tch::manual_seed(3);
    let (a, b, lq, lp, d) = (2, 3, 4, 5, 6);
    let u = Tensor::randn([a, lq, d], (Kind::Double, Device::Cpu));
    let v = Tensor::randn([b, lp, d], (Kind::Double, Device::Cpu));
    let mq = Tensor::from_slice(&[1i64, 1, 1, 0, 1, 1, 0, 0]).view([a, lq]);
    let mp = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0]).view([b, lp]);
    let s = MaxSimHead
        .score(&Representation::tokens(u.shallow_clone(), &mq).unwrap(), &Representation::tokens(v.shallow_clone(), &mp).unwrap(), false)
        .unwrap();
    for i in 0..a {
        for j in 0..b {
            let mut want = 0.0;
            for t in 0..lq {
                if mq.int64_value(&[i, t]) == 0 {
                    continue;
                }
                let mut best = f64::NEG_INFINITY;
                for k in 0..lp {
                    if mp.int64_value(&[j, k]) == 1 {
                        best = best.max(u.get(i).get(t).dot(&v.get(j).get(k)).double_value(&[]));
                    }
                }
                want += best;
            }
            assert!((s.double_value(&[i, j]) - want).abs() < 1e-12, "({i},{j}): {} vs {want}", s.double_value(&[i, j]));
        }
    }
}

#[test]
fn mlp_head_equals_the_feature_concatenation_it_decomposes() {
    let _serial = serial();
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let head = MlpHeadConfig { dim: 4, hidden: 7, dropout: 0.0, residual: None }.init(&(vs.root() / "head")).unwrap();
    let vars = vs.variables();
    let (w1, b1) = (&vars["head.first.weight"], &vars["head.first.bias"]);
    let (w2, b2) = (&vars["head.second.weight"], &vars["head.second.bias"]);
    let u = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
    let v = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
    let s = head
        .score(&Representation::vector(u.shallow_clone()).unwrap(), &Representation::vector(v.shallow_clone()).unwrap(), false)
        .unwrap();
    for i in 0..3 {
        for j in 0..5 {
            let (ui, vj) = (u.get(i), v.get(j));
            let features = Tensor::cat(&[&ui, &vj, &(&ui - &vj).abs(), &(&ui * &vj)], 0);
            let hidden = (w1.matmul(&features) + b1).gelu("none");
            let want = (w2.matmul(&hidden) + b2).double_value(&[0]);
            assert!((s.double_value(&[i, j]) - want).abs() < 1e-5, "({i},{j}): {} vs {want}", s.double_value(&[i, j]));
        }
    }
}

#[test]
fn head_configs_parse_by_kind_and_reject_unknown_fields() {
    use gradcache::models::heads::{HeadConfig, InteractionConfig};
    let c: HeadConfig = serde_json::from_str(r#"{"kind": "interaction", "dim": 32, "heads": 4}"#).unwrap();
    assert_eq!(c, HeadConfig::Interaction(InteractionConfig { dim: 32, heads: 4, ..InteractionConfig::default() }));
    assert!(c.reads_tokens());
    assert_eq!(serde_json::from_str::<HeadConfig>(r#"{"kind": "dot"}"#).unwrap(), HeadConfig::Dot);
    let err = serde_json::from_str::<HeadConfig>(r#"{"kind": "mlp", "dim": 8, "hiden": 4}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
    assert!(serde_json::from_str::<HeadConfig>(r#"{"kind": "nope"}"#).is_err());
    for kind in HeadConfig::KINDS {
        let c = HeadConfig::named(kind, 12, 0.1).unwrap();
        assert_eq!(serde_json::from_str::<HeadConfig>(&serde_json::to_string(&c).unwrap()).unwrap(), c, "{kind}");
    }
    assert!(HeadConfig::named("nope", 12, 0.1).is_err());
}

#[test]
fn layered_configs_keep_the_defaults_a_partial_block_does_not_name() {
    use gradcache::app::settings::layered;
    use gradcache::app::train::TrainConfig;
    use serde_json::json;
    // The documented defaults of a program: not the library's TrainConfig::default().
    let documented = TrainConfig { learning_rate: 3e-5, lr_multipliers: [("head".to_string(), 30.0)].into(), ..TrainConfig::default() };
    let defaults = json!({ "batch_size": 64, "train": documented, "head": {"kind": "mlp", "dim": 384, "hidden": 256} });
    let merged = layered(defaults.clone(), json!({ "train": { "checkpoint_every": 2 } }));
    let train: TrainConfig = serde_json::from_value(merged["train"].clone()).unwrap();
    assert_eq!(train, TrainConfig { checkpoint_every: 2, ..documented.clone() });
    // Deserializing the block alone is what loses the documented values (the bug this guards against).
    let alone: TrainConfig = serde_json::from_value(json!({ "checkpoint_every": 2 })).unwrap();
    assert_ne!(alone, TrainConfig { checkpoint_every: 2, ..documented.clone() });
    // Maps merge by key, values replace, null replaces.
    let merged =
        layered(defaults.clone(), json!({ "train": { "lr_multipliers": { "head.residual.gate": 300.0 }, "max_grad_norm": null } }));
    assert_eq!(merged["train"]["lr_multipliers"], json!({ "head": 30.0, "head.residual.gate": 300.0 }));
    assert_eq!(merged["train"]["max_grad_norm"], serde_json::Value::Null);
    assert_eq!(merged["batch_size"], json!(64));
    // Same head kind: fields merge. Another kind: the block replaces the default.
    assert_eq!(
        layered(defaults.clone(), json!({ "head": { "hidden": 512 } }))["head"],
        json!({ "kind": "mlp", "dim": 384, "hidden": 512 })
    );
    assert_eq!(layered(defaults, json!({ "head": { "kind": "cosine" } }))["head"], json!({ "kind": "cosine" }));
}

/// An encoder that scales its input by a weight and says each item costs 10
/// FLOPs: the step's FLOP accounting, checked by hand.
struct Counted(Tensor);

impl gradcache::Encoder for Counted {
    type Input = Tensor;
    fn encode(&self, input: &Tensor, _train: bool) -> gradcache::Result<gradcache::Representation> {
        gradcache::Representation::vector(input * &self.0)
    }
    fn forward_flops(&self, input: &Tensor) -> Option<f64> {
        Some(10.0 * input.size()[0] as f64)
    }
}

#[test]
fn the_step_counts_each_pass_flops_over_its_chunks_and_blocks() {
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let enc = Counted(vs.root().ones("w", &[4]));
    let (queries, passages) =
        (Tensor::randn([5, 4], (Kind::Float, tch::Device::Cpu)), Tensor::randn([7, 4], (Kind::Float, tch::Device::Cpu)));
    let targets = gradcache::Targets::from_positives(7, vec![vec![0], vec![1], vec![2], vec![3], vec![4]]).unwrap();
    let loss = gradcache::InfoNce { temperature: 0.5, symmetric: false };
    // Queries in chunks of 2 (2, 2, 1), passages of 3 (3, 3, 1); the first
    // query chunk retained (its encoder pass runs no second forward).
    let layout = gradcache::Layout { query_chunk_size: 2, passage_chunk_size: 3, head_block_queries: 2, head_block_passages: 3 };
    let memory = gradcache::core::config::MemoryConfig::Retain {
        retain: gradcache::core::config::RetainCounts { query_chunks: 1, ..Default::default() },
    };
    let config = gradcache::StepConfig { layout, memory, ..gradcache::StepConfig::default() };
    let mut gc = gradcache::GradCache::new(config, &enc, &enc, &gradcache::models::heads::DotHead, &loss).unwrap();
    let out = gc.step(&queries, &passages, &targets).unwrap();
    let f = out.flops;
    // Forward: 12 items × 10. Encoder pass: the 10 recomputed items again,
    // and a backward of twice every forward.
    assert_eq!((f.representation, f.encoder), (Some(120.0), Some(100.0 + 2.0 * 120.0)));
    // The dot product over every pair of the 2 × 3 blocks: 2 · 5 · 7 · 4;
    // closed form, so the head pass is its two products W·V and Wᵀ·U.
    assert_eq!((f.score, f.head), (Some(280.0), Some(560.0)));
    let f32 = gradcache::runtime::MatmulRate { gflops: 100.0, kind: tch::Kind::Float };
    let bf16 = gradcache::runtime::MatmulRate { gflops: 400.0, kind: tch::Kind::BFloat16 };
    assert!(
        out.describe_rates(Some(f32)).contains("encoder") && out.describe_rates(Some(f32)).ends_with("of a 100 GFLOP/s matmul"),
        "{}",
        out.describe_rates(Some(f32))
    );
    assert!(out.describe_rates(Some(bf16)).ends_with("of a 400 GFLOP/s bf16 matmul"), "{}", out.describe_rates(Some(bf16)));
}

/// `PerSide` reads and writes each side's own value, and maps both.
#[test]
fn per_side_values_are_read_and_written_by_side() {
    use gradcache::core::layout::{PerSide, Side, SIDES};
    let mut chunks = PerSide::new(vec![1, 2], vec![3]);
    chunks[Side::Passages].push(4);
    assert_eq!((&chunks[Side::Queries], &chunks[Side::Passages]), (&vec![1, 2], &vec![3, 4]));
    assert_eq!(chunks.clone().map(|c| c.len()), PerSide::new(2, 2));
    assert_eq!(PerSide::from_fn(|s| s == Side::Passages), PerSide::new(false, true));
    assert_eq!(SIDES.map(|s| chunks[s].iter().sum::<i32>()), [3, 7]);
}
