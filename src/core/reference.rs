//! Baselines on the same work as the two-cache step: the full-batch step
//! (the exactness reference) and plain gradient accumulation (the paper's
//! baseline, which is *not* equivalent: it shrinks the pool of negatives).

use std::time::Instant;

use crate::core::batch::Chunk;
use crate::core::config::RetainCounts;
use crate::core::encoder::Encoder;
use crate::core::layout::{cut, PerSide, Side};
use crate::core::output::{PhaseTimings, StepOutput};
use crate::core::passes::{checked_loss_value, encode_all};
use crate::core::plan::{sort_lengths, Plan};
use crate::core::replay::ReplaySeeds;
use crate::core::scoring::{check_finite, score_grid};
use crate::core::step::GradCache;
use crate::core::targets::Targets;
use crate::error::ReplayStage;
use crate::error::{GradCacheError, Result};
use crate::util::accumulation_kind;

impl<'m, QE: Encoder + ?Sized, PE: Encoder + ?Sized> GradCache<'m, QE, PE> {
    /// One forward and one backward over the whole batch, every activation
    /// alive at once: the step that [`GradCache::step`] must equal.
    ///
    /// It cuts the batch as the cached step's plan does and draws the same
    /// random streams (each encoder chunk and head block seeded alike), so
    /// with the same generator state both see identical dropout masks. With
    /// chunk and block sizes at least the batch
    /// ([`crate::StepConfig::whole_batch`]) it is the plain un-chunked step.
    ///
    /// # Errors
    /// As [`GradCache::step`], without replay mismatches.
    pub fn full_batch_step(&mut self, queries: &QE::Input, passages: &PE::Input, targets: &Targets) -> Result<StepOutput> {
        self.check_batch(queries, passages, targets)?;
        let seeds = ReplaySeeds::draw()?;
        let (plan, _) = self.plan(queries, passages, &seeds)?;
        let (loss, timings, plan) = self.full_graph(queries, passages, targets, &seeds, &plan, 1.0)?;
        seeds.finish();
        Ok(StepOutput {
            loss,
            timings,
            sizes: plan.sizes(false),
            retained: RetainCounts::default(),
            budget: None,
            flops: Default::default(),
        })
    }

    /// The full-batch step over a batch that [`GradCache::distributed_step`]
    /// would see split across processes (`query_shards[r]` queries and
    /// `passage_shards[r]` passages on rank `r`): the whole batch here, cut
    /// into the same chunks ([`Plan::sharded`]: each shard on its own,
    /// sorted by length within it where the config sorts) so that every
    /// chunk draws the same random stream; the distributed step must equal
    /// it.
    ///
    /// # Errors
    /// As [`GradCache::full_batch_step`]; [`GradCacheError::InvalidConfig`]
    /// when the shards do not add up to the batch.
    pub fn sharded_full_batch_step(
        &self,
        queries: &QE::Input,
        passages: &PE::Input,
        targets: &Targets,
        query_shards: &[usize],
        passage_shards: &[usize],
    ) -> Result<StepOutput> {
        self.check_batch(queries, passages, targets)?;
        if query_shards.iter().sum::<usize>() != queries.len() || passage_shards.iter().sum::<usize>() != passages.len() {
            return Err(GradCacheError::InvalidConfig { field: "shards", reason: "must add up to the batch's queries and passages" });
        }
        let seeds = ReplaySeeds::draw()?;
        let lengths =
            PerSide::new(sort_lengths(&self.config, Side::Queries, queries)?, sort_lengths(&self.config, Side::Passages, passages)?);
        let plan = Plan::sharded(&self.config, PerSide::new(query_shards, passage_shards), lengths.as_ref().map(|l| l.as_deref()))?;
        let (loss, timings, plan) = self.full_graph(queries, passages, targets, &seeds, &plan, 1.0)?;
        seeds.finish();
        Ok(StepOutput {
            loss,
            timings,
            sizes: plan.sizes(false),
            retained: RetainCounts::default(),
            budget: None,
            flops: Default::default(),
        })
    }

