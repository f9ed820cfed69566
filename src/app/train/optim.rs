//! AdamW whose state can be saved and restored exactly (tch's optimizers do
//! not expose their moment buffers), and the learning-rate schedule.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::app::error::{AppError, Result};
use crate::models::weights::{read_safetensors, write_bytes_atomically};

/// AdamW (Loshchilov & Hutter) as PyTorch computes it: decoupled weight
/// decay `p ← p·(1 − lr·wd)`, then `p ← p − lr·m̂/(√v̂ + ε)`. Parameters with
/// one dimension (biases, LayerNorm) get no weight decay. Float32 CPU
/// variables are updated in one fused pass over memory; others through
/// tensor ops in place.
#[derive(Debug)]
pub struct AdamW {
    /// β₁, β₂.
    pub betas: (f64, f64),
    /// ε.
    pub eps: f64,
    /// Weight decay.
    pub weight_decay: f64,
    step: i64,
    moments: BTreeMap<String, (Tensor, Tensor)>,
}

impl AdamW {
    /// A fresh optimizer.
    pub fn new(weight_decay: f64) -> Self {
        AdamW { betas: (0.9, 0.999), eps: 1e-8, weight_decay, step: 0, moments: BTreeMap::new() }
    }

    /// Updates every trainable variable of `vs` that has a gradient.
    ///
    /// # Errors
    /// [`crate::GradCacheError::Torch`].
    pub fn step(&mut self, vs: &nn::VarStore, lr: f64) -> crate::error::Result<()> {
        self.step_with(vs, |_| lr)
    }

    /// Like [`AdamW::step`], with a learning rate per variable name.
    ///
    /// # Errors
    /// [`crate::GradCacheError::Torch`].
    pub fn step_with(&mut self, vs: &nn::VarStore, lr_of: impl Fn(&str) -> f64) -> crate::error::Result<()> {
        self.step += 1;
        let (b1, b2) = self.betas;
        let c1 = 1.0 - b1.powi(self.step as i32);
        let c2 = 1.0 - b2.powi(self.step as i32);
        tch::no_grad(|| -> crate::error::Result<()> {
            for (name, mut p) in vs.variables() {
                if !p.requires_grad() {
                    continue;
                }
                let g = p.f_grad()?;
                if !g.defined() {
                    continue;
                }
                // lerp_ takes no mixed dtypes (a gradient left in float64 by
                // a check on a model since cast to float32).
                let g = if g.kind() == p.kind() { g } else { g.f_to_kind(p.kind())? };
                let lr = lr_of(&name);
                let (m, v) = match self.moments.get_mut(&name) {
                    Some(mv) => mv,
                    None => self.moments.entry(name.clone()).or_insert((p.f_zeros_like()?, p.f_zeros_like()?)),
                };
                let decay = if p.dim() > 1 { self.weight_decay } else { 0.0 };
                let h = Hyper { lr, b1, b2, eps: self.eps, decay, c1, c2 };
                if !fused_f32(&mut p, &g, m, v, h)? {
                    tensor_update(&mut p, &g, m, v, h)?;
                }
            }
            Ok(())
        })
    }

    /// Updates made so far.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// Saves the moments (`exp_avg.NAME`, `exp_avg_sq.NAME`) and the step count.
    ///
    /// # Errors
    /// [`crate::GradCacheError::Io`], [`crate::GradCacheError::Torch`].
    pub fn save(&self, file: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = vec![("step".into(), Tensor::from_slice(&[self.step]))];
        for (name, (m, v)) in &self.moments {
            named.push((format!("exp_avg.{name}"), m.shallow_clone()));
            named.push((format!("exp_avg_sq.{name}"), v.shallow_clone()));
        }
        write_bytes_atomically(file, &crate::models::weights::encode_safetensors(&named, &[])?).map_err(Into::into)
    }

    /// Restores what [`AdamW::save`] wrote, onto the variables of `vs`.
    ///
    /// # Errors
    /// [`AppError::Checkpoint`] when the file holds moments for
    /// variables `vs` lacks or with other shapes, or no step count.
    pub fn load(&mut self, vs: &nn::VarStore, file: &Path) -> Result<()> {
        let bad = |reason: &str| AppError::Checkpoint { path: file.to_path_buf(), reason: reason.to_string() };
        let vars = vs.variables();
        let mut step = None;
        let mut first: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut second: BTreeMap<String, Tensor> = BTreeMap::new();
        for (key, t) in read_safetensors(file)? {
            if key == "step" {
                step = Some(t.f_int64_value(&[0])?);
                continue;
            }
            let (slot, name) = if let Some(n) = key.strip_prefix("exp_avg_sq.") {
                (&mut second, n)
            } else if let Some(n) = key.strip_prefix("exp_avg.") {
                (&mut first, n)
            } else {
                return Err(bad("unknown tensor in optimizer state"));
            };
            let var = vars.get(name).ok_or(bad("optimizer state for a variable the model lacks"))?;
            if var.size() != t.size() {
                return Err(bad("optimizer state shape differs from the model's"));
            }
            slot.insert(name.to_string(), t.f_to_kind(var.kind())?.f_to_device(var.device())?);
        }
        self.step = step.ok_or(bad("optimizer state lacks its step count"))?;
        if first.keys().ne(second.keys()) {
            return Err(bad("optimizer state has unpaired moments"));
        }
        self.moments = first.into_iter().zip(second.into_values()).map(|((n, m), v)| (n, (m, v))).collect();
        Ok(())
    }
}

/// Linear warmup from 0 to the peak over `warmup` steps, then linear decay
/// to 0 at `total` steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinearSchedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Warmup steps.
    pub warmup: usize,
    /// Total steps.
    pub total: usize,
}

