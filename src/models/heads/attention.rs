//! Multi-head scaled dot-product attention over broadcast batch axes, shared
//! by the attention-based heads.

use tch::Tensor;

use crate::error::Result;

/// Splits the last axis into heads: `[..., L, d]` → `[..., H, L, d/H]`.
fn split_heads(x: &Tensor, heads: i64) -> Result<Tensor> {
    let mut shape = x.size();
    let d = shape.pop().unwrap_or(0);
    shape.extend([heads, d / heads]);
    let n = shape.len() as i64;
    Ok(x.f_view(shape.as_slice())?.f_transpose(n - 3, n - 2)?)
}

/// `softmax(q kᵀ / √(d/H) + mask) v` per head, with dropout on the weights.
///
/// # Shapes
/// `q`: `[..., Lq, d]`; `k`, `v`: `[..., Lk, d]`; `key_mask`: `[..., Lk]`
/// (1 = attend, 0 = padding); leading axes broadcast. Returns `[..., Lq, d]`
/// over the broadcast leading axes.
pub(crate) fn multi_head(q: &Tensor, k: &Tensor, v: &Tensor, key_mask: &Tensor, heads: i64, dropout: f64, train: bool) -> Result<Tensor> {
    let (qh, kh, vh) = (split_heads(q, heads)?, split_heads(k, heads)?, split_heads(v, heads)?);
    let scale = 1.0 / ((*q.size().last().unwrap_or(&1) / heads) as f64).sqrt();
    // Padding keys get -10000 added before the softmax, as BERT does.
    let bias = key_mask.f_to_kind(q.kind())?.f_sub_scalar(1.0)?.f_mul_scalar(1e4)?.f_unsqueeze(-2)?.f_unsqueeze(-3)?;
    let logits = qh.f_matmul(&kh.f_transpose(-1, -2)?)?.f_mul_scalar(scale)?.f_add(&bias)?;
    let weights = logits.f_softmax(-1, logits.kind())?.f_dropout(dropout, train)?;
    let ctx = weights.f_matmul(&vh)?; // [..., H, Lq, d/H]
    let n = ctx.dim() as i64;
    let merged = ctx.f_transpose(n - 3, n - 2)?.f_contiguous()?;
    let mut shape = merged.size();
    let dh = shape.pop().unwrap_or(0);
    let h = shape.pop().unwrap_or(0);
    shape.push(h * dh);
    Ok(merged.f_view(shape.as_slice())?)
}

/// Mean of real tokens: `[n, L, d]`, mask `[n, L]` → `[n, d]`.
pub(crate) fn masked_mean(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.f_unsqueeze(-1)?;
    let count = m.f_sum_dim_intlist(1, false, x.kind())?.f_clamp_min(1.0)?;
    Ok(x.f_mul(&m)?.f_sum_dim_intlist(1, false, x.kind())?.f_div(&count)?)
}

/// Whether `heads` (≥ 1) divides `dim`.
pub(crate) fn heads_divide(dim: usize, heads: usize) -> bool {
    heads > 0 && dim.is_multiple_of(heads)
}
