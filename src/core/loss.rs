//! Contrastive losses over the score matrix.
//!
//! A loss reads only the score matrix `S` and the targets, so the
//! distance-gradient cache `W = ∂L/∂S` is all the later passes need: any
//! loss implementing [`ContrastiveLoss`] works with the two-cache step.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::core::targets::Targets;
use crate::error::{GradCacheError, Result};

/// A loss over the whole batch's score matrix.
pub trait ContrastiveLoss {
    /// Computes the scalar loss.
    ///
    /// # Shapes
    /// `scores`: `[N, M]`; returns a scalar (0-d) tensor that autograd can
    /// differentiate with respect to `scores`.
    ///
    /// # Errors
    /// Any error of the implementation, e.g. missing teacher scores.
    fn loss(&self, scores: &Tensor, targets: &Targets) -> Result<Tensor>;
}

fn check_temperature(field: &'static str, t: f64) -> Result<()> {
    if t.is_finite() && t > 0.0 {
        Ok(())
    } else {
        Err(GradCacheError::InvalidConfig { field, reason: "must be finite and positive" })
    }
}

/// InfoNCE: `L = -(1/N) Σ_i (1/|P_i|) Σ_{j∈P_i} log softmax_j(s_ij / τ)`, over
/// every passage of the batch (in-batch and hard negatives). With one
/// positive per query this is the usual cross-entropy. `symmetric` adds the
/// passage→query direction for every positive passage and averages the two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InfoNce {
    /// τ, dividing the scores.
    pub temperature: f64,
    /// Also the passage→query direction.
    pub symmetric: bool,
}

impl Default for InfoNce {
    fn default() -> Self {
        InfoNce { temperature: 0.05, symmetric: false }
    }
}

impl InfoNce {
    /// Checks the temperature.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] for a non-positive or non-finite τ.
    pub fn validate(&self) -> Result<()> {
        check_temperature("temperature", self.temperature)
    }
}

/// Softmax along `dim`; the other axis indexes the "anchors" of this
/// direction (queries for `dim = 1`, passages for `dim = 0`). Returns the mean,
/// over anchors with at least one positive, of `-(Σ mask·logp) / Σ mask`.
fn masked_nll(logits: &Tensor, mask: &Tensor, dim: i64) -> Result<Tensor> {
    let kind = logits.kind();
    let logp = logits.f_log_softmax(dim, kind)?;
    let hits = mask.f_sum_dim_intlist(dim, false, kind)?;
    let has = hits.f_gt(0.0)?.f_to_kind(kind)?;
    let per_anchor = logp.f_mul(mask)?.f_sum_dim_intlist(dim, false, kind)?.f_neg()?.f_div(&hits.f_clamp_min(1.0)?)?;
    Ok(per_anchor.f_mul(&has)?.f_sum(kind)?.f_div(&has.f_sum(kind)?)?)
}

impl ContrastiveLoss for InfoNce {
    fn loss(&self, scores: &Tensor, targets: &Targets) -> Result<Tensor> {
        self.validate()?;
        let logits = scores.f_div_scalar(self.temperature)?;
        let mask = targets.positive_mask(logits.kind(), logits.device())?;
        let forward = masked_nll(&logits, &mask, 1)?;
        if !self.symmetric {
            return Ok(forward);
        }
        let backward = masked_nll(&logits, &mask, 0)?;
        Ok(forward.f_add(&backward)?.f_mul_scalar(0.5)?)
    }
}

/// Listwise distillation: `L = (1/N) Σ_i KL(softmax(t_i / τ_t) ‖ softmax(s_i / τ))`,
/// where `s_i` are query `i`'s scores over its own group of `g` passages and
/// `t_i` the teacher's scores for them (see [`Targets::with_teacher_scores`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListwiseKl {
    /// τ for the student's scores.
    pub temperature: f64,
    /// τ_t for the teacher's scores.
    pub teacher_temperature: f64,
}

impl Default for ListwiseKl {
    fn default() -> Self {
        ListwiseKl { temperature: 1.0, teacher_temperature: 1.0 }
    }
}

impl ListwiseKl {
    /// Checks both temperatures.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] for a non-positive or non-finite τ.
    pub fn validate(&self) -> Result<()> {
        check_temperature("temperature", self.temperature)?;
        check_temperature("teacher_temperature", self.teacher_temperature)
    }
}

impl ContrastiveLoss for ListwiseKl {
    fn loss(&self, scores: &Tensor, targets: &Targets) -> Result<Tensor> {
        self.validate()?;
        let needs = GradCacheError::TargetsIncomplete { what: "listwise KL", needs: "teacher scores and a group layout" };
        let (Some(g), Some(teacher)) = (targets.group_size(), targets.teacher()) else {
            return Err(needs);
        };
        let (n, g) = (targets.num_queries() as i64, g as i64);
        let device = scores.device();
        // Column i·g + k holds query i's k-th own passage.
        let index = Tensor::f_arange(n, (Kind::Int64, device))?
            .f_unsqueeze(1)?
            .f_mul_scalar(g)?
            .f_add(&Tensor::f_arange(g, (Kind::Int64, device))?.f_unsqueeze(0)?)?;
        let student = scores.f_gather(1, &index, false)?.f_div_scalar(self.temperature)?;
        let kind = student.kind();
        let log_student = student.f_log_softmax(1, kind)?;
        let log_teacher = teacher.f_to_device(device)?.f_to_kind(kind)?.f_div_scalar(self.teacher_temperature)?.f_log_softmax(1, kind)?;
        let kl = log_teacher.f_exp()?.f_mul(&log_teacher.f_sub(&log_student)?)?;
        Ok(kl.f_sum(kind)?.f_div_scalar(n as f64)?)
    }
}
