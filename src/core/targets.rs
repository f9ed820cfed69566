//! What the loss is told about a batch: which passages are positive for which
//! query, the group layout, and optional teacher scores.

use tch::{Device, Kind, Tensor};

use crate::error::{GradCacheError, Result, Side};
use crate::util::all_finite;

/// Targets for a batch of `N` queries and `M` passages.
#[derive(Debug)]
pub struct Targets {
    num_queries: usize,
    num_passages: usize,
    /// Sorted positive passage indices of each query.
    positives: Vec<Vec<usize>>,
    /// Passages per query when the batch is grouped (`M = N × g`).
    group_size: Option<usize>,
    /// Teacher scores `[N, g]` over each query's own group.
    teacher: Option<Tensor>,
}

impl Targets {
    /// The usual layout: query `i` owns passages `i·g .. (i+1)·g`, the first of
    /// which is its positive and the rest its hard negatives; every other
    /// query's passages are in-batch negatives.
    ///
    /// # Errors
    /// [`GradCacheError::EmptyBatch`] for `N = 0`; [`GradCacheError::GroupMismatch`]
    /// unless `M = N × g` with `g ≥ 1`.
    pub fn grouped(num_queries: usize, num_passages: usize, group_size: usize) -> Result<Self> {
        Self::grouped_with_positives(num_queries, num_passages, group_size, 1)
    }

    /// Like [`Targets::grouped`], with the first `positives_per_group`
    /// passages of each group positive (multiple positives).
    ///
    /// # Errors
    /// As [`Targets::grouped`]; [`GradCacheError::InvalidConfig`] unless
    /// `1 ≤ positives_per_group ≤ g`.
    pub fn grouped_with_positives(num_queries: usize, num_passages: usize, group_size: usize, positives_per_group: usize) -> Result<Self> {
        if num_queries == 0 {
            return Err(GradCacheError::EmptyBatch { side: Side::Queries });
        }
        if group_size == 0 || num_passages != num_queries * group_size {
            return Err(GradCacheError::GroupMismatch { num_queries, num_passages, group_size });
        }
        if positives_per_group == 0 || positives_per_group > group_size {
            return Err(GradCacheError::InvalidConfig { field: "positives_per_group", reason: "must be between 1 and the group size" });
        }
        let positives = (0..num_queries).map(|i| (i * group_size..i * group_size + positives_per_group).collect()).collect();
        Ok(Targets { num_queries, num_passages, positives, group_size: Some(group_size), teacher: None })
    }

    /// Any layout: `positives[i]` lists the positive passages of query `i`.
    ///
    /// # Errors
    /// [`GradCacheError::EmptyBatch`] for no queries or no passages;
    /// [`GradCacheError::NoPositive`] for a query without positives;
    /// [`GradCacheError::TargetOutOfRange`] for an index ≥ `num_passages`.
    pub fn from_positives(num_passages: usize, positives: Vec<Vec<usize>>) -> Result<Self> {
        if positives.is_empty() {
            return Err(GradCacheError::EmptyBatch { side: Side::Queries });
        }
        if num_passages == 0 {
            return Err(GradCacheError::EmptyBatch { side: Side::Passages });
        }
        let mut sorted = Vec::with_capacity(positives.len());
        for (query, mut list) in positives.into_iter().enumerate() {
            if list.is_empty() {
                return Err(GradCacheError::NoPositive { query });
            }
            if let Some(&passage) = list.iter().find(|&&p| p >= num_passages) {
                return Err(GradCacheError::TargetOutOfRange { query, passage, num_passages });
            }
            list.sort_unstable();
            list.dedup();
            sorted.push(list);
        }
        Ok(Targets { num_queries: sorted.len(), num_passages, positives: sorted, group_size: None, teacher: None })
    }

    /// Adds teacher scores over each query's own group, for distillation.
    ///
    /// # Shapes
    /// `teacher`: `[N, g]`, any float kind.
    ///
    /// # Errors
    /// [`GradCacheError::TargetsIncomplete`] without a group layout;
    /// [`GradCacheError::Shape`] for another shape;
    /// [`GradCacheError::NonFiniteTeacherScores`] for NaN or infinity.
    pub fn with_teacher_scores(mut self, teacher: Tensor) -> Result<Self> {
        let g = self
            .group_size
            .ok_or(GradCacheError::TargetsIncomplete { what: "teacher scores", needs: "a group layout (Targets::grouped)" })?;
        if teacher.size() != [self.num_queries as i64, g as i64] {
            return Err(GradCacheError::Shape { what: "teacher scores", expected: "[num_queries, group_size]", got: teacher.size() });
        }
        if !all_finite(&teacher)? {
            let rows = teacher.f_isfinite()?.f_all_dim(1, false)?;
            let query = Vec::<bool>::try_from(rows)?.iter().position(|ok| !ok).unwrap_or(0);
            return Err(GradCacheError::NonFiniteTeacherScores { query });
        }
        self.teacher = Some(teacher);
        Ok(self)
    }

    /// Queries `N`.
    pub fn num_queries(&self) -> usize {
        self.num_queries
    }

    /// Passages `M`.
    pub fn num_passages(&self) -> usize {
        self.num_passages
    }

    /// Passages per query, for grouped targets.
    pub fn group_size(&self) -> Option<usize> {
        self.group_size
    }

    /// Positive passage indices of each query.
    pub fn positives(&self) -> &[Vec<usize>] {
        &self.positives
    }

    /// Teacher scores `[N, g]`, if any.
    pub fn teacher(&self) -> Option<&Tensor> {
        self.teacher.as_ref()
    }

    /// `[N, M]` with 1 where passage `j` is a positive of query `i`.
    pub fn positive_mask(&self, kind: Kind, device: Device) -> Result<Tensor> {
        let mut flat = vec![0f32; self.num_queries * self.num_passages];
        for (i, list) in self.positives.iter().enumerate() {
            for &j in list {
                flat[i * self.num_passages + j] = 1.0;
            }
        }
        let mask = Tensor::f_from_slice(&flat)?
            .f_view([self.num_queries as i64, self.num_passages as i64])?
            .f_to_kind(kind)?
            .f_to_device(device)?;
        Ok(mask)
    }

    /// The targets of queries `start .. start + len` and their own groups
    /// (used by gradient accumulation, which splits a grouped batch).
    ///
    /// # Errors
    /// [`GradCacheError::TargetsIncomplete`] without a group layout.
    pub fn sub_batch(&self, start: usize, len: usize) -> Result<Targets> {
        let g = self.group_size.ok_or(GradCacheError::TargetsIncomplete {
            what: "splitting a batch into sub-batches",
            needs: "a group layout (Targets::grouped)",
        })?;
        let offset = start * g;
        let positives = self.positives[start..start + len].iter().map(|list| list.iter().map(|&j| j - offset).collect()).collect();
        let teacher = match &self.teacher {
            Some(t) => Some(t.f_narrow(0, start as i64, len as i64)?),
            None => None,
        };
        Ok(Targets { num_queries: len, num_passages: len * g, positives, group_size: Some(g), teacher })
    }

    /// Checks that the targets were built for a batch of this size.
    pub(crate) fn check_batch(&self, num_queries: usize, num_passages: usize) -> Result<()> {
        if num_queries != self.num_queries {
            return Err(GradCacheError::TargetsMismatch { side: Side::Queries, expected: self.num_queries, actual: num_queries });
        }
        if num_passages != self.num_passages {
            return Err(GradCacheError::TargetsMismatch { side: Side::Passages, expected: self.num_passages, actual: num_passages });
        }
        Ok(())
    }
}
