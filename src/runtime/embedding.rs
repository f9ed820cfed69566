//! Embedding lookups whose gradient touches only the rows looked up.
//!
//! libtorch's dense embedding backward allocates and zeroes a gradient the
//! size of the whole table, then adds it into the weight's `.grad()`: per
//! encoder chunk, 47 MB zeroed and added for MiniLM's 30,522 × 384 table
//! (768 MB for XLM-R's), against a few hundred rows used. With
//! `sparse = true` the backward yields the used rows only, and a sparse
//! gradient adds into a dense `.grad()` in place. A sparse gradient must
//! never become the `.grad()` itself (optimizers, clipping and all-reduce
//! expect dense ones), so the weight is given a dense zero gradient first
//! when it has none. Measured on the main job's step: docs/benchmarks.md.

use std::ffi::{c_char, c_int};

use tch::Tensor;

use crate::error::Result;
use crate::runtime::gpu::call as shim;

extern "C" {
    fn gradcache_grad_enabled() -> c_int;
    fn gradcache_define_dense_grad(t: *const torch_sys::C_tensor, err: *mut c_char, len: usize) -> c_int;
}

/// Whether autograd records operations on this thread (tch's
/// `no_grad`/`with_grad` set it).
pub fn grad_enabled() -> bool {
    // SAFETY: reads a thread-local flag.
    unsafe { gradcache_grad_enabled() != 0 }
}

/// `weight[ids]`, as `Tensor::embedding` without a padding index, with a
/// gradient into `weight.grad()` that adds only the rows of `ids`.
///
/// # Shapes
/// `weight`: `[vocab, d]`; `ids`: any shape of int64; returns `ids`' shape
/// + `[d]`.
///
/// # Errors
/// [`crate::GradCacheError::Torch`] for ids out of range;
/// [`crate::GradCacheError::LibtorchCall`] when the gradient cannot be set.
pub fn embedding(weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let sparse = weight.requires_grad() && grad_enabled();
    if sparse {
        // SAFETY: `weight` is a live tensor for the duration of the call;
        // the shim only reads it and sets its gradient.
        shim("define dense gradient", |e, l| unsafe { gradcache_define_dense_grad(weight.as_ptr(), e, l) })?;
    }
    Ok(Tensor::f_embedding(weight, ids, -1, false, sparse)?)
}