impl LinearSchedule {
    /// The learning rate of 0-based step `step`.
    pub fn lr(&self, step: usize) -> f64 {
        let s = step as f64 + 1.0;
        if step < self.warmup {
            return self.peak * s / self.warmup as f64;
        }
        let remaining = self.total.saturating_sub(step) as f64;
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        self.peak * (remaining / span).clamp(0.0, 1.0)
    }
}

/// Scales all gradients of `vs` so that their global L2 norm is at most
/// `max_norm`; returns the norm before clipping.
///
/// # Errors
/// [`crate::GradCacheError::Torch`].
pub fn clip_grad_norm(vs: &nn::VarStore, max_norm: Option<f64>) -> Result<f64> {
    let grads: Vec<Tensor> = vs
        .trainable_variables()
        .iter()
        .map(Tensor::f_grad)
        .collect::<std::result::Result<Vec<_>, _>>()?
        .into_iter()
        .filter(Tensor::defined)
        .collect();
    if grads.is_empty() {
        return Ok(0.0);
    }
    // Each gradient's norm in its own dtype, as PyTorch's
    // clip_grad_norm_ does (a float64 copy of every gradient cost the main
    // job 0.05 s a step), the norms combined in float64.
    let norms: Vec<Tensor> = grads.iter().map(|g| g.f_norm()?.f_to_kind(tch::Kind::Double)).collect::<std::result::Result<_, _>>()?;
    let norm = Tensor::f_stack(&norms, 0)?.f_norm()?.f_double_value(&[])?;
    if let Some(max) = max_norm {
        if norm.is_finite() && norm > max {
            let scale = max / (norm + 1e-6);
            tch::no_grad(|| -> crate::error::Result<()> {
                for g in &grads {
                    let _ = g.shallow_clone().f_mul_scalar_(scale)?;
                }
                Ok(())
            })?;
        }
    }
    Ok(norm)
}

/// One update's constants: the learning rate, β₁, β₂, ε, the weight decay
/// of this variable, and the bias corrections `1 − βᵗ`.
#[derive(Debug, Clone, Copy)]
struct Hyper {
    lr: f64,
    b1: f64,
    b2: f64,
    eps: f64,
    decay: f64,
    c1: f64,
    c2: f64,
}

/// PyTorch's single-tensor AdamW in tensor ops, in place (one temporary, the
/// denominator): any dtype and device.
fn tensor_update(p: &mut Tensor, g: &Tensor, m: &mut Tensor, v: &mut Tensor, h: Hyper) -> crate::error::Result<()> {
    if h.decay > 0.0 {
        let _ = p.f_mul_scalar_(1.0 - h.lr * h.decay)?;
    }
    let _ = m.f_lerp_(g, 1.0 - h.b1)?;
    let _ = v.f_mul_scalar_(h.b2)?.f_addcmul_(&g.f_mul_scalar(1.0 - h.b2)?, g)?;
    // tch's addcdiv_ has no scale: p + m / (denom · (−c1/lr)) is
    // p − (lr/c1)·m/denom.
    if h.lr != 0.0 {
        let mut denom = v.f_sqrt()?.f_div_scalar_(h.c2.sqrt())?.f_add_scalar_(h.eps)?;
        let _ = p.f_addcdiv_(m, &denom.f_mul_scalar_(-h.c1 / h.lr)?)?;
    }
    Ok(())
}

/// The same update in one pass over contiguous float32 CPU tensors (the
/// tensor ops make about 20 passes over memory, 0.05 s a step on the main
/// job), on two threads; `false` (nothing done) for anything else.
fn fused_f32(p: &mut Tensor, g: &Tensor, m: &mut Tensor, v: &mut Tensor, h: Hyper) -> crate::error::Result<bool> {
    let all = [&*p, g, &*m, &*v];
    if !all.iter().all(|t| t.kind() == tch::Kind::Float && t.device() == tch::Device::Cpu && t.is_contiguous() && t.size() == p.size()) {
        return Ok(false);
    }
    let n = p.numel();
    // SAFETY: four distinct contiguous float32 CPU tensors of `n` elements
    // each (m and v are this optimizer's own buffers, g is p's gradient);
    // nothing else touches them during the update (autograd is off, the
    // caller holds the only handles).
    let (ps, gs, ms, vs) = unsafe {
        (
            std::slice::from_raw_parts_mut(p.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts(g.data_ptr() as *const f32, n),
            std::slice::from_raw_parts_mut(m.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts_mut(v.data_ptr() as *mut f32, n),
        )
    };
    let (shrink, w1, b2, w2) = ((1.0 - h.lr * h.decay) as f32, (1.0 - h.b1) as f32, h.b2 as f32, (1.0 - h.b2) as f32);
    let (sqrt_c2, eps, step) = (h.c2.sqrt() as f32, h.eps as f32, (h.lr / h.c1) as f32);
    let decay = h.decay > 0.0;
    let update = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
        for i in 0..p.len() {
            if decay {
                p[i] *= shrink;
            }
            m[i] += w1 * (g[i] - m[i]);
            v[i] = v[i] * b2 + w2 * g[i] * g[i];
            if step != 0.0 {
                p[i] -= step * m[i] / (v[i].sqrt() / sqrt_c2 + eps);
            }
        }
    };
    let threads = if n >= 1 << 16 { 2 } else { 1 };
    let piece = n.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let parts = ps.chunks_mut(piece).zip(gs.chunks(piece)).zip(ms.chunks_mut(piece)).zip(vs.chunks_mut(piece));
        for (((p, g), m), v) in parts {
            scope.spawn(move || update(p, g, m, v));
        }
    });
    Ok(true)
}
