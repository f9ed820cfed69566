//! Mixture of Logits: the head against a PyTorch re-implementation written
//! from the papers' formula, and its load-balancing term exact under
//! blocking (the two-cache step against the full batch is in
//! tests/exactness.rs and, across processes, tests/distributed.rs).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use gradcache::check::{zero_grads, GradientSnapshot};
use gradcache::core::balance::{Balance, GateTotals};
use gradcache::models::heads::{HeadConfig, MolGate, MolHeadConfig};
use gradcache::{Representation, StepConfig};
use tch::{nn, Device, Kind, Tensor};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

/// The head written again from the formula of Zhai et al. (2023) §3 and
/// the load-balancing term of docs/heads.md, in PyTorch, f64: component
/// embeddings normalised per component, all P_q × P_x cosine logits by
/// einsum, a softmax gate over them, the mixture over τ, then
/// B = −H(mean gate) + mean H(gate); autograd gives the gradients of
/// Σ W ⊙ S + λ·B.
const ORACLE: &str = r#"
import json, sys, torch
torch.set_default_dtype(torch.float64)
x = json.load(open(sys.argv[1]))
t = lambda name: torch.tensor(x["weights"][name], requires_grad=True)
w = {name: t(name) for name in x["weights"]}
u = torch.tensor(x["u"], requires_grad=True); v = torch.tensor(x["v"], requires_grad=True)
W = torch.tensor(x["W"])
Pq, Px, c, tau, lam, glu = x["pq"], x["px"], x["c"], x["tau"], x["lam"], x["glu"]
lin = lambda h, name: h @ w[name + ".weight"].T + w[name + ".bias"]
f = torch.nn.functional.normalize(lin(u, "head.query_components").view(len(u), Pq, c), dim=-1)
g = torch.nn.functional.normalize(lin(v, "head.passage_components").view(len(v), Px, c), dim=-1)
logits = torch.einsum("aic,bjc->abij", f, g).reshape(len(u), len(v), Pq * Px)
z = lin(logits, "head.gate.logits")
if glu:
    z = z + torch.nn.functional.silu(lin(u, "head.gate.query"))[:, None, :] * lin(v, "head.gate.passage")[None, :, :]
pi = z.softmax(-1)
s = (pi * logits).sum(-1) / tau
H = lambda p: -(p * p.log()).sum(-1)
B = -H(pi.reshape(-1, Pq * Px).mean(0)) + H(pi).mean()
(s * W).sum().add(lam * B).backward()
grads = {name: p.grad.flatten().tolist() for name, p in w.items()}
grads["u"], grads["v"] = u.grad.flatten().tolist(), v.grad.flatten().tolist()
print(json.dumps({"scores": s.flatten().tolist(), "gates": pi.flatten().tolist(), "B": B.item(), "grads": grads}))
"#;

#[derive(serde::Deserialize)]
struct Oracle {
    scores: Vec<f64>,
    gates: Vec<f64>,
    #[serde(rename = "B")]
    b: f64,
    grads: std::collections::HashMap<String, Vec<f64>>,
}

fn max_rel(ours: &[f64], theirs: &[f64]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    let scale = theirs.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-300);
    ours.iter().zip(theirs).fold(0f64, |m, (a, b)| m.max((a - b).abs())) / scale
}

