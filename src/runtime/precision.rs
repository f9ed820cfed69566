//! Mixed precision for the step's forward passes: libtorch's autocast,
//! with the dtype chosen, on the CPU and on CUDA alike.
//!
//! tch 0.17's `tch::autocast` switches CUDA's autocast only and keeps its
//! default dtype (float16), so gradcache sets autocast through its own
//! shim (`src/shim/extras.cpp`). Under [`Precision::Bf16`] the encoders'
//! and the head's forward passes run in bfloat16 where autocast casts
//! (matrix products, attention); the scores `S`, `W = ∂L/∂S` and the loss
//! stay in float32 (the step upcasts `S` before the loss), and backward
//! passes run outside autocast, in the dtypes their forward chose.

use std::ffi::{c_char, c_int};

use serde::{Deserialize, Serialize};

use crate::error::{GradCacheError, Result};
use crate::runtime::gpu::call as shim;

/// The forward passes' precision (`StepConfig.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Float32 throughout (the default).
    #[default]
    F32,
    /// Autocast to bfloat16: float32's range, so no loss scale is needed.
    Bf16,
    /// Autocast to float16. Refused by [`Precision::validate`]: float16's
    /// range needs a loss scale with overflow checks, which gradcache does
    /// not implement; bf16 gives the same speed on hardware that has it.
    F16,
    /// `bf16` where the device multiplies bfloat16 in hardware (a CPU with
    /// AMX or AVX-512 BF16, a GPU of compute capability 8.0 or later),
    /// `f32` elsewhere: chosen by [`Precision::resolve`] for the device a
    /// run uses, before anything runs (a step refuses an unresolved one).
    Auto,
}

/// Why [`Precision::resolve`] chose what it chose, for a run's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrecisionChoice {
    /// What was asked for (`auto` or a precision).
    pub asked: Precision,
    /// What runs.
    pub chosen: Precision,
    /// The device's feature that decided it, e.g. `CPU with amx_bf16`;
    /// empty when a precision was asked for by name.
    pub reason: String,
}

impl std::fmt::Display for PrecisionChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.asked == Precision::Auto {
            write!(f, "{} (auto: {})", self.chosen.name(), self.reason)
        } else {
            f.write_str(self.chosen.name())
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = GradCacheError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "f16" => Ok(Precision::F16),
            "auto" => Ok(Precision::Auto),
            _ => Err(GradCacheError::InvalidConfig { field: "precision", reason: "must be auto, f32, bf16 or f16" }),
        }
    }
}

impl Precision {
    /// Refuses `f16` (see [`Precision::F16`]).
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] naming `precision`.
    pub fn validate(&self) -> Result<()> {
        match self {
            Precision::F16 => Err(GradCacheError::InvalidConfig {
                field: "precision",
                reason: "f16 needs loss scaling, which gradcache does not do: use bf16 (same range as f32)",
            }),
            _ => Ok(()),
        }
    }

    /// Refuses `auto`, which only [`Precision::resolve`] turns into what
    /// runs (the step and the scorer call it before running anything).
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] naming `precision`.
    pub fn require_resolved(&self) -> Result<()> {
        match self {
            Precision::Auto => Err(GradCacheError::InvalidConfig {
                field: "precision",
                reason: "auto must be resolved for a device first (Precision::resolve)",
            }),
            _ => self.validate(),
        }
    }

    /// Its name as configs and flags spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
            Precision::Auto => "auto",
        }
    }

    /// The precision to run on `device`: `auto` becomes `bf16` where the
    /// device has bfloat16 matrix units ([`bf16_units`]) and `f32`
    /// elsewhere; any other precision stays as asked.
    pub fn resolve(self, device: tch::Device) -> PrecisionChoice {
        match self {
            Precision::Auto => match bf16_units(device) {
                Some(reason) => PrecisionChoice { asked: self, chosen: Precision::Bf16, reason },
                None => PrecisionChoice {
                    asked: self,
                    chosen: Precision::F32,
                    reason: format!("{} without bfloat16 units", device_name(device)),
                },
            },
            p => PrecisionChoice { asked: p, chosen: p, reason: String::new() },
        }
    }

    /// The element kind autocast multiplies matrices in under this
    /// precision: `Float` for f32, `BFloat16` for bf16, `Half` for f16.
    pub fn matmul_kind(&self) -> tch::Kind {
        match self {
            Precision::F32 => tch::Kind::Float,
            Precision::Bf16 => tch::Kind::BFloat16,
            Precision::F16 => tch::Kind::Half,
            Precision::Auto => tch::Kind::Float,
        }
    }

    /// Runs `f` with autocast on for this precision (nothing changes for
    /// `f32`), on the CPU and CUDA, then restores the previous state.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] for `f16`;
    /// [`GradCacheError::LibtorchCall`] when libtorch refuses; `f`'s errors.
    pub fn run<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let dtype = match self {
            Precision::F32 => return f(),
            Precision::Bf16 => BFLOAT16,
            Precision::F16 | Precision::Auto => return Err(self.require_resolved().expect_err("f16 and auto are refused")),
        };
        let _guard = Autocast::enter(Some(dtype))?;
        f()
    }

    /// Runs `f`, in which several [`Precision::run`] regions may follow one
    /// another, with autocast's cast cache kept across them: each float32
    /// weight is cast to bfloat16 once for all of `f` instead of once per
    /// region (per chunk). Every region inside must run in the same grad
    /// mode: a cast cached without autograd has no graph, and a region with
    /// autograd that reused it would leave the weight without gradient.
    /// The cache is dropped when `f` returns, so weights updated after it
    /// are cast afresh. Nothing changes for `f32`.
    ///
    /// # Errors
    /// [`GradCacheError::LibtorchCall`] when libtorch refuses; `f`'s errors.
    pub fn casting_once<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if *self != Precision::Bf16 {
            return f();
        }
        let _scope = Autocast::enter(None)?;
        f()
    }
}

