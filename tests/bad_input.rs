//! Every kind of bad input gets a typed error, never a panic, and never
//! leaves gradients written.

mod common;

use common::*;
use gradcache::check::{zero_grads, GradientSnapshot};
use gradcache::models::heads::{DotHead, MlpHeadConfig};
use gradcache::{
    ContrastiveLoss, GradCache, GradCacheError, InfoNce, ListwiseKl, Representation, ScoringHead, StepConfig, Targets, TokenBatch,
};
use tch::{Device, Kind, Tensor};

fn assert_no_gradient_written(model: &Model) {
    let snap = GradientSnapshot::take(&model.vs).unwrap();
    for p in snap.compare(&snap).unwrap().parameters {
        assert_eq!(p.reference_max_abs, 0.0, "{} received a gradient", p.name);
    }
}

#[test]
fn empty_batch() {
    let _serial = serial();
    let model = Model::new(HeadKind::Dot, true, Kind::Float, 0.0);
    let loss = InfoNce::default();
    let mut gc = model.step(StepConfig::default(), &loss);
    let empty = tokens(0, 4);
    let some = tokens(3, 4);
    let targets = Targets::grouped(3, 3, 1).unwrap();
    let err = gc.step(&empty, &some, &targets).unwrap_err();
    assert!(matches!(err, GradCacheError::EmptyBatch { side: gradcache::error::Side::Queries }), "{err}");
    let err = gc.step(&some, &empty, &targets).unwrap_err();
    assert!(matches!(err, GradCacheError::EmptyBatch { side: gradcache::error::Side::Passages }), "{err}");
    assert!(matches!(Targets::grouped(0, 0, 1), Err(GradCacheError::EmptyBatch { .. })));
    assert!(matches!(Targets::from_positives(0, vec![vec![0]]), Err(GradCacheError::EmptyBatch { .. })));
    assert!(matches!(Targets::from_positives(3, vec![]), Err(GradCacheError::EmptyBatch { .. })));
}

#[test]
fn zero_chunk_or_block_size() {
    let model = Model::new(HeadKind::Dot, true, Kind::Float, 0.0);
    let loss = InfoNce::default();
    for field in ["query_chunk_size", "passage_chunk_size", "head_block_queries", "head_block_passages"] {
        let mut config = StepConfig::default();
        match field {
            "query_chunk_size" => config.layout.query_chunk_size = 0,
            "passage_chunk_size" => config.layout.passage_chunk_size = 0,
            "head_block_queries" => config.layout.head_block_queries = 0,
            _ => config.layout.head_block_passages = 0,
        }
        let err = GradCache::tied(config, &model.query, model.head.as_ref(), &loss).err().unwrap();
        assert!(matches!(err, GradCacheError::InvalidConfig { field: f, .. } if f == field), "{err}");
        assert!(err.to_string().contains(field));
    }
    let bad = StepConfig { replay_tolerance: f64::NAN, ..StepConfig::default() };
    assert!(matches!(bad.validate(), Err(GradCacheError::InvalidConfig { field: "replay_tolerance", .. })));
}

