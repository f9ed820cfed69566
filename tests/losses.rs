//! Loss values against PyTorch's own functions on a hand-written matrix.
//!
//! Reference (torch 2.4.0, float64), run once to get the expected values:
//! ```python
//! import torch, torch.nn.functional as F
//! S = torch.tensor([[1.0, -0.5, 0.25, 2.0, 0.0, -1.0],
//!                   [0.5, 0.75, -2.0, 0.1, 1.5, 0.3]], dtype=torch.float64)
//! tau = 0.5
//! l = F.cross_entropy(S / tau, torch.tensor([0, 3]))                      # 2.6946173324977964
//! lc = F.cross_entropy((S / tau).T[[0, 3]], torch.tensor([0, 1]))
//! print((l + lc) / 2)                                                     # 2.3811551422421737
//! lp = F.log_softmax(S / tau, dim=1)
//! print(-(lp[0, [0, 1]].mean() + lp[1, [3, 4]].mean()) / 2)               # 2.7446173324977963
//! T = torch.tensor([[0.3, -0.2, 1.0], [2.0, 0.0, -1.0]], dtype=torch.float64)
//! stu = torch.stack([S[0, 0:3], S[1, 3:6]]) / 0.5
//! print(F.kl_div(F.log_softmax(stu, 1), F.log_softmax(T / 0.7, 1),
//!                log_target=True, reduction="batchmean"))                 # 1.5970505945667903
//! ```

use gradcache::{ContrastiveLoss, InfoNce, ListwiseKl, Targets};
use tch::{Device, Kind, Tensor};

fn scores() -> Tensor {
    Tensor::from_slice(&[1.0f64, -0.5, 0.25, 2.0, 0.0, -1.0, 0.5, 0.75, -2.0, 0.1, 1.5, 0.3]).view([2, 6])
}

fn value(loss: &dyn ContrastiveLoss, targets: &Targets) -> f64 {
    loss.loss(&scores(), targets).unwrap().double_value(&[])
}

fn assert_close(got: f64, want: f64) {
    assert!((got - want).abs() < 1e-14, "{got} vs {want}");
}

#[test]
fn infonce_matches_cross_entropy() {
    let t = Targets::grouped(2, 6, 3).unwrap();
    assert_close(value(&InfoNce { temperature: 0.5, symmetric: false }, &t), 2.6946173324977964);
    // The same targets given as explicit positives.
    let explicit = Targets::from_positives(6, vec![vec![0], vec![3]]).unwrap();
    assert_close(value(&InfoNce { temperature: 0.5, symmetric: false }, &explicit), 2.6946173324977964);
}

#[test]
fn symmetric_infonce_averages_both_directions() {
    let t = Targets::grouped(2, 6, 3).unwrap();
    assert_close(value(&InfoNce { temperature: 0.5, symmetric: true }, &t), 2.3811551422421737);
}

#[test]
fn multiple_positives_average_their_log_likelihoods() {
    let t = Targets::grouped_with_positives(2, 6, 3, 2).unwrap();
    assert_close(value(&InfoNce { temperature: 0.5, symmetric: false }, &t), 2.7446173324977963);
}

#[test]
fn listwise_kl_matches_kl_div() {
    let teacher = Tensor::from_slice(&[0.3f64, -0.2, 1.0, 2.0, 0.0, -1.0]).view([2, 3]);
    let t = Targets::grouped(2, 6, 3).unwrap().with_teacher_scores(teacher).unwrap();
    assert_close(value(&ListwiseKl { temperature: 0.5, teacher_temperature: 0.7 }, &t), 1.5970505945667903);
}

#[test]
fn positive_mask_marks_exactly_the_positives() {
    let t = Targets::from_positives(4, vec![vec![3, 1], vec![0]]).unwrap();
    let mask = t.positive_mask(Kind::Float, Device::Cpu).unwrap();
    let want = Tensor::from_slice(&[0.0f32, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]).view([2, 4]);
    assert!(mask.equal(&want), "{mask}");
}
