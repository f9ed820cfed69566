//! Data-parallel two-cache steps across processes.
//!
//! Several processes together make one large batch: process `r` holds
//! `N_r` queries and `M_r` passages, and every passage of every process is
//! a negative for every query. [`GradCache::distributed_step`] runs the
//! paper's steps with the representations gathered between them:
//!
//! 1. representation pass over the local chunks;
//! 2. all-gather of `U` and `V` (detached: only representations move);
//! 3. score pass: each process scores its share of the global block grid
//!    (a contiguous run of blocks, row by row), and an all-gather of the
//!    scores assembles the global `S` on each;
//! 4. distance-gradient cache: `L(S)` and `W = ∂L/∂S` on every process
//!    alike;
//! 5. head pass over the same share of blocks, then a sum over processes
//!    of `∂L/∂U`, `∂L/∂V` (a closed-form head computes them whole, with no
//!    traffic), of which each process keeps its own rows;
//! 6. encoder pass over the local chunks;
//! 7. a sum over processes of every parameter's gradient from this step.
//!
//! The targets are **global**: query `i` of rank `r` is row `Σ_{s<r} N_s + i`
//! of `S`, and passages are numbered the same way; [`Targets::grouped`]
//! over the global sizes is right when each process holds whole groups.
//! The loss and gradients are those of the global batch, equal to
//! [`GradCache::sharded_full_batch_step`] (the full-batch step over the
//! whole batch cut the same way) to rounding.
//!
//! Transport is a [`Collective`]: [`SingleProcess`] (world size 1, no
//! transport), or `mpi::MpiCollective` over MPI (cargo feature `mpi`).

use std::cell::Cell;
use std::time::{Duration, Instant};

use tch::{nn, Kind, Tensor};

use crate::core::balance::GateTotals;
use crate::core::batch::Chunk;
use crate::core::config::{MemoryConfig, Recompute, RetainCounts};
use crate::core::encoder::Encoder;
use crate::core::layout::{PerSide, Piece, Side};
use crate::core::output::{PhaseTimings, StepOutput};
use crate::core::passes::{backprop_recomputed, backward_pairs, encode_all, Rerun};
use crate::core::plan::Plan;
use crate::core::replay::ReplaySeeds;
use crate::core::representation::Representation;
use crate::core::scoring::{check_finite, score_block};
use crate::core::step::{GradCache, Representations, Scores};
use crate::core::targets::Targets;
use crate::error::ReplayStage;
use crate::error::{GradCacheError, Result};

/// What the collectives of a process moved so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    /// Collective calls.
    pub calls: u64,
    /// Bytes this process contributed (sent), summed over calls.
    pub bytes_sent: u64,
    /// Wall time inside collective calls.
    pub time: Duration,
}

/// The operations the distributed step needs, over tensors. Every process
/// must make the same calls in the same order.
pub trait Collective {
    /// This process's rank, `0..world_size()`.
    fn rank(&self) -> usize;

    /// The number of processes.
    fn world_size(&self) -> usize;

    /// Every process's `local`, concatenated along the first axis in rank
    /// order.
    ///
    /// # Shapes
    /// `local`: `[n_r, ...]`, the trailing shape and the kind alike on every
    /// process; returns `[Σ n_r, ...]`.
    ///
    /// # Errors
    /// [`GradCacheError::Distributed`] for an unsupported kind or mismatched
    /// trailing shapes; libtorch errors.
    fn all_gather(&self, local: &Tensor) -> Result<Tensor>;

    /// The elementwise sum of `tensor` over all processes.
    ///
    /// # Shapes
    /// The same on every process; returned unchanged.
    ///
    /// # Errors
    /// As [`Collective::all_gather`].
    fn all_reduce_sum(&self, tensor: &Tensor) -> Result<Tensor>;

    /// Rank `root`'s `tensor` on every process.
    ///
    /// # Errors
    /// As [`Collective::all_gather`].
    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<Tensor>;

