//! Random-state replay: identical dropout masks in both passes.
//!
//! tch 0.17 cannot read or restore libtorch's generator state; it can only
//! seed it (`tch::manual_seed`, which seeds the CPU and every CUDA generator).
//! So each step draws one base seed from the global generator, and before
//! every encoder chunk and every head block, in the first pass and again in
//! the second, seeds the generator with a value derived from
//! `(base, stream, index)`. Both passes of a chunk therefore see the same
//! random numbers, and different chunks see independent ones.
//!
//! The generator is process-wide: nothing else may draw from it while a
//! step runs (another thread's dropout, a second step on another thread).
//! If something does, the replay check fails the step with
//! [`crate::GradCacheError::ReplayMismatch`] instead of returning silently
//! wrong gradients.

use tch::{Device, Kind, Tensor};

use crate::error::{GradCacheError, ReplayStage, Result};

/// The random stream of each kind of replayed piece (query chunks,
/// passage chunks, head blocks indexed row-major over the block grid), and
/// of whatever runs after the step: one tag each in the seed.
fn tag(stream: Option<ReplayStage>) -> u64 {
    match stream {
        Some(ReplayStage::QueryChunk) => 1,
        Some(ReplayStage::PassageChunk) => 2,
        Some(ReplayStage::HeadBlock) => 3,
        None => 4,
    }
}

/// The seeds of one step (or one sub-batch of an accumulation step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplaySeeds {
    base: u64,
}

/// SplitMix64's finaliser: a bijective mix with good avalanche.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl ReplaySeeds {
    /// Seeds with a fixed base (for tests and reproducible runs).
    pub fn from_base(base: u64) -> Self {
        ReplaySeeds { base }
    }

    /// Draws the base from libtorch's global CPU generator, so that
    /// `tch::manual_seed(s)` before a step makes the whole step reproducible.
    pub fn draw() -> Result<Self> {
        let t = Tensor::f_randint(1 << 62, [1], (Kind::Int64, Device::Cpu))?;
        Ok(ReplaySeeds { base: t.f_int64_value(&[0])? as u64 })
    }

    /// The base all of this step's seeds derive from (what a distributed
    /// step shares across processes).
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The seed of piece `index` of the kind `stage` (a query chunk, a
    /// passage chunk, a head block).
    pub fn seed(&self, stage: ReplayStage, index: usize) -> i64 {
        self.seed_of(Some(stage), index)
    }

    /// The seed of what runs after step `index` of a run (the trainer's
    /// clipping and update), apart from every piece's.
    pub fn after(&self, index: usize) -> i64 {
        self.seed_of(None, index)
    }

    fn seed_of(&self, stream: Option<ReplayStage>, index: usize) -> i64 {
        let z = mix(self.base ^ mix(tag(stream) << 56 ^ index as u64));
        // libtorch takes any i64; keep it non-negative for readability in logs.
        (z >> 1) as i64
    }

    /// Seeds libtorch's generators for piece `index` of the kind `stage`.
    pub fn enter(&self, stage: ReplayStage, index: usize) {
        tch::manual_seed(self.seed(stage, index));
    }

    /// Independent seeds for sub-batch `index` (gradient accumulation).
    pub fn child(&self, index: usize) -> ReplaySeeds {
        ReplaySeeds { base: mix(self.base ^ mix(0xacc0_0000_0000_0000 ^ index as u64)) }
    }

    /// Leaves the global generator in a state derived from this step, so that
    /// randomness after the step stays reproducible but differs from any
    /// chunk's.
    pub fn finish(&self) {
        tch::manual_seed(self.after(0));
    }
}

/// Collects the replay differences of one pass on the device and checks them
/// with a single synchronisation at the end of the pass.
pub(crate) struct ReplayLog {
    stage: ReplayStage,
    enabled: bool,
    relative_diffs: Vec<Tensor>,
}

impl ReplayLog {
    pub(crate) fn new(stage: ReplayStage, enabled: bool) -> Self {
        ReplayLog { stage, enabled, relative_diffs: Vec::new() }
    }

    /// Records `max|recomputed − cached| / max(1, max|cached|)`.
    pub(crate) fn record(&mut self, recomputed: &Tensor, cached: &Tensor) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let recomputed = recomputed.f_detach()?;
        if recomputed.size() != cached.size() {
            return Err(GradCacheError::Shape {
                what: "recomputation in the second pass",
                expected: "the shape of the first pass",
                got: recomputed.size(),
            });
        }
        let diff = recomputed.f_sub(cached)?.f_abs()?.f_max()?;
        let scale = cached.f_abs()?.f_max()?.f_clamp_min(1.0)?;
        self.relative_diffs.push(diff.f_div(&scale)?.f_to_kind(tch::Kind::Double)?);
        Ok(())
    }

    pub(crate) fn finish(self, tolerance: f64) -> Result<()> {
        if self.relative_diffs.is_empty() {
            return Ok(());
        }
        let diffs = Tensor::f_stack(&self.relative_diffs, 0)?.f_to_device(Device::Cpu)?;
        let values: Vec<f64> = Vec::<f64>::try_from(&diffs)?;
        for (index, &d) in values.iter().enumerate() {
            if d.is_nan() || d > tolerance {
                return Err(GradCacheError::ReplayMismatch { stage: self.stage, index, max_abs_diff: d, tolerance });
            }
        }
        Ok(())
    }
}