#[test]
fn config_files_reject_unknown_fields_and_fill_defaults() {
    let parsed: StepConfig = serde_json::from_str(r#"{"query_chunk_size": 8}"#).unwrap();
    assert_eq!(
        parsed,
        StepConfig { layout: gradcache::Layout { query_chunk_size: 8, ..gradcache::Layout::default() }, ..StepConfig::default() }
    );
    let err = serde_json::from_str::<StepConfig>(r#"{"query_chunk_sise": 8}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn passage_count_that_does_not_fit_the_group_size() {
    let err = Targets::grouped(3, 7, 2).unwrap_err();
    assert!(matches!(err, GradCacheError::GroupMismatch { num_queries: 3, num_passages: 7, group_size: 2 }));
    assert!(err.to_string().contains("expected 6"), "{err}");
    assert!(matches!(Targets::grouped(3, 0, 0), Err(GradCacheError::GroupMismatch { .. })));
    assert!(matches!(Targets::grouped_with_positives(3, 6, 2, 3), Err(GradCacheError::InvalidConfig { .. })));
}

#[test]
fn targets_out_of_range_or_for_another_batch() {
    let _serial = serial();
    let err = Targets::from_positives(4, vec![vec![0], vec![4]]).unwrap_err();
    assert!(matches!(err, GradCacheError::TargetOutOfRange { query: 1, passage: 4, num_passages: 4 }), "{err}");
    let err = Targets::from_positives(4, vec![vec![0], vec![]]).unwrap_err();
    assert!(matches!(err, GradCacheError::NoPositive { query: 1 }), "{err}");

    let model = Model::new(HeadKind::Dot, true, Kind::Float, 0.0);
    let loss = InfoNce::default();
    let mut gc = model.step(StepConfig::default(), &loss);
    let data = data(3, 2, LossKind::InfoNce, 1);
    let wrong = Targets::grouped(4, 8, 2).unwrap();
    let err = gc.step(&data.queries, &data.passages, &wrong).unwrap_err();
    assert!(matches!(err, GradCacheError::TargetsMismatch { expected: 4, actual: 3, .. }), "{err}");
}

#[test]
fn teacher_scores_must_fit_and_be_finite() {
    let t = Targets::grouped(2, 6, 3).unwrap();
    let err = t.with_teacher_scores(Tensor::zeros([2, 2], (Kind::Float, Device::Cpu))).unwrap_err();
    assert!(matches!(err, GradCacheError::Shape { what: "teacher scores", .. }), "{err}");
    let t = Targets::grouped(2, 6, 3).unwrap();
    // Row 1 holds the infinity: the error names that query.
    let bad = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
    let _ = bad.get(1).get(2).fill_(f64::INFINITY);
    assert!(matches!(t.with_teacher_scores(bad), Err(GradCacheError::NonFiniteTeacherScores { query: 1 })));
    let free = Targets::from_positives(3, vec![vec![0]]).unwrap();
    assert!(matches!(
        free.with_teacher_scores(Tensor::zeros([1, 3], (Kind::Float, Device::Cpu))),
        Err(GradCacheError::TargetsIncomplete { .. })
    ));
    // Listwise KL without teacher scores.
    let scores = Tensor::zeros([2, 6], (Kind::Float, Device::Cpu));
    let err = ListwiseKl::default().loss(&scores, &Targets::grouped(2, 6, 3).unwrap()).unwrap_err();
    assert!(matches!(err, GradCacheError::TargetsIncomplete { what: "listwise KL", .. }), "{err}");
}

/// A head that adds one column too many.
struct WrongShape;
impl ScoringHead for WrongShape {
    fn score(&self, q: &Representation, p: &Representation, _train: bool) -> gradcache::Result<Tensor> {
        Ok(Tensor::zeros([q.len() as i64, p.len() as i64 + 1], (Kind::Float, Device::Cpu)))
    }
}

/// A head whose scores are NaN in blocks of exactly two passages.
struct NanInNarrowBlocks(DotHead);
impl ScoringHead for NanInNarrowBlocks {
    fn score(&self, q: &Representation, p: &Representation, train: bool) -> gradcache::Result<Tensor> {
        let s = self.0.score(q, p, train)?;
        Ok(if p.len() == 2 { s.f_div_scalar(0.0)?.f_mul_scalar(0.0)? } else { s })
    }
}

#[test]
fn head_with_wrong_shape_or_non_finite_scores() {
    let _serial = serial();
    let model = Model::new(HeadKind::Dot, true, Kind::Float, 0.0);
    let loss = InfoNce::default();
    let data = data(4, 2, LossKind::InfoNce, 1);
    let mut gc = GradCache::tied(StepConfig::default(), &model.query, &WrongShape, &loss).unwrap();
    let err = gc.step(&data.queries, &data.passages, &data.targets).unwrap_err();
    assert!(matches!(err, GradCacheError::HeadShape { queries: 4, passages: 8, .. }), "{err}");

    // Blocks of 2 × 3 over 4 × 8: column blocks 0..3, 3..6, 6..8; only the
    // last is two wide, so the first bad block is rows 0..2, columns 6..8.
    let config = StepConfig {
        layout: gradcache::Layout { head_block_queries: 2, head_block_passages: 3, ..gradcache::Layout::default() },
        ..StepConfig::default()
    };
    let nan_head = NanInNarrowBlocks(DotHead);
    let mut gc = GradCache::tied(config, &model.query, &nan_head, &loss).unwrap();
    zero_grads(&model.vs);
    let err = gc.step(&data.queries, &data.passages, &data.targets).unwrap_err();
    match err {
        GradCacheError::NonFiniteScores { queries, passages } => assert_eq!((queries, passages), (0..2, 6..8)),
        other => panic!("expected non-finite scores, got {other}"),
    }
    assert_no_gradient_written(&model);
}

/// A loss that is infinite.
struct InfiniteLoss;
impl ContrastiveLoss for InfiniteLoss {
    fn loss(&self, scores: &Tensor, _targets: &Targets) -> gradcache::Result<Tensor> {
        Ok(scores.f_sum(scores.kind())?.f_add_scalar(f64::INFINITY)?)
    }
}

#[test]
fn non_finite_loss_writes_no_gradient() {
    let _serial = serial();
    let model = Model::new(HeadKind::Mlp, false, Kind::Float, 0.1);
    let data = data(4, 2, LossKind::InfoNce, 1);
    let mut gc = model.step(StepConfig::default(), &InfiniteLoss);
    zero_grads(&model.vs);
    let err = gc.step(&data.queries, &data.passages, &data.targets).unwrap_err();
    assert!(matches!(err, GradCacheError::NonFiniteLoss { value } if value.is_infinite()), "{err}");
    assert_no_gradient_written(&model);
    let err = gc.full_batch_step(&data.queries, &data.passages, &data.targets).unwrap_err();
    assert!(matches!(err, GradCacheError::NonFiniteLoss { .. }), "{err}");
    assert_no_gradient_written(&model);
}

#[test]
fn bad_losses_and_temperatures() {
    let _serial = serial();
    assert!(matches!(InfoNce { temperature: 0.0, symmetric: false }.validate(), Err(GradCacheError::InvalidConfig { .. })));
    assert!(matches!(
        ListwiseKl { temperature: 1.0, teacher_temperature: -1.0 }.validate(),
        Err(GradCacheError::InvalidConfig { field: "teacher_temperature", .. })
    ));
    struct VectorLoss;
    impl ContrastiveLoss for VectorLoss {
        fn loss(&self, scores: &Tensor, _t: &Targets) -> gradcache::Result<Tensor> {
            Ok(scores.f_sum_dim_intlist(1, false, scores.kind())?)
        }
    }
    let model = Model::new(HeadKind::Dot, true, Kind::Float, 0.0);
    let data = data(4, 2, LossKind::InfoNce, 1);
    let mut gc = model.step(StepConfig::default(), &VectorLoss);
    let err = gc.step(&data.queries, &data.passages, &data.targets).unwrap_err();
    assert!(matches!(err, GradCacheError::LossShape { .. }), "{err}");
}

#[test]
fn representation_kinds_and_shapes() {
    let _serial = serial();
    // Dot and MLP heads need vectors; MaxSim needs tokens.
    let model = Model::new(HeadKind::MaxSim, true, Kind::Float, 0.0);
    let loss = InfoNce::default();
    let data = data(3, 2, LossKind::InfoNce, 1);
    let mut gc = GradCache::tied(StepConfig::default(), &model.query, &DotHead, &loss).unwrap();
    let err = gc.step(&data.queries, &data.passages, &data.targets).unwrap_err();
    assert!(matches!(err, GradCacheError::RepresentationKind { what: "DotHead", expected: "vector", got: "tokens" }), "{err}");

    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    let mlp = MlpHeadConfig { dim: DIM + 1, hidden: 4, dropout: 0.0, residual: None }.init(&vs.root()).unwrap();
    vs.float();
    let vec_model = Model::new(HeadKind::Dot, true, Kind::Float, 0.0);
    let mut gc = GradCache::tied(StepConfig::default(), &vec_model.query, &mlp, &loss).unwrap();
    let err = gc.step(&data.queries, &data.passages, &data.targets).unwrap_err();
    assert!(matches!(err, GradCacheError::Shape { what: "MlpHead input", .. }), "{err}");
    assert!(matches!(MlpHeadConfig { dropout: 1.0, ..MlpHeadConfig::default() }.validate(), Err(GradCacheError::InvalidConfig { .. })));

    assert!(matches!(Representation::vector(Tensor::zeros([2, 3, 4], (Kind::Float, Device::Cpu))), Err(GradCacheError::Shape { .. })));
    let mask = Tensor::ones([2, 5], (Kind::Int64, Device::Cpu));
    assert!(matches!(
        Representation::tokens(Tensor::zeros([2, 3, 4], (Kind::Float, Device::Cpu)), &mask),
        Err(GradCacheError::Shape { .. })
    ));
    let ids = Tensor::zeros([2, 3], (Kind::Int64, Device::Cpu));
    assert!(matches!(TokenBatch::new(ids.shallow_clone(), mask), Err(GradCacheError::Shape { what: "attention mask", .. })));
    let float_ids = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
    assert!(matches!(TokenBatch::new(float_ids, ids), Err(GradCacheError::Shape { what: "token ids", .. })));
}

#[test]
fn tokenizing_nothing_is_an_empty_input_not_an_empty_query_side() {
    let vocab = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(gradcache::models::pretrained::EMBEDDED_MODEL_DIR).join("vocab.txt");
    let tok = gradcache::models::text::TextTokenizer::from_vocab(&vocab, true, 16).unwrap();
    let none: [&str; 0] = [];
    assert!(matches!(tok.encode(&none), Err(GradCacheError::EmptyInput { what: "texts to tokenize" })));
}

#[test]
fn libtorch_errors_inside_heads_and_encoders_are_returned_not_panicked() {
    // Double-precision inputs against single-precision weights: libtorch
    // refuses the matmul. The interaction block and the tiny encoder used
    // to call the panicking `apply` there.
    use gradcache::models::encoders::{Pooling, TinyEncoderConfig};
    use gradcache::models::heads::InteractionConfig;
    use gradcache::{Encoder, Representation, ScoringHead};
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let head = InteractionConfig { dim: 8, heads: 2, ffn: 16, dropout: 0.0, residual: None, ..InteractionConfig::default() }
        .init(&(vs.root() / "head"))
        .unwrap();
    let mask = Tensor::ones([2, 3], (Kind::Int64, Device::Cpu));
    let u = Representation::tokens(Tensor::randn([2, 3, 8], (Kind::Double, Device::Cpu)), &mask).unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| head.score(&u, &u, false)));
    assert!(matches!(outcome, Ok(Err(GradCacheError::Torch(_)))), "a typed error, not a panic");

    let enc =
        TinyEncoderConfig { vocab_size: 10, max_len: 4, dim: 8, dropout: 0.0, pooling: Pooling::Mean }.init(&(vs.root() / "enc")).unwrap();
    // Ids beyond the vocabulary: the embedding lookup fails.
    let ids = Tensor::from_slice(&[3i64, 99, 1, 2]).view([1, 4]);
    let batch = TokenBatch::new(ids, Tensor::ones([1, 4], (Kind::Int64, Device::Cpu))).unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| enc.encode(&batch, false)));
    assert!(matches!(outcome, Ok(Err(GradCacheError::Torch(_)))), "a typed error, not a panic");
}