    /// Waits for every process.
    fn barrier(&self);

    /// What this process's collectives moved so far.
    fn traffic(&self) -> Traffic;
}

/// One process: every collective is the identity.
#[derive(Debug, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_gather(&self, local: &Tensor) -> Result<Tensor> {
        Ok(local.f_detach_copy()?)
    }

    fn all_reduce_sum(&self, tensor: &Tensor) -> Result<Tensor> {
        Ok(tensor.f_detach_copy()?)
    }

    fn broadcast(&self, tensor: &Tensor, _root: usize) -> Result<Tensor> {
        Ok(tensor.f_detach_copy()?)
    }

    fn barrier(&self) {}

    fn traffic(&self) -> Traffic {
        Traffic::default()
    }
}

/// Counts calls, bytes and time for a [`Collective`] implementation.
#[derive(Debug, Default)]
pub struct TrafficMeter(Cell<Traffic>);

impl TrafficMeter {
    /// Runs `f`, counting one call that sends `bytes`.
    pub fn count<T>(&self, bytes: usize, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        let mut traffic = self.0.get();
        traffic.calls += 1;
        traffic.bytes_sent += bytes as u64;
        traffic.time += t.elapsed();
        self.0.set(traffic);
        out
    }

    /// The totals so far.
    pub fn get(&self) -> Traffic {
        self.0.get()
    }
}

/// How the global batch is split: each rank's `(N_r, M_r)`, and this rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shards {
    /// Queries per rank.
    pub queries: Vec<usize>,
    /// Passages per rank.
    pub passages: Vec<usize>,
    /// This process's rank.
    pub rank: usize,
}

impl Shards {
    /// Learns every rank's local sizes (one small all-gather).
    ///
    /// # Errors
    /// Collective errors.
    pub fn exchange(collective: &dyn Collective, num_queries: usize, num_passages: usize) -> Result<Shards> {
        let local = Tensor::from_slice(&[num_queries as i64, num_passages as i64]).f_view([1, 2])?;
        let all = Vec::<i64>::try_from(&collective.all_gather(&local)?.f_flatten(0, -1)?)?;
        Ok(Shards {
            queries: all.iter().step_by(2).map(|&n| n as usize).collect(),
            passages: all.iter().skip(1).step_by(2).map(|&m| m as usize).collect(),
            rank: collective.rank(),
        })
    }

    /// This rank's rows of the global batch.
    pub fn own(&self, side: Side) -> Piece {
        let sizes = match side {
            Side::Queries => &self.queries,
            Side::Passages => &self.passages,
        };
        Piece { start: sizes[..self.rank].iter().sum(), len: sizes[self.rank] }
    }
}

