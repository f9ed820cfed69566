//! Mixed precision (`StepConfig.precision`): under bf16 autocast the
//! two-cache step must equal the full-batch step under the same autocast,
//! dropout on, and the replay check must still work. On the CPU here; the
//! device check (examples/device_check) repeats it on a GPU.
//!
//! The tolerance. Both steps run the same chunks through the same bf16
//! kernels from the same random streams, so their forward values are
//! identical; what differs is how gradients are summed (per chunk and block
//! through the caches vs one backward). Those sums run in float32 (autocast
//! keeps accumulations and the loss in f32, and the step upcasts `S`), so
//! the two may differ by f32 rounding magnified by the bf16 values they
//! multiply: we allow 1e-3 of each parameter's largest gradient, and
//! require it to be under a tenth of what bf16 itself changes against f32
//! (so that "equal" means the two-cache step adds nothing comparable to the
//! precision's own error).

mod common;

use common::serial;
use gradcache::check::{zero_grads, GradientSnapshot, Tolerance};
use gradcache::core::head::ScoringHead;
use gradcache::models::encoders::{Pooling, TextEncoder, TextEncoderConfig};
use gradcache::models::heads::HeadConfig;
use gradcache::runtime::precision::Precision;
use gradcache::{GradCache, GradCacheError, InfoNce, StepConfig, Targets, TokenBatch};
use rust_bert::bert::BertConfig;
use tch::{nn, Device, Kind, Tensor};

const BF16_TOL: Tolerance = Tolerance { abs: 1e-7, rel: 1e-3 };

/// A 2-layer BERT of width 32 (dropout 0.1 on hidden states and attention)
/// and a head by name, from a fixed seed.
fn model(vs: &nn::VarStore, head: &str) -> (TextEncoder, Box<dyn ScoringHead>) {
    tch::manual_seed(5);
    let bert = BertConfig {
        hidden_size: 32,
        intermediate_size: 64,
        num_attention_heads: 2,
        num_hidden_layers: 2,
        vocab_size: 200,
        max_position_embeddings: 16,
        ..BertConfig::default()
    };
    let head = HeadConfig::named(head, 32, 0.1).unwrap();
    let pooling = if head.reads_tokens() { Pooling::Tokens } else { Pooling::Mean };
    let encoder = TextEncoderConfig { pooling: Some(pooling), ..Default::default() }
        .init_fresh(vs, "encoder", &gradcache::models::pretrained::Architecture::bert(bert, 1e-12))
        .unwrap();
    let head = head.init(&(vs.root() / "head")).unwrap();
    (encoder, head)
}

struct Batch {
    queries: TokenBatch,
    passages: TokenBatch,
    targets: Targets,
}

/// 6 queries of 7 tokens, 2 passages each of 12, some padding.
fn batch() -> Batch {
    tch::manual_seed(8);
    let tokens = |n: i64, len: i64| {
        let ids = Tensor::randint_low(5, 200, [n, len], (Kind::Int64, Device::Cpu));
        let lengths = Tensor::randint_low(len / 2, len + 1, [n, 1], (Kind::Int64, Device::Cpu));
        let mask = Tensor::arange(len, (Kind::Int64, Device::Cpu)).unsqueeze(0).lt_tensor(&lengths).to_kind(Kind::Int64);
        TokenBatch::new(ids * &mask, mask).unwrap()
    };
    Batch { queries: tokens(6, 7), passages: tokens(12, 12), targets: Targets::grouped(6, 12, 2).unwrap() }
}

fn config(precision: Precision) -> StepConfig {
    StepConfig {
        layout: gradcache::Layout { query_chunk_size: 2, passage_chunk_size: 5, head_block_queries: 4, head_block_passages: 5 },
        precision,
        ..StepConfig::default()
    }
}

/// One step's loss and gradients: two-cache, or the full-batch step.
fn run(head: &str, config: StepConfig, full: bool) -> gradcache::Result<(f64, GradientSnapshot)> {
    let vs = nn::VarStore::new(Device::Cpu);
    let (encoder, head) = model(&vs, head);
    let b = batch();
    let loss = InfoNce { temperature: 0.1, symmetric: false };
    let mut gc = GradCache::tied(config, &encoder, head.as_ref(), &loss)?;
    zero_grads(&vs);
    tch::manual_seed(99);
    let out = if full { gc.full_batch_step(&b.queries, &b.passages, &b.targets)? } else { gc.step(&b.queries, &b.passages, &b.targets)? };
    Ok((out.loss, GradientSnapshot::take(&vs)?))
}