#[test]
fn scores_gates_balance_and_gradients_match_a_pytorch_reimplementation() {
    let _serial = serial();
    for gate in [MolGate::GluSilu, MolGate::Logits] {
        tch::manual_seed(11);
        let config = MolHeadConfig {
            dim: 12,
            query_components: 3,
            passage_components: 4,
            component_dim: 5,
            temperature: 0.2,
            gate,
            dropout: 0.3,
            balance: 0.7,
            residual: None,
        };
        let mut vs = nn::VarStore::new(Device::Cpu);
        let head = HeadConfig::Mol(config.clone()).init(&(vs.root() / "head")).unwrap();
        vs.double();
        let opts = (Kind::Double, Device::Cpu);
        let (u, v, w) = (
            Tensor::randn([5, 12], opts).set_requires_grad(true),
            Tensor::randn([7, 12], opts).set_requires_grad(true),
            Tensor::randn([5, 7], opts),
        );
        // Eval mode: the formula without the gate's dropout.
        let (s, gates) = head
            .score_gated(&Representation::vector(u.shallow_clone()).unwrap(), &Representation::vector(v.shallow_clone()).unwrap(), false)
            .unwrap();
        let gates = gates.expect("a MoL head returns its gates");
        let b = GateTotals::of(&gates).unwrap().term(1.0).unwrap();
        (&s * &w).sum(Kind::Double).g_add(&(&b * config.balance)).backward();

        let weights: serde_json::Map<String, serde_json::Value> =
            vs.variables().iter().map(|(k, t)| (k.clone(), serde_json::json!(nested(t)))).collect();
        let input = serde_json::json!({"weights": weights, "u": nested(&u), "v": nested(&v), "W": nested(&w), "pq": 3, "px": 4, "c": 5, "tau": 0.2, "lam": 0.7, "glu": gate == MolGate::GluSilu});
        let path = std::env::temp_dir().join(format!("gradcache-mol-oracle-{}-{gate:?}.json", std::process::id()));
        std::fs::write(&path, input.to_string()).unwrap();
        let python = repo().join(".python");
        let out = Command::new(&python)
            .args(["-c", ORACLE])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}; run scripts/gradcache.sh setup", python.display()));
        std::fs::remove_file(&path).ok();
        assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
        let oracle: Oracle = serde_json::from_slice(&out.stdout).unwrap();

        let tol = 1e-10;
        assert!(max_rel(&values(&s), &oracle.scores) < tol, "{gate:?}: scores");
        assert!(max_rel(&values(&gates), &oracle.gates) < tol, "{gate:?}: gates");
        assert!((b.double_value(&[]) - oracle.b).abs() < tol, "{gate:?}: B {} vs {}", b.double_value(&[]), oracle.b);
        let mut ours: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(k, t)| (k, t.grad())).collect();
        ours.push(("u".into(), u.grad()));
        ours.push(("v".into(), v.grad()));
        assert_eq!(ours.len(), oracle.grads.len(), "{gate:?}: the same parameters");
        for (name, g) in ours {
            let d = max_rel(&values(&g), &oracle.grads[&name]);
            assert!(d < tol, "{gate:?}: ∂/∂{name} differs by {d:e} of its largest entry");
        }
    }
}

fn nested(t: &Tensor) -> serde_json::Value {
    let t = t.detach().to_kind(Kind::Double);
    match t.size().as_slice() {
        [_] => serde_json::json!(values(&t)),
        [n, ..] => serde_json::Value::Array((0..*n).map(|i| nested(&t.get(i))).collect()),
        [] => serde_json::json!(t.double_value(&[])),
    }
}