/// Every variable of `vs` in name order: the order every process agrees on.
fn by_name(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Pads a token representation to `width` tokens (zeros, masked out).
fn pad_tokens(rep: &Representation, width: i64) -> Result<Representation> {
    match rep {
        Representation::Vector(_) => Ok(rep.with_tensor(rep.tensor().shallow_clone())),
        Representation::Tokens { tokens, mask } => {
            let l = tokens.size()[1];
            if l == width {
                return Ok(rep.with_tensor(tokens.shallow_clone()));
            }
            let (n, d) = (tokens.size()[0], tokens.size()[2]);
            let pad = Tensor::f_zeros([n, width - l, d], (tokens.kind(), tokens.device()))?;
            let mask_pad = Tensor::f_zeros([n, width - l], (mask.kind(), mask.device()))?;
            Representation::tokens(Tensor::f_cat(&[tokens, &pad], 1)?, &Tensor::f_cat(&[mask, &mask_pad], 1)?)
        }
    }
}

/// Every process's representations, concatenated in rank order (token
/// matrices padded to the widest).
fn gather(rep: &Representation, collective: &dyn Collective) -> Result<Representation> {
    match rep {
        Representation::Vector(v) => Representation::vector(collective.all_gather(v)?),
        Representation::Tokens { tokens, .. } => {
            let width = Tensor::from_slice(&[tokens.size()[1]]);
            let widest = Vec::<i64>::try_from(&collective.all_gather(&width)?)?.into_iter().max().unwrap_or(0);
            let padded = pad_tokens(rep, widest)?;
            let mask = padded.mask().map(Tensor::shallow_clone).unwrap_or_else(Tensor::new);
            Representation::tokens(collective.all_gather(padded.tensor())?, &collective.all_gather(&mask)?)
        }
    }
}

/// Every item's length of a side, in the batch's order, on every process,
/// where `config` sorts that side; `None` where it does not.
fn gather_lengths<C: Chunk>(
    config: &crate::core::config::StepConfig,
    side: Side,
    input: &C,
    collective: &dyn Collective,
) -> Result<Option<Vec<usize>>> {
    match crate::core::plan::sort_lengths(config, side, input)? {
        None => Ok(None),
        Some(local) => {
            let local: Vec<i64> = local.into_iter().map(|l| l as i64).collect();
            let all = collective.all_gather(&Tensor::from_slice(&local))?;
            Ok(Some(Vec::<i64>::try_from(&all)?.into_iter().map(|l| l as usize).collect()))
        }
    }
}

/// The sum over processes of this step's gradient of every variable, in
/// buckets of at most `BUCKET` elements, name order (the same on every
/// process). `before` holds the gradients as they were before the step, so
/// that gradients accumulated over earlier steps are not summed again.
fn all_reduce_gradients(vars: &[(String, Tensor)], before: &[Tensor], collective: &dyn Collective) -> Result<()> {
    const BUCKET: i64 = 8 << 20;
    let mut start = 0;
    while start < vars.len() {
        let mut end = start;
        let mut elements = 0;
        while end < vars.len() && (end == start || elements + vars[end].1.numel() as i64 <= BUCKET) {
            elements += vars[end].1.numel() as i64;
            end += 1;
        }
        let deltas = vars[start..end]
            .iter()
            .zip(&before[start..end])
            .map(|((_, v), b)| Ok(v.f_grad()?.f_sub(b)?.f_flatten(0, -1)?))
            .collect::<Result<Vec<_>>>()?;
        let summed = collective.all_reduce_sum(&Tensor::f_cat(&deltas, 0)?)?;
        let mut offset = 0;
        for ((_, v), b) in vars[start..end].iter().zip(&before[start..end]) {
            let numel = v.numel() as i64;
            let delta = summed.f_narrow(0, offset, numel)?.f_view_as(v)?;
            v.f_grad()?.f_copy_(&b.f_add(&delta)?)?;
            offset += numel;
        }
        start = end;
    }
    Ok(())
}

impl<'m, QE: Encoder + ?Sized, PE: Encoder + ?Sized> GradCache<'m, QE, PE> {
    /// One two-cache step over a batch split across processes (see the
    /// module docs): `queries` and `passages` are this process's shard,
    /// `targets` index the **global** batch, `vs` holds every trainable
    /// parameter of the encoders and the head (the same on every process).
    /// Afterwards every process holds the global batch's gradients, added
    /// to what `.grad()` held before, and the global loss.
    ///
    /// Every process must call it with the same generator state
    /// (`tch::manual_seed`) — the step's seeds are taken from rank 0
    /// anyway — and the same config. Dropout differs across processes
    /// (each chunk of the global batch has its own stream) and is replayed
    /// within each. Each process cuts its own shard by the config's chunk
    /// rule — sorted by length and by token budget too — so the step equals
    /// the full-batch step over the batch cut per shard
    /// ([`GradCache::sharded_full_batch_step`]), not one cut of the whole.
    ///
    /// # Errors
    /// [`GradCacheError::EmptyBatch`] when any process has no query or no
    /// passage; [`GradCacheError::TargetsMismatch`] when `targets` do not
    /// have the global sizes; [`GradCacheError::InvalidConfig`] for a
    /// memory plan other than `{"recompute": "all"}` (not supported across
    /// processes yet); as [`GradCache::step`] otherwise.
    pub fn distributed_step(
        &self,
        queries: &QE::Input,
        passages: &PE::Input,
        targets: &Targets,
        vs: &nn::VarStore,
        collective: &dyn Collective,
    ) -> Result<StepOutput> {
        if self.config.memory != (MemoryConfig::Recompute { recompute: Recompute::All }) {
            return Err(GradCacheError::InvalidConfig {
                field: "memory",
                reason: "must be {\"recompute\": \"all\"} for a step across processes (retention is not supported there yet)",
            });
        }
        let shards = Shards::exchange(collective, queries.len(), passages.len())?;
        if shards.queries.contains(&0) {
            return Err(GradCacheError::EmptyBatch { side: Side::Queries });
        }
        if shards.passages.contains(&0) {
            return Err(GradCacheError::EmptyBatch { side: Side::Passages });
        }
        // Where a side is sorted by length, every process cuts its share
        // from its own items sorted, but all need every item's length to
        // number the chunks (their streams) across the whole batch alike.
        let lengths = PerSide::new(
            gather_lengths(&self.config, Side::Queries, queries, collective)?,
            gather_lengths(&self.config, Side::Passages, passages, collective)?,
        );
        let plan = Plan::sharded(&self.config, PerSide::new(&shards.queries, &shards.passages), lengths.as_ref().map(|l| l.as_deref()))?;
        let (n, m) = (shards.queries.iter().sum::<usize>(), shards.passages.iter().sum::<usize>());
        targets.check_batch(n, m)?;
        let (rank, world) = (collective.rank(), collective.world_size());
        let c = &self.config;

        // Every parameter gets a defined gradient on every process (a rank
        // that scores no head block would leave the head's undefined), and
        // what they held before is kept aside.
        let vars: Vec<(String, Tensor)> = by_name(vs).into_iter().filter(|(_, t)| t.requires_grad()).collect();
        if vars.iter().any(|(_, v)| !v.f_grad().map(|g| g.defined()).unwrap_or(false)) {
            let zeros = vars.iter().map(|(_, v)| Ok((v.shallow_clone(), v.f_zeros_like()?))).collect::<Result<Vec<_>>>()?;
            tch::with_grad(|| backward_pairs(zeros))?;
        }
        let before = vars.iter().map(|(_, v)| Ok(v.f_grad()?.f_detach_copy()?)).collect::<Result<Vec<_>>>()?;

        // The same seeds on every process: rank 0's.
        let drawn = ReplaySeeds::draw()?;
        let base = Tensor::from_slice(&[drawn.base() as i64]);
        let seeds = ReplaySeeds::from_base(Vec::<i64>::try_from(&collective.broadcast(&base, 0)?)?[0] as u64);
        let mut timings = PhaseTimings::default();

        // 1–2. Local chunks, then everyone's representations.
        let t = Instant::now();
        let own_q = shards.own(Side::Queries);
        let own_p = shards.own(Side::Passages);
        let share = plan.share(PerSide::new(own_q, own_p));
        let (u_local, v_local) = tch::no_grad(|| -> Result<_> {
            let u = encode_all(self.query_encoder, queries, &share, Side::Queries, &seeds, c.forward())?.0;
            let v = encode_all(self.passage_encoder, passages, &share, Side::Passages, &seeds, c.forward())?.0;
            Ok((u, v))
        })?;
        let reps = Representations::detached(gather(&u_local, collective)?, gather(&v_local, collective)?);
        // Every process sizes cost-sized blocks from the same gathered shapes.
        let plan = self.sized_blocks(plan, &reps.queries, &reps.passages)?;
        timings.representation = t.elapsed();

        // 3. This process's blocks (a contiguous run of the grid, row by
        // row), gathered into the global S: every score crosses once.
        let t = Instant::now();
        let blocks: Vec<crate::core::layout::Block> = plan.blocks().collect();
        let (lo, hi) = (blocks.len() * rank / world, blocks.len() * (rank + 1) / world);
        let owned = |index: usize| (lo..hi).contains(&index);
        let (mine, gates) = tch::no_grad(|| -> Result<(Vec<Tensor>, Option<GateTotals>)> {
            let (mut mine, mut gates) = (Vec::new(), None);
            for block in &blocks[lo..hi] {
                seeds.enter(ReplayStage::HeadBlock, block.index);
                let u = reps.queries.narrow(block.queries.start, block.queries.len)?;
                let v = reps.passages.narrow(block.passages.start, block.passages.len)?;
                let s = score_block(self.head, &u, &v, c.forward())?;
                mine.push(s.scores.f_flatten(0, -1)?);
                GateTotals::accumulate(&mut gates, s.gates.as_ref())?;
            }
            Ok((mine, gates))
        })?;
        let local = match mine.is_empty() {
            false => Tensor::f_cat(&mine, 0)?,
            // A process with no block still joins the gather, with nothing
            // of the scores' kind (learned from one pair).
            true => {
                let kind =
                    tch::no_grad(|| c.precision.run(|| self.head.score(&reps.queries.narrow(0, 1)?, &reps.passages.narrow(0, 1)?, false)))?
                        .kind();
                Tensor::f_zeros([0], (kind, reps.queries.tensor().device()))?
            }
        };
        let flat = collective.all_gather(&local)?;
        let scores = Tensor::f_zeros([n as i64, m as i64], (flat.kind(), flat.device()))?;
        let mut offset = 0;
        for block in &blocks {
            let (a0, al, b0, bl) =
                (block.queries.start as i64, block.queries.len as i64, block.passages.start as i64, block.passages.len as i64);
            scores.f_narrow(0, a0, al)?.f_narrow(1, b0, bl)?.f_copy_(&flat.f_narrow(0, offset, al * bl)?.f_view([al, bl])?)?;
            offset += al * bl;
        }
        check_finite(&scores, plan.grid())?;
        // A gated head's gate totals, summed over every process's blocks.
        let gates = match self.head.balance_weight() > 0.0 {
            false => None,
            true => {
                let packed = match gates {
                    Some(g) => g.pack()?,
                    // A process with no block still joins the sum, with
                    // zeros of the gates' width (learned from one pair).
                    None => {
                        let one = tch::no_grad(|| {
                            score_block(self.head, &reps.queries.narrow(0, 1)?, &reps.passages.narrow(0, 1)?, c.forward())
                        })?;
                        let k = one.gates.as_ref().map_or(0, |g| g.size()[2]);
                        Tensor::f_zeros([k + 1], (tch::Kind::Double, reps.queries.tensor().device()))?
                    }
                };
                Some(GateTotals::unpack(&collective.all_reduce_sum(&packed)?, (n * m) as i64)?)
            }
        };
        let scores = Scores::detached(scores, gates);
        timings.score = t.elapsed();

        // 4.
        let t = Instant::now();
        let cache = self.distance_gradient_cache(&scores, targets)?;
        timings.distance_gradient = t.elapsed();

        // 5.
        let t = Instant::now();
        // The head pass over this process's blocks; their partial sums of
        // ∂L/∂U and ∂L/∂V add up across processes (a closed form is whole
        // on every process already).
        let head = self.head_pass_over(&reps, &mut { scores }, &cache, &plan, &seeds, &owned)?;
        let (closed_form, grads) = (head.closed_form, head.gradients);
        let (d_queries, d_passages) = match closed_form {
            true => (grads.queries, grads.passages),
            false => (collective.all_reduce_sum(&grads.queries)?, collective.all_reduce_sum(&grads.passages)?),
        };
        timings.head = t.elapsed();

        // 6. Own rows of ∂L/∂U, ∂L/∂V through the local chunks, re-encoded.
        let t = Instant::now();
        let own_rows = |d: &Tensor, own: Piece| d.f_narrow(0, own.start as i64, own.len as i64);
        let how = Rerun { plan: &share, seeds: &seeds, fwd: c.forward(), replay: c.replay() };
        backprop_recomputed(self.query_encoder, queries, Side::Queries, &u_local, &own_rows(&d_queries, own_q)?, how)?;
        backprop_recomputed(self.passage_encoder, passages, Side::Passages, &v_local, &own_rows(&d_passages, own_p)?, how)?;

        // 7.
        all_reduce_gradients(&vars, &before, collective)?;
        timings.encoder = t.elapsed();
        seeds.finish();
        // This process's own work (its chunks, its blocks), against its own
        // pass times, which include the collectives.
        let flops = crate::core::flops::count(
            self.parts(),
            &share,
            queries,
            passages,
            (&reps.queries, &reps.passages),
            closed_form,
            blocks[lo..hi].iter().copied(),
        )?;
        Ok(StepOutput { loss: cache.loss, timings, sizes: plan.sizes(closed_form), retained: RetainCounts::default(), budget: None, flops })
    }
}

/// The processes this one was launched among: under `mpirun -np R` with
/// `R > 1` (Open MPI's `OMPI_COMM_WORLD_SIZE`, or `PMI_SIZE`), MPI;
/// otherwise [`SingleProcess`].
///
/// # Errors
/// [`GradCacheError::Distributed`] when launched as one of several
/// processes by a build without the `mpi` feature (each would otherwise
/// train alone into the same folder).
pub fn launched() -> Result<Box<dyn Collective>> {
    let size = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"].iter().find_map(|v| std::env::var(v).ok()?.trim().parse::<usize>().ok());
    match size {
        Some(n) if n > 1 => launch_mpi(n),
        _ => Ok(Box::new(SingleProcess)),
    }
}

#[cfg(feature = "mpi")]
fn launch_mpi(_: usize) -> Result<Box<dyn Collective>> {
    Ok(Box::new(mpi::MpiCollective::init()?))
}

#[cfg(not(feature = "mpi"))]
fn launch_mpi(n: usize) -> Result<Box<dyn Collective>> {
    Err(GradCacheError::Distributed {
        reason: format!("launched as one of {n} processes (mpirun), but this build has no MPI support: build with `--features mpi`"),
    })
}

/// Checks that every process holds the same weights: a checksum of all of
/// them (f64 sums of the values and of their squares, name order) compared
/// across processes, bit for bit.
///
/// # Errors
/// [`GradCacheError::Distributed`] naming `step` and the checksums when
/// they differ.
pub fn check_same_weights(vs: &nn::VarStore, collective: &dyn Collective, step: usize) -> Result<()> {
    let (mut sum, mut squares) = (0.0, 0.0);
    for (_, v) in &by_name(vs) {
        let v = v.f_to_kind(Kind::Double)?;
        sum += v.f_sum(Kind::Double)?.f_double_value(&[])?;
        squares += v.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
    }
    let all = Vec::<f64>::try_from(&collective.all_gather(&Tensor::from_slice(&[sum, squares]).f_view([1, 2])?)?.f_flatten(0, -1)?)?;
    if all.chunks(2).any(|c| c[0].to_bits() != sum.to_bits() || c[1].to_bits() != squares.to_bits()) {
        return Err(GradCacheError::Distributed {
            reason: format!("the processes' weights differ before step {step}: checksums (sum, sum of squares) per rank {all:?}"),
        });
    }
    Ok(())
}

#[cfg(feature = "mpi")]
pub mod mpi;