#[test]
fn bf16_two_cache_equals_the_full_batch_under_the_same_autocast() {
    let _serial = serial();
    for head in HeadConfig::NAMES {
        let (cached_loss, cached) = run(head, config(Precision::Bf16), false).unwrap();
        let (full_loss, full) = run(head, config(Precision::Bf16), true).unwrap();
        let (f32_loss, f32_full) = run(head, config(Precision::F32), true).unwrap();
        let step_error = cached.compare(&full).unwrap();
        let (step_distance, precision_distance) = (cached.relative_distance(&full).unwrap(), full.relative_distance(&f32_full).unwrap());
        eprintln!(
            "{head}: two-cache vs full batch under bf16: loss {:.2e}, gradients {step_distance:.2e}; bf16 vs f32: loss {:.2e}, gradients {precision_distance:.2e}",
            (cached_loss - full_loss).abs(),
            (full_loss - f32_loss).abs(),
        );
        // Autocast did run in bf16: the full batch moved away from f32.
        assert!(precision_distance > 1e-3, "{head}: bf16 changed nothing against f32 ({precision_distance:.2e}): autocast is off");
        assert!((cached_loss - full_loss).abs() <= 1e-6 * full_loss.abs().max(1.0), "{head}: losses {cached_loss} vs {full_loss}");
        let failures = step_error.failures(BF16_TOL);
        assert!(failures.is_empty(), "{head}: two-cache vs full batch under bf16 beyond {BF16_TOL:?}:\n{step_error}");
        assert!(
            step_distance <= 0.1 * precision_distance,
            "{head}: the two-cache step's difference ({step_distance:.2e}) is not small against bf16's own ({precision_distance:.2e})"
        );
    }
}

#[test]
fn the_replay_check_catches_an_unreplayed_mask_under_bf16() {
    let _serial = serial();
    let vs = nn::VarStore::new(Device::Cpu);
    let (encoder, head) = model(&vs, "mlp");
    let b = batch();
    let loss = InfoNce { temperature: 0.1, symmetric: false };
    let gc = GradCache::tied(config(Precision::Bf16), &encoder, head.as_ref(), &loss).unwrap();
    tch::manual_seed(99);
    let seeds = gradcache::core::replay::ReplaySeeds::draw().unwrap();
    let plan = gradcache::core::plan::Plan::layout_of(gc.config(), &b.queries, &b.passages).unwrap();
    let mut reps = gc.representation_pass(&b.queries, &b.passages, &plan, &seeds).unwrap();
    let mut scores = gc.score_pass(&reps, &plan, &seeds).unwrap();
    let cache = gc.distance_gradient_cache(&scores, &b.targets).unwrap();
    // Replayed: passes.
    let grads = gc.head_pass(&reps, &mut scores, &cache, &plan, &seeds).unwrap().gradients;
    gc.encoder_pass(&b.queries, &b.passages, &mut reps, &grads, &plan, &seeds).unwrap();
    // Not replayed (other streams in the second passes): caught.
    let other = seeds.child(777);
    match gc
        .head_pass(&reps, &mut scores, &cache, &plan, &other)
        .and_then(|h| gc.encoder_pass(&b.queries, &b.passages, &mut reps, &h.gradients, &plan, &other))
    {
        Err(GradCacheError::ReplayMismatch { max_abs_diff, tolerance, .. }) => assert!(max_abs_diff > tolerance),
        other => panic!("expected a replay mismatch under bf16, got {other:?}"),
    }
}

