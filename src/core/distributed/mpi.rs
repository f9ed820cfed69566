//! The MPI transport (cargo feature `mpi`): rsmpi over the system's MPI
//! library (Open MPI on Debian: `libopenmpi-dev`, `openmpi-bin`).
//!
//! Tensors travel through host memory as flat buffers of their element type
//! (f32, f64 or i64), which works with any MPI build; a CUDA-aware MPI or
//! NCCL would avoid the copies on GPUs (see `docs/distributed.md`).

use mpi::collective::SystemOperation;
use mpi::datatype::{Equivalence, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;
use tch::{Device, Kind, Tensor};

use super::{Collective, Traffic, TrafficMeter};
use crate::error::{GradCacheError, Result};

/// The processes of `mpirun`'s world. Create one per process, first thing
/// (it initialises MPI; dropping it finalises MPI).
pub struct MpiCollective {
    // Dropped before the universe, which finalises MPI.
    world: SimpleCommunicator,
    meter: TrafficMeter,
    _universe: Universe,
}

impl std::fmt::Debug for MpiCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MpiCollective {{ rank: {}, world_size: {} }}", self.world.rank(), self.world.size())
    }
}

impl MpiCollective {
    /// Initialises MPI.
    ///
    /// # Errors
    /// [`GradCacheError::Distributed`] when MPI was initialised already in
    /// this process.
    pub fn init() -> Result<MpiCollective> {
        let universe =
            mpi::initialize().ok_or(GradCacheError::Distributed { reason: "MPI is already initialised in this process".into() })?;
        let world = universe.world();
        Ok(MpiCollective { world, meter: TrafficMeter::default(), _universe: universe })
    }
}

fn host_vec<T: tch::kind::Element + Copy>(t: &Tensor) -> Result<Vec<T>> {
    Ok(Vec::<T>::try_from(&t.f_to_device(Device::Cpu)?.f_contiguous()?.f_flatten(0, -1)?)?)
}

fn unsupported(kind: Kind) -> GradCacheError {
    GradCacheError::Distributed { reason: format!("tensors of kind {kind:?} cannot be sent (f32, f64 and i64 can)") }
}

impl MpiCollective {
    fn gather_as<T: tch::kind::Element + Equivalence + Default + Copy>(&self, local: &Tensor) -> Result<Tensor> {
        let shape = local.size();
        let rows = shape.first().copied().unwrap_or(0);
        let row: i64 = shape[1..].iter().product();
        let size = self.world.size() as usize;
        let (mut counts, mut widths) = (vec![0i64; size], vec![0i64; size]);
        self.world.all_gather_into(&rows, &mut counts[..]);
        self.world.all_gather_into(&row, &mut widths[..]);
        if widths.iter().any(|&w| w != row) {
            return Err(GradCacheError::Distributed {
                reason: format!("all-gather of rows of different sizes across processes: {widths:?}"),
            });
        }
        let send: Vec<T> = host_vec(local)?;
        let elements: Vec<Count> = counts.iter().map(|&c| (c * row) as Count).collect();
        let displs: Vec<Count> = elements
            .iter()
            .scan(0, |acc, &c| {
                let d = *acc;
                *acc += c;
                Some(d)
            })
            .collect();
        let mut buf = vec![T::default(); elements.iter().map(|&c| c as usize).sum()];
        self.meter.count(send.len() * std::mem::size_of::<T>(), || {
            let mut partition = PartitionMut::new(&mut buf[..], elements, &displs[..]);
            self.world.all_gather_varcount_into(&send[..], &mut partition);
        });
        let mut out = shape.clone();
        if out.is_empty() {
            out.push(0);
        }
        out[0] = counts.iter().sum();
        Ok(Tensor::from_slice(&buf).f_view(out.as_slice())?.f_to_device(local.device())?)
    }

    fn sum_as<T: tch::kind::Element + Equivalence + Default + Copy>(&self, tensor: &Tensor) -> Result<Tensor> {
        let send: Vec<T> = host_vec(tensor)?;
        let mut recv = vec![T::default(); send.len()];
        self.meter.count(send.len() * std::mem::size_of::<T>(), || {
            self.world.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
        });
        Ok(Tensor::from_slice(&recv).f_view(tensor.size().as_slice())?.f_to_device(tensor.device())?)
    }

    fn broadcast_as<T: tch::kind::Element + Equivalence + Default + Copy>(&self, tensor: &Tensor, root: usize) -> Result<Tensor> {
        let mut buf: Vec<T> = host_vec(tensor)?;
        let bytes = if self.world.rank() as usize == root { buf.len() * std::mem::size_of::<T>() } else { 0 };
        self.meter.count(bytes, || self.world.process_at_rank(root as i32).broadcast_into(&mut buf[..]));
        Ok(Tensor::from_slice(&buf).f_view(tensor.size().as_slice())?.f_to_device(tensor.device())?)
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world_size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_gather(&self, local: &Tensor) -> Result<Tensor> {
        match local.kind() {
            Kind::Float => self.gather_as::<f32>(local),
            Kind::Double => self.gather_as::<f64>(local),
            Kind::Int64 => self.gather_as::<i64>(local),
            other => Err(unsupported(other)),
        }
    }

    fn all_reduce_sum(&self, tensor: &Tensor) -> Result<Tensor> {
        match tensor.kind() {
            Kind::Float => self.sum_as::<f32>(tensor),
            Kind::Double => self.sum_as::<f64>(tensor),
            Kind::Int64 => self.sum_as::<i64>(tensor),
            other => Err(unsupported(other)),
        }
    }

    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<Tensor> {
        match tensor.kind() {
            Kind::Float => self.broadcast_as::<f32>(tensor, root),
            Kind::Double => self.broadcast_as::<f64>(tensor, root),
            Kind::Int64 => self.broadcast_as::<i64>(tensor, root),
            other => Err(unsupported(other)),
        }
    }

    fn barrier(&self) {
        self.world.barrier();
    }

    fn traffic(&self) -> Traffic {
        self.meter.get()
    }
}
