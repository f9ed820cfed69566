//! A scoring head of your own, in one file: implement `ScoringHead`, let
//! `check_head` prove it exact under the two-cache step, then train with it.
//!
//!     cargo run --release --example custom_head

use anyhow::{ensure, Result};
use gradcache::app::train::optim::AdamW;
use gradcache::check::{check_head, Tolerance};
use gradcache::models::encoders::TinyEncoderConfig;
use gradcache::{GradCache, InfoNce, Representation, ScoringHead, StepConfig, Targets, TokenBatch};
use tch::{nn, Device, Kind, Tensor};

/// `s = ⟨dropout(u ⊙ g), v⟩ + β·‖u − v‖²`: a learned diagonal metric plus a
/// learned distance term. Dropout comes from libtorch's generator, so the
/// step can replay it.
struct GatedHead {
    gate: Tensor, // [d]
    beta: Tensor, // []
}

impl ScoringHead for GatedHead {
    /// queries `[a, d]`, passages `[b, d]` → `[a, b]`
    fn score(&self, queries: &Representation, passages: &Representation, train: bool) -> gradcache::Result<Tensor> {
        let (u, v) = (queries.tensor(), passages.tensor());
        let gated = u.f_mul(&self.gate)?.f_dropout(0.1, train)?;
        let dot = gated.f_matmul(&v.f_tr()?)?;
        let distance = u.f_unsqueeze(1)?.f_sub(&v.f_unsqueeze(0)?)?.f_square()?.f_sum_dim_intlist(2, false, u.kind())?;
        Ok(dot.f_add(&distance.f_mul(&self.beta)?)?) // [a, b]
    }
}

/// `n` random queries; passage 2i is query i with 30% of tokens replaced, 2i+1 is random.
fn batch(n: i64) -> Result<(TokenBatch, TokenBatch)> {
    let ids = |rows| Tensor::randint_low(1, 500, [rows, 12], (Kind::Int64, Device::Cpu));
    let q = ids(n);
    let positive = q.where_self(&Tensor::rand([n, 12], (Kind::Float, Device::Cpu)).ge(0.3), &ids(n));
    let passages = Tensor::stack(&[positive, ids(n)], 1).view([2 * n, 12]);
    let ones = |rows| Tensor::ones([rows, 12], (Kind::Int64, Device::Cpu));
    Ok((TokenBatch::new(q, ones(n))?, TokenBatch::new(passages, ones(2 * n))?))
}

fn main() -> Result<()> {
    let (before, after) = check_then_train()?;
    println!("held-out top-1: {before:.3} before training, {after:.3} after");
    Ok(())
}

/// Checks the head (an error unless exact), trains it; held-out top-1 before and after.
fn check_then_train() -> Result<(f64, f64)> {
    tch::manual_seed(0);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let encoder = TinyEncoderConfig { vocab_size: 500, max_len: 12, dim: 32, ..Default::default() }.init(&(vs.root() / "encoder"))?;
    let p = vs.root() / "head";
    let head = GatedHead { gate: p.ones("gate", &[32]), beta: p.zeros("beta", &[]) };
    let loss = InfoNce { temperature: 1.0, symmetric: false };
    let step = StepConfig {
        layout: gradcache::Layout { query_chunk_size: 8, passage_chunk_size: 8, head_block_queries: 8, head_block_passages: 16 },
        ..Default::default()
    };

    // 1. Check it, in f64, on a small batch cut into several chunks and blocks.
    vs.double();
    let mut gc = GradCache::tied(step.clone(), &encoder, &head, &loss)?;
    let (q, p) = batch(12)?;
    let report = check_head(&gc, &vs, &q, &p, &Targets::grouped(12, 24, 2)?, Tolerance::F64)?;
    print!("{report}");
    ensure!(report.passed(), "the head is not exact under the two-cache step");

    // 2. Train it: batch 128 with encoder chunks of 8.
    vs.float();
    let mut opt = AdamW::new(0.01);
    let (dev_q, dev_p) = batch(256)?;
    let top1 = |gc: &GradCache<_, _>| -> Result<f64> {
        let s = score_with(gc, &dev_q, &dev_p)?;
        let gold = Tensor::arange(256, (Kind::Int64, Device::Cpu)) * 2;
        Ok(s.argmax(1, false).eq_tensor(&gold).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]))
    };
    let before = top1(&gc)?;
    for i in 1..=100 {
        let (q, p) = batch(128)?;
        gradcache::check::zero_grads(&vs);
        let out = gc.step(&q, &p, &Targets::grouped(128, 256, 2)?)?;
        opt.step(&vs, 2e-3)?;
        if i % 25 == 0 {
            println!("step {i:>3}  loss {:.4}", out.loss);
        }
    }
    Ok((before, top1(&gc)?))
}

// `cargo test --all-targets` runs this: the example stays working.
#[test]
fn the_head_is_exact_and_learns() {
    let (before, after) = check_then_train().unwrap();
    assert!(after > before + 0.1, "top-1 {before:.3} -> {after:.3}");
}

/// The step's model scoring every query against every item of a corpus in
/// eval mode, cut as the step's layout cuts a batch.
fn score_with<QE: gradcache::Encoder + ?Sized, PE: gradcache::Encoder + ?Sized>(
    gc: &GradCache<'_, QE, PE>,
    queries: &QE::Input,
    corpus: &PE::Input,
) -> Result<tch::Tensor, gradcache::AppError> {
    let (model, config) = (gc.parts(), gc.config());
    gradcache::app::eval::score_corpus(
        model.query_encoder,
        model.passage_encoder,
        model.head,
        &config.layout,
        config.precision,
        queries,
        corpus,
    )
}