#[test]
fn autocast_is_confined_to_the_step_and_f16_is_refused() {
    let _serial = serial();
    run("mlp", config(Precision::Bf16), false).unwrap();
    // After a bf16 step, a product outside it is f32 again.
    let x = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
    assert_eq!(x.mm(&x).kind(), Kind::Float);
    // Inside, it is bf16 (the autocast the step uses is really on).
    let inside = Precision::Bf16.run(|| Ok(x.mm(&x).kind())).unwrap();
    assert_eq!(inside, Kind::BFloat16);
    match run("mlp", config(Precision::F16), false) {
        Err(GradCacheError::InvalidConfig { field: "precision", .. }) => {}
        other => panic!("expected f16 to be refused, got {:?}", other.map(|r| r.0)),
    }
    let read: StepConfig = serde_json::from_str(r#"{"precision": "bf16"}"#).unwrap();
    assert_eq!(read.precision, Precision::Bf16);
    assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
    assert!("fp8".parse::<Precision>().is_err());
}

/// `Precision::casting_once` keeps autocast's cast of a weight across
/// regions: seen through the hazard its documentation names, a cast cached
/// without autograd reused by a region with autograd leaves the weight
/// without gradient. Without the scope each region casts afresh and the
/// gradient arrives. (The step never mixes grad modes in one scope:
/// `bf16_two_cache_equals_the_full_batch_under_the_same_autocast` fails
/// when it does.)
#[test]
fn casting_once_keeps_each_weights_cast_across_regions() {
    let _serial = serial();
    let w = Tensor::ones([4, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let x = Tensor::ones([2, 4], (Kind::Float, Device::Cpu));
    let two_regions = || -> gradcache::Result<Tensor> {
        let _ = tch::no_grad(|| Precision::Bf16.run(|| Ok(x.mm(&w))))?;
        let y = Precision::Bf16.run(|| Ok(x.mm(&w)))?;
        assert_eq!(y.kind(), Kind::BFloat16);
        Ok(y)
    };
    two_regions().unwrap().to_kind(Kind::Float).sum(Kind::Float).backward();
    assert!(w.grad().defined(), "separate regions cast afresh");
    let mut w_grad = w.grad();
    let _ = w_grad.zero_();
    let y = Precision::Bf16.casting_once(two_regions).unwrap();
    assert!(!y.requires_grad(), "one scope: the second region reused the first's cast (made without autograd)");
    // f32 has no cache: nothing changes.
    assert!(Precision::F32.casting_once(|| Ok(x.mm(&w))).unwrap().requires_grad());
}

/// `auto` reads the CPU's flags: bf16 with AMX or AVX-512 BF16, f32
/// without; it must be resolved before a step or a scorer runs.
#[test]
fn auto_chooses_bf16_where_the_cpu_has_bfloat16_units_and_must_be_resolved() {
    use gradcache::runtime::precision::{cpu_bf16_flag, PrecisionChoice};
    let amx = "processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n";
    let avx = "flags\t\t: fpu avx512f avx512_bf16\n";
    let none = "flags\t\t: fpu sse avx2 avx512f\n";
    assert_eq!(cpu_bf16_flag(amx), Some("amx_bf16"));
    assert_eq!(cpu_bf16_flag(avx), Some("avx512_bf16"));
    assert_eq!(cpu_bf16_flag(none), None);
    // A flag's name inside another is no match.
    assert_eq!(cpu_bf16_flag("flags\t: xamx_bf16y\n"), None);
    // This machine: what its /proc/cpuinfo says.
    let here = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|i| cpu_bf16_flag(&i).map(str::to_string));
    let choice = Precision::Auto.resolve(Device::Cpu);
    assert_eq!(choice.chosen, if here.is_some() { Precision::Bf16 } else { Precision::F32 }, "{choice}");
    assert!(choice.to_string().starts_with(choice.chosen.name()) && choice.to_string().contains("auto: CPU"), "{choice}");
    // Named precisions stay as asked.
    assert_eq!(
        Precision::F32.resolve(Device::Cpu),
        PrecisionChoice { asked: Precision::F32, chosen: Precision::F32, reason: String::new() }
    );
    assert_eq!("auto".parse::<Precision>().unwrap(), Precision::Auto);
    // Unresolved, it runs nowhere.
    assert!(Precision::Auto.run(|| Ok(())).is_err());
    let vs = nn::VarStore::new(Device::Cpu);
    let (encoder, head) = model(&vs, "mlp");
    let loss = InfoNce::default();
    assert!(matches!(
        GradCache::tied(config(Precision::Auto), &encoder, head.as_ref(), &loss),
        Err(GradCacheError::InvalidConfig { field: "precision", .. })
    ));
}