/// The gates of a 6 × 9 batch cut into 2 × 3 blocks: each block's surrogate
/// from the whole batch's totals gives the gradient of λ·B over the whole
/// batch; a load-balancing term taken per block (each block's own mean
/// gate, weighted by its share of pairs), the bug the cache exists to
/// avoid, does not.
#[test]
fn the_balance_cache_is_exact_per_block_and_a_per_block_term_is_not() {
    let _serial = serial();
    tch::manual_seed(5);
    let z = Tensor::randn([6, 9, 4], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    let lam = 0.4;
    let blocks = [(0, 3), (3, 3)].iter().flat_map(|&r| [(0, 4), (4, 4), (8, 1)].map(move |c| (r, c))).collect::<Vec<_>>();
    let block = |g: &Tensor, ((r0, rn), (c0, cn)): ((i64, i64), (i64, i64))| g.narrow(0, r0, rn).narrow(1, c0, cn);
    let grad_of = |f: &dyn Fn(&Tensor) -> Tensor| {
        let _ = z.grad().defined().then(|| z.grad().zero_());
        f(&z.softmax(-1, Kind::Double)).backward();
        z.grad().copy()
    };
    let whole = grad_of(&|g| GateTotals::of(g).unwrap().term(lam).unwrap());
    let cached = grad_of(&|g| {
        let balance = Balance::new(lam, &GateTotals::of(&g.detach()).unwrap()).unwrap();
        blocks.iter().map(|&b| balance.surrogate(&block(g, b)).unwrap()).reduce(|a, b| a + b).unwrap()
    });
    let per_block = grad_of(&|g| {
        blocks
            .iter()
            .map(|&b| GateTotals::of(&block(g, b)).unwrap().term(lam * (b.0 .1 * b.1 .1) as f64 / 54.0).unwrap())
            .reduce(|a, b| a + b)
            .unwrap()
    });
    let scale = whole.abs().max().double_value(&[]);
    let d = |x: &Tensor| (x - &whole).abs().max().double_value(&[]) / scale;
    assert!(d(&cached) < 1e-12, "cached surrogate: {:e}", d(&cached));
    assert!(d(&per_block) > 1e-3, "a per-block term should differ: {:e}", d(&per_block));
    // And the value: λ·B of the cache is the whole batch's.
    let totals = GateTotals::of(&z.softmax(-1, Kind::Double).detach()).unwrap();
    let value = Balance::new(lam, &totals).unwrap().value;
    assert!((value - totals.term(lam).unwrap().double_value(&[])).abs() < 1e-15);
}

/// The term's gradients are large enough that the exactness comparison
/// sees a step that leaves it out: the two-cache step with λ = 0.3 against
/// the full-batch step of the same weights with λ = 0 fails the tolerance
/// the comparison with λ = 0.3 passes.
#[test]
fn a_step_that_leaves_out_the_balance_term_is_caught() {
    let _serial = serial();
    let make = |balance: f64| {
        tch::manual_seed(1234);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let enc = gradcache::models::encoders::TinyEncoderConfig {
            vocab_size: VOCAB,
            max_len: MAX_LEN,
            dim: DIM,
            dropout: 0.2,
            pooling: gradcache::models::encoders::Pooling::Mean,
        };
        let query = enc.init(&(vs.root() / "encoder")).unwrap();
        let head = HeadConfig::Mol(small_mol(MolGate::GluSilu, 0.2, balance, None)).init(&(vs.root() / "head")).unwrap();
        vs.double();
        Model { vs, query, passage: None, head }
    };
    let (with, without) = (make(0.3), make(0.0));
    let data = data(6, 3, LossKind::InfoNce, 7);
    let loss = loss(LossKind::InfoNce);
    let config = StepConfig {
        layout: gradcache::Layout { query_chunk_size: 4, passage_chunk_size: 5, head_block_queries: 4, head_block_passages: 7 },
        ..StepConfig::default()
    };
    let grads = |m: &Model, full: bool| {
        let mut gc = m.step(config.clone(), loss.as_ref());
        zero_grads(&m.vs);
        tch::manual_seed(99);
        let out = if full {
            gc.full_batch_step(&data.queries, &data.passages, &data.targets)
        } else {
            gc.step(&data.queries, &data.passages, &data.targets)
        }
        .unwrap();
        (out.loss, GradientSnapshot::take(&m.vs).unwrap())
    };
    let (loss_with, ours) = grads(&with, false);
    let (full_loss_with, full_with) = grads(&with, true);
    let (full_loss_without, full_without) = grads(&without, true);
    assert!(ours.compare(&full_with).unwrap().failures(F64_TOL).is_empty(), "λ = 0.3 on both sides");
    assert!((loss_with - full_loss_with).abs() < 1e-12);
    let missed = ours.compare(&full_without).unwrap();
    assert!(
        !missed.failures(F64_TOL).is_empty() && missed.max_rel_diff() > 1e-6,
        "the term's gradients must be visible: {:e}",
        missed.max_rel_diff()
    );
    assert!(loss_with - full_loss_without > 1e-6 || full_loss_without - loss_with > 1e-6, "the term moves the loss");
}

#[test]
fn mol_configs_are_checked_and_read_from_json() {
    let c: HeadConfig =
        serde_json::from_str(r#"{"kind": "mol", "dim": 8, "query_components": 2, "gate": "logits", "balance": 0.0}"#).unwrap();
    let HeadConfig::Mol(m) = &c else { panic!("{c:?}") };
    assert_eq!((m.dim, m.query_components, m.passage_components, m.gate, m.balance), (8, 2, 4, MolGate::Logits, 0.0));
    assert!(serde_json::from_str::<HeadConfig>(r#"{"kind": "mol", "components": 2}"#).is_err(), "unknown fields are refused");
    assert_eq!(HeadConfig::named("mol", 32, 0.1).unwrap().dim(), Some(32));
    let vs = nn::VarStore::new(Device::Cpu);
    for (bad, field) in [
        (MolHeadConfig { component_dim: 0, ..Default::default() }, "component_dim"),
        (MolHeadConfig { temperature: 0.0, ..Default::default() }, "temperature"),
        (MolHeadConfig { balance: -1.0, ..Default::default() }, "balance"),
        (MolHeadConfig { dropout: 1.0, ..Default::default() }, "dropout"),
    ] {
        match HeadConfig::Mol(bad).init(&vs.root()) {
            Err(gradcache::GradCacheError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {:?}", other.map(|_| ())),
        }
    }
    // Token matrices are refused with a typed error.
    let head = HeadConfig::Mol(MolHeadConfig { dim: 4, residual: None, ..Default::default() }).init(&vs.root()).unwrap();
    let tokens =
        Representation::tokens(Tensor::zeros([2, 3, 4], (Kind::Float, Device::Cpu)), &Tensor::ones([2, 3], (Kind::Int64, Device::Cpu)))
            .unwrap();
    assert!(matches!(head.score(&tokens, &tokens, false), Err(gradcache::GradCacheError::RepresentationKind { .. })));
}