/// The CPU flags that mean bfloat16 matrix units (Linux names).
pub const CPU_BF16_FLAGS: [&str; 2] = ["amx_bf16", "avx512_bf16"];

/// Which of `device`'s features multiplies bfloat16 in hardware, in words
/// (`CPU with amx_bf16`, `GPU of compute capability 9.0`), or `None`.
/// CPUs are read from `/proc/cpuinfo`'s flags (none found off Linux); a
/// GPU from its compute capability (8.0, Ampere, or later).
pub fn bf16_units(device: tch::Device) -> Option<String> {
    match device {
        tch::Device::Cpu => {
            let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
            cpu_bf16_flag(&info).map(|flag| format!("CPU with {flag}"))
        }
        tch::Device::Cuda(_) => {
            let (major, minor) = crate::runtime::gpu::device_info(device).ok()?.capability;
            (major >= 8).then(|| format!("GPU of compute capability {major}.{minor}"))
        }
        _ => None,
    }
}

/// The first of [`CPU_BF16_FLAGS`] on the `flags` line of a
/// `/proc/cpuinfo` text.
pub fn cpu_bf16_flag(cpuinfo: &str) -> Option<&'static str> {
    let flags: Vec<&str> = cpuinfo.lines().find(|l| l.starts_with("flags"))?.split_once(':')?.1.split_whitespace().collect();
    CPU_BF16_FLAGS.into_iter().find(|f| flags.contains(f))
}

fn device_name(device: tch::Device) -> &'static str {
    match device {
        tch::Device::Cpu => "CPU",
        _ => "GPU",
    }
}

extern "C" {
    fn gradcache_autocast_get(device_type: c_int, enabled: *mut c_int, dtype: *mut c_int, err: *mut c_char, len: usize) -> c_int;
    fn gradcache_autocast_set(device_type: c_int, enabled: c_int, dtype: c_int, nesting: c_int, err: *mut c_char, len: usize) -> c_int;
}

// c10::ScalarType code of bfloat16.
const BFLOAT16: c_int = 15;
// c10::DeviceType codes.
const CPU: c_int = 0;
const CUDA: c_int = 1;

/// One autocast nesting level for the CPU and CUDA while alive, autocast
/// on with dtype `code` (`None`: each device's state left as it is, only
/// the cast cache kept alive); restores what was there.
struct Autocast {
    previous: [(c_int, c_int, c_int); 2],
}

impl Autocast {
    fn enter(code: Option<c_int>) -> Result<Autocast> {
        let mut previous = [(CPU, 0, 0), (CUDA, 0, 0)];
        for p in previous.iter_mut() {
            let (mut enabled, mut kind) = (0, 0);
            // SAFETY: valid out-pointers and error buffer.
            shim("autocast state", |e, l| unsafe { gradcache_autocast_get(p.0, &mut enabled, &mut kind, e, l) })?;
            (p.1, p.2) = (enabled, kind);
        }
        for (i, &(device, enabled, kind)) in previous.iter().enumerate() {
            // One nesting level for the pair.
            let nesting = if i == 0 { 1 } else { 0 };
            let (enabled, kind) = code.map_or((enabled, kind), |code| (1, code));
            // SAFETY: only the error buffer is a pointer.
            shim("autocast", |e, l| unsafe { gradcache_autocast_set(device, enabled, kind, nesting, e, l) })?;
        }
        Ok(Autocast { previous })
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        for (i, &(device, enabled, kind)) in self.previous.iter().enumerate() {
            let nesting = if i == 0 { -1 } else { 0 };
            // SAFETY: only the error buffer is a pointer. Restoring a state
            // read from libtorch itself does not fail; nothing to report
            // from a destructor if it did.
            let _ = shim("autocast", |e, l| unsafe { gradcache_autocast_set(device, enabled, kind, nesting, e, l) });
        }
    }
}