    /// Gradient accumulation: the batch is split into sub-batches of
    /// `sub_batch_queries` queries with their own groups of passages; each
    /// runs a full-batch step on its own (its in-batch negatives are only its
    /// own passages), its loss scaled by its share of the queries. Needs
    /// grouped targets.
    ///
    /// # Errors
    /// As [`GradCache::full_batch_step`]; [`GradCacheError::InvalidConfig`]
    /// for `sub_batch_queries = 0`; [`GradCacheError::TargetsIncomplete`]
    /// without a group layout.
    pub fn accumulation_step(
        &self,
        queries: &QE::Input,
        passages: &PE::Input,
        targets: &Targets,
        sub_batch_queries: usize,
    ) -> Result<StepOutput> {
        self.check_batch(queries, passages, targets)?;
        if sub_batch_queries == 0 {
            return Err(GradCacheError::InvalidConfig { field: "sub_batch_queries", reason: "must be at least 1" });
        }
        let g = targets
            .group_size()
            .ok_or(GradCacheError::TargetsIncomplete { what: "gradient accumulation", needs: "a group layout (Targets::grouped)" })?;
        let seeds = ReplaySeeds::draw()?;
        let n = queries.len();
        let (mut loss, mut timings) = (0.0, PhaseTimings::default());
        for (k, piece) in cut(n, sub_batch_queries).into_iter().enumerate() {
            let (start, len) = (piece.start, piece.len);
            let q = queries.chunk(start, len)?;
            let p = passages.chunk(start * g, len * g)?;
            let t = targets.sub_batch(start, len)?;
            let plan = Plan::with_retained(&self.config.layout, len, len * g, RetainCounts::default());
            let (l, tm, _) = self.full_graph(&q, &p, &t, &seeds.child(k), &plan, len as f64 / n as f64)?;
            loss += l;
            timings.representation += tm.representation;
            timings.score += tm.score;
            timings.distance_gradient += tm.distance_gradient;
            timings.encoder += tm.encoder;
        }
        seeds.finish();
        Ok(StepOutput {
            loss,
            timings,
            sizes: Plan::with_retained(&self.config.layout, n, passages.len(), RetainCounts::default()).sizes(false),
            retained: RetainCounts::default(),
            budget: None,
            flops: Default::default(),
        })
    }

    /// Forward with graph over every chunk and block, `scale · L`, backward.
    /// Returns the scaled loss and the plan as run (its head blocks sized
    /// where the config sizes them by cost).
    fn full_graph(
        &self,
        queries: &QE::Input,
        passages: &PE::Input,
        targets: &Targets,
        seeds: &ReplaySeeds,
        plan: &Plan,
        scale: f64,
    ) -> Result<(f64, PhaseTimings, Plan)> {
        let c = &self.config;
        // Under `with_grad` every piece keeps its graph as part of the one
        // graph of the batch: none is set aside as "retained".
        let plan = plan.clone().without_retained();
        let mut timings = PhaseTimings::default();
        tch::with_grad(|| {
            let t = Instant::now();
            let (u, _) = encode_all(self.query_encoder, queries, &plan, Side::Queries, seeds, c.forward())?;
            let (v, _) = encode_all(self.passage_encoder, passages, &plan, Side::Passages, seeds, c.forward())?;
            timings.representation = t.elapsed();
            let plan = self.sized_blocks(plan, &u, &v)?;

            let t = Instant::now();
            let enter = |b: &crate::core::layout::Block| seeds.enter(ReplayStage::HeadBlock, b.index);
            let grid = score_grid(self.head, &u, &v, plan.grid(), c.forward(), &enter)?;
            check_finite(&grid.matrix, plan.grid())?;
            timings.score = t.elapsed();

            let t = Instant::now();
            let scores = grid.matrix.f_to_kind(accumulation_kind(grid.matrix.kind()))?;
            let mut loss = self.loss.loss(&scores, targets)?;
            // A gated head's λ·B, differentiated as it stands: through the
            // batch's mean gate.
            if let (w, Some(totals)) = (self.head.balance_weight(), &grid.gates) {
                if w > 0.0 {
                    loss = loss.f_add(&totals.term(w)?.f_to_kind(loss.kind())?)?;
                }
            }
            let value = checked_loss_value(&loss)?;
            timings.distance_gradient = t.elapsed();

            let t = Instant::now();
            loss.f_mul_scalar(scale)?.f_backward()?;
            timings.encoder = t.elapsed();
            Ok((value * scale, timings, plan))
        })
    }
}