/// A head whose scores read one side only: `⟨u, w⟩` for every passage (or
/// `⟨v, w⟩` for every query), with a learned `w`.
struct OneSided {
    w: Tensor,
    queries_only: bool,
}

impl ScoringHead for OneSided {
    fn score(&self, queries: &Representation, passages: &Representation, _train: bool) -> gradcache::Result<Tensor> {
        let (a, b) = (queries.len() as i64, passages.len() as i64);
        Ok(match self.queries_only {
            true => queries.tensor().matmul(&self.w).unsqueeze(1).expand([a, b], false),
            false => passages.tensor().matmul(&self.w).unsqueeze(0).expand([a, b], false),
        })
    }
}

/// A side no gradient reaches is a typed error naming it (a disconnected
/// graph), not a step that silently trains that side's encoder with zeros;
/// retained blocks are checked as recomputed ones are.
#[test]
fn a_head_that_ignores_a_side_is_a_named_error() {
    let _serial = serial();
    let model = Model::new(HeadKind::Dot, false, Kind::Float, 0.0);
    let loss = InfoNce::default();
    let d = data(4, 2, LossKind::InfoNce, 5);
    for (queries_only, side) in [(true, gradcache::error::Side::Passages), (false, gradcache::error::Side::Queries)] {
        let head = OneSided { w: Tensor::randn([DIM as i64], (Kind::Float, Device::Cpu)).set_requires_grad(true), queries_only };
        for retained in [false, true] {
            let memory = match retained {
                true => gradcache::core::config::MemoryConfig::Retain {
                    retain: gradcache::core::config::RetainCounts { query_chunks: 0, passage_chunks: 0, head_blocks: 100 },
                },
                false => gradcache::core::config::MemoryConfig::default(),
            };
            let config = StepConfig { memory, ..StepConfig::default() };
            let mut gc = GradCache::new(config, &model.query, model.passage.as_ref().unwrap(), &head, &loss).unwrap();
            match gc.step(&d.queries, &d.passages, &d.targets) {
                Err(GradCacheError::NoGradient { side: s }) => assert_eq!(s, side),
                other => panic!("queries_only {queries_only}, retained {retained}: {:?}", other.map(|o| o.loss)),
            }
        }
    }
}
