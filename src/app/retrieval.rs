//! Two-stage retrieval with a trained [`Scorer`]: a learned head over every
//! query × every document does not scale, so a first stage ranks the whole
//! corpus by the encoders' own cosine, keeping only a running top-k per
//! query (never the `[Q, C]` matrix), and the head reranks each query's
//! top k.

use std::collections::HashMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::app::data::RetrievalSet;
use crate::app::error::{AppError, Result};
use crate::app::metrics::{ranked_metrics, RetrievalMetrics};
use crate::app::scorer::Scorer;
use crate::core::representation::Representation;
use crate::error::GradCacheError;
use crate::models::weights::write_bytes_atomically;

/// One query's ranked documents: `(document index, score)`, best first.
pub type Ranked = Vec<(usize, f64)>;

/// Reports progress: `(what, done, total)`.
pub type ProgressFn<'a> = &'a mut dyn FnMut(&str, usize, usize);

/// One vector per item: the representation's vector, or the mean of its
/// real tokens (what `/embed` serves, before normalisation).
///
/// # Shapes
/// Returns `[n, d]`.
///
/// # Errors
/// Torch errors.
pub fn pooled_vectors(rep: &Representation) -> Result<Tensor> {
    Ok(match rep {
        Representation::Vector(v) => v.shallow_clone(),
        Representation::Tokens { tokens, mask } => {
            let m = mask.f_to_kind(tokens.kind())?.f_unsqueeze(-1)?;
            let count = m.f_sum_dim_intlist(1, false, tokens.kind())?.f_clamp_min(1.0)?;
            tokens.f_mul(&m)?.f_sum_dim_intlist(1, false, tokens.kind())?.f_div(&count)?
        }
    })
}

/// Each row divided by its L2 norm (rows of norm below 1e-12 by 1e-12).
///
/// # Errors
/// Torch errors.
pub fn l2_normalized(v: &Tensor) -> Result<Tensor> {
    let norm = v.f_norm_scalaropt_dim(2, [-1], true)?.f_clamp_min(1e-12)?;
    Ok(v.f_div(&norm)?)
}

/// The first stage's vector of each item: [`pooled_vectors`],
/// L2-normalised (so that a dot product is the cosine).
///
/// # Shapes
/// Returns `[n, d]`.
///
/// # Errors
/// Torch errors.
pub fn first_stage_vectors(rep: &Representation) -> Result<Tensor> {
    // In float32 whatever encoded them: cosines rounded to bf16 tie
    // (`score_for_ranking` says why that matters).
    l2_normalized(&pooled_vectors(&rep.to_float()?)?)
}

/// The best `k` columns of each row of a score matrix that arrives in
/// column blocks: memory `[Q, k + block]`, whatever the number of columns.
#[derive(Debug)]
pub struct StreamingTopK {
    k: usize,
    best: Option<(Tensor, Tensor)>,
    seen: usize,
}

impl StreamingTopK {
    /// Keeps the best `k` (at least 1) per row.
    pub fn new(k: usize) -> Self {
        StreamingTopK { k: k.max(1), best: None, seen: 0 }
    }

    /// Adds the next block of columns, `scores` `[Q, c]`, whose first
    /// column is column `seen so far` of the whole matrix.
    ///
    /// # Errors
    /// [`GradCacheError::Shape`] when the rows differ from earlier blocks.
    pub fn push(&mut self, scores: &Tensor) -> Result<()> {
        let s = scores.f_to_kind(Kind::Float)?;
        let (rows, cols) = match s.size()[..] {
            [r, c] => (r, c),
            _ => return Err(GradCacheError::Shape { what: "top-k block", expected: "[queries, columns]", got: s.size() }.into()),
        };
        let index = Tensor::f_arange_start(self.seen as i64, self.seen as i64 + cols, (Kind::Int64, s.device()))?
            .f_unsqueeze(0)?
            .f_expand([rows, cols], false)?;
        let (values, indices) = match self.best.take() {
            None => (s, index),
            Some((v, i)) => {
                if v.size()[0] != rows {
                    return Err(
                        GradCacheError::Shape { what: "top-k block", expected: "as many rows as the first block", got: s.size() }.into()
                    );
                }
                (Tensor::f_cat(&[v, s], 1)?, Tensor::f_cat(&[i, index], 1)?)
            }
        };
        let keep = (self.k as i64).min(values.size()[1]);
        let (top, at) = values.f_topk(keep, 1, true, true)?;
        self.best = Some((top, indices.f_gather(1, &at, false)?));
        self.seen += cols as usize;
        Ok(())
    }

    /// Each row's best columns, best first (ties: lower column first).
    ///
    /// # Errors
    /// Torch errors.
    pub fn finish(self) -> Result<Vec<Ranked>> {
        let Some((values, indices)) = self.best else { return Ok(Vec::new()) };
        let rows = values.size()[0] as usize;
        let k = values.size()[1] as usize;
        let v = crate::util::to_f64_vec(&values)?;
        let i = Vec::<i64>::try_from(indices.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
        Ok((0..rows)
            .map(|r| {
                let mut row: Ranked = (0..k).map(|j| (i[r * k + j] as usize, v[r * k + j])).collect();
                row.sort_by(crate::app::metrics::by_descending_score);
                row
            })
            .collect())
    }
}

/// How stage one ranks the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirstStage {
    /// The encoders' cosine of pooled vectors ([`first_stage_vectors`]);
    /// the head reranks the top k.
    #[default]
    Cosine,
    /// The head itself over every document: exact, streamed block by block
    /// (brute force).
    Head,
    /// For a head with component embeddings (Mixture of Logits): each query
    /// component's top k over the documents (a document's best component),
    /// unioned over the query's components and rescored exactly by the head.
    /// A head with the residual start scores `e^λ·cos + α·MoL`, so its
    /// base, the encoders' cosine, adds its own top k to the union.
    HeadUnion,
    /// For a head with component embeddings: the top k by the mean of each
    /// side's components (the mixture with a uniform gate), with the
    /// cosine's top k for a residual head as for [`FirstStage::HeadUnion`],
    /// rescored exactly by the head.
    HeadMean,
}

impl FirstStage {
    /// The names `--first-stage` accepts, in the order of the variants.
    pub const NAMES: [&'static str; 4] = ["cosine", "head", "head-union", "head-mean"];

    /// The name of this stage.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Whether the head ranks the corpus itself (no separate rerank).
    pub fn is_head(self) -> bool {
        self != FirstStage::Cosine
    }
}

impl std::str::FromStr for FirstStage {
    type Err = GradCacheError;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "cosine" => Ok(FirstStage::Cosine),
            "head" => Ok(FirstStage::Head),
            "head-union" => Ok(FirstStage::HeadUnion),
            "head-mean" => Ok(FirstStage::HeadMean),
            _ => Err(GradCacheError::InvalidConfig { field: "first_stage", reason: "must be one of cosine, head, head-union, head-mean" }),
        }
    }
}

/// Stage one's search over a corpus that arrives in blocks of encoded
/// documents: keeps a running top k per query (per query component for
/// [`FirstStage::HeadUnion`]), never a `[Q, C]` matrix. Works on
/// representations, so a caller may feed it vectors from anywhere (an
/// index, a synthetic corpus).
pub struct Searcher<'s> {
    scorer: &'s Scorer,
    how: FirstStage,
    queries: &'s Representation,
    // Cosine: unit pooled vectors `[Q, d]`; head-mean: mean components
    // `[Q, c]`; head-union: components `[Q, P_q, c]`.
    query_side: Option<Tensor>,
    // A residual head's base for the component searches: the cosine's
    // unit pooled query vectors, searched as one more list (the last).
    base: Option<Tensor>,
    tops: Vec<StreamingTopK>,
}

impl std::fmt::Debug for Searcher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Searcher").field("how", &self.how).finish_non_exhaustive()
    }
}

fn head_components(scorer: &Scorer, rep: &Representation, side: crate::error::Side) -> Result<Tensor> {
    // In float32, as the head's ranking scores are (`score_for_ranking`).
    let rep = rep.to_float()?;
    match tch::no_grad(|| scorer.head().components(&rep, side).transpose())? {
        Some(c) => Ok(c),
        None => Err(GradCacheError::InvalidConfig {
            field: "first_stage",
            reason: "head-union and head-mean search component embeddings, which only a Mixture of Logits head (\"kind\": \"mol\") has; use --first-stage head for exact search with any head",
        }
        .into()),
    }
}

impl<'s> Searcher<'s> {
    /// A search for the `k` best documents of each of `queries`.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] for a component search with a head
    /// that has no components; head errors.
    pub fn new(scorer: &'s Scorer, queries: &'s Representation, k: usize, how: FirstStage) -> Result<Self> {
        let query_side = match how {
            FirstStage::Cosine => Some(first_stage_vectors(queries)?),
            FirstStage::Head => None,
            FirstStage::HeadMean => {
                Some(head_components(scorer, queries, crate::error::Side::Queries)?.f_mean_dim(1, false, None::<Kind>)?)
            }
            FirstStage::HeadUnion => Some(head_components(scorer, queries, crate::error::Side::Queries)?),
        };
        let base = match how {
            FirstStage::HeadUnion | FirstStage::HeadMean if scorer.config().head.residual().is_some() => {
                Some(first_stage_vectors(queries)?)
            }
            _ => None,
        };
        let lists = match (&query_side, how) {
            (Some(c), FirstStage::HeadUnion) => c.size()[1] as usize,
            _ => 1,
        } + usize::from(base.is_some());
        Ok(Searcher { scorer, how, queries, query_side, base, tops: (0..lists).map(|_| StreamingTopK::new(k)).collect() })
    }

    /// Adds the next block of documents, numbered after those seen so far.
    ///
    /// # Errors
    /// Head errors; [`GradCacheError::Shape`].
    pub fn push(&mut self, block: &Representation) -> Result<()> {
        let side = crate::error::Side::Passages;
        if let (Some(q), Some(last)) = (&self.base, self.tops.last_mut()) {
            let c = first_stage_vectors(block)?;
            last.push(&tch::no_grad(|| q.f_matmul(&c.f_transpose(0, 1)?))?)?;
        }
        let q = self.query_side.as_ref();
        match (self.how, q) {
            (FirstStage::Head, _) => self.tops[0].push(&self.scorer.score_representations(self.queries, block)?),
            (FirstStage::Cosine, Some(q)) => {
                let c = first_stage_vectors(block)?;
                self.tops[0].push(&tch::no_grad(|| q.f_matmul(&c.f_transpose(0, 1)?))?)
            }
            (FirstStage::HeadMean, Some(q)) => {
                let c = head_components(self.scorer, block, side)?.f_mean_dim(1, false, None::<Kind>)?;
                self.tops[0].push(&tch::no_grad(|| q.f_matmul(&c.f_transpose(0, 1)?))?)
            }
            (FirstStage::HeadUnion, Some(q)) => {
                let c = head_components(self.scorer, block, side)?;
                let ((n, pq, w), (b, px)) = ((q.size()[0], q.size()[1], q.size()[2]), (c.size()[0], c.size()[1]));
                // Each query component against every document component,
                // then each document's best: [Q, P_q, b].
                let s = tch::no_grad(|| -> Result<Tensor> {
                    Ok(q.f_reshape([n * pq, w])?
                        .f_matmul(&c.f_reshape([b * px, w])?.f_tr()?)?
                        .f_view([n, pq, b, px])?
                        .f_amax([3], false)?)
                })?;
                for i in 0..pq as usize {
                    self.tops[i].push(&s.f_select(1, i as i64)?)?;
                }
                Ok(())
            }
            (_, None) => unreachable!("every search but the head's has a query side"),
        }
    }

    /// Each query's candidates: its top k (scores: the search's own), or
    /// for [`FirstStage::HeadUnion`] the union of its components' top k
    /// (each with its best component score), to be rescored by the head.
    ///
    /// # Errors
    /// Torch errors.
    pub fn finish(self) -> Result<Vec<Ranked>> {
        let mut lists = self.tops.into_iter().map(StreamingTopK::finish).collect::<Result<Vec<_>>>()?;
        let mut out = lists.remove(0);
        for other in lists {
            for (row, more) in out.iter_mut().zip(other) {
                let mut seen: HashMap<usize, usize> = row.iter().enumerate().map(|(i, &(d, _))| (d, i)).collect();
                for (d, s) in more {
                    match seen.get(&d) {
                        Some(&i) => row[i].1 = row[i].1.max(s),
                        None => {
                            seen.insert(d, row.len());
                            row.push((d, s));
                        }
                    }
                }
                row.sort_by(crate::app::metrics::by_descending_score);
            }
        }
        Ok(out)
    }
}

/// Stage one: every query's `k` best documents of `corpus` by the cosine of
/// [`first_stage_vectors`], encoding the corpus block by block.
///
/// # Errors
/// [`GradCacheError::EmptyBatch`] for no queries or no documents; encoder
/// errors.
pub fn first_stage<Q: AsRef<str> + Sync, D: AsRef<str> + Sync>(
    scorer: &Scorer,
    queries: &[Q],
    corpus: &[D],
    k: usize,
    progress: ProgressFn,
) -> Result<Vec<Ranked>> {
    let block = first_stage_block(scorer);
    let blocks = corpus.chunks(block).map(Ok);
    first_stage_streamed(scorer, queries, blocks, corpus.len(), k, progress)
}

/// Documents per first-stage block: several encoder chunks.
pub fn first_stage_block(scorer: &Scorer) -> usize {
    scorer.block_size(crate::error::Side::Passages)
}

/// [`first_stage`] over a corpus that arrives in blocks (e.g. read from
/// disk or generated), so that neither the corpus nor any `[Q, C]` matrix
/// is ever held: memory is the queries' vectors, one block, and the
/// running top k. Document indices count across blocks; `total` is only
/// for progress.
///
/// # Errors
/// [`GradCacheError::EmptyBatch`] for no queries or no documents; the
/// first error a block carries; encoder errors.
pub fn first_stage_streamed<Q, D, B>(
    scorer: &Scorer,
    queries: &[Q],
    blocks: impl Iterator<Item = Result<B>>,
    total: usize,
    k: usize,
    progress: ProgressFn,
) -> Result<Vec<Ranked>>
where
    Q: AsRef<str> + Sync,
    D: AsRef<str> + Sync,
    B: AsRef<[D]>,
{
    Ok(first_stage_keeping(scorer, queries, blocks, total, k, FirstStage::Cosine, 0, progress)?.0)
}

/// The representations stage one encoded, kept for stage two: every query
/// and every document, in corpus order.
#[derive(Debug)]
pub struct Encoded {
    /// The queries' representations.
    pub queries: Representation,
    /// The documents'.
    pub corpus: Representation,
}

/// [`first_stage_streamed`] searching `how`, also keeping the encoders'
/// representations of the queries and of every document while their bytes
/// stay within `keep_bytes` (none kept past it: stage two then encodes its
/// candidates itself).
#[allow(clippy::too_many_arguments)]
fn first_stage_keeping<Q, D, B>(
    scorer: &Scorer,
    queries: &[Q],
    blocks: impl Iterator<Item = Result<B>>,
    total: usize,
    k: usize,
    how: FirstStage,
    keep_bytes: usize,
    progress: ProgressFn,
) -> Result<(Vec<Ranked>, Option<Encoded>)>
where
    Q: AsRef<str> + Sync,
    D: AsRef<str> + Sync,
    B: AsRef<[D]>,
{
    let encoded_queries = scorer.encode_queries(queries)?;
    let mut search = Searcher::new(scorer, &encoded_queries, k, how)?;
    let bytes = |r: &Representation| r.tensor().numel() * r.tensor().kind().elt_size_in_bytes();
    let mut kept_bytes = bytes(&encoded_queries);
    let mut kept = (kept_bytes <= keep_bytes).then(Vec::new);
    let mut done = 0;
    for block in blocks {
        let block = block?;
        let texts = block.as_ref();
        if texts.is_empty() {
            continue;
        }
        let encoded = scorer.encode_passages(texts)?;
        search.push(&encoded)?;
        kept_bytes += bytes(&encoded);
        kept = kept.filter(|_| kept_bytes <= keep_bytes).map(|mut parts| {
            parts.push(encoded);
            parts
        });
        done += texts.len();
        progress("encoding the corpus", done, total.max(done));
    }
    if done == 0 {
        return Err(GradCacheError::EmptyBatch { side: crate::error::Side::Passages }.into());
    }
    let found = search.finish()?;
    let kept = match kept {
        Some(parts) => Some(Encoded { queries: encoded_queries, corpus: Representation::cat(&parts)? }),
        None => None,
    };
    Ok((found, kept))
}

/// Stage two: the head scores each query against its own candidates only.
/// Queries go `head_block_queries` at a time; each distinct candidate of
/// such a group is encoded once.
///
/// # Errors
/// [`GradCacheError::Shape`] when `candidates` has not one list per query
/// or names a document outside `corpus`; encoder and head errors.
pub fn rerank_candidates<Q: AsRef<str> + Sync, D: AsRef<str> + Sync>(
    scorer: &Scorer,
    queries: &[Q],
    corpus: &[D],
    candidates: &[Ranked],
    progress: ProgressFn,
) -> Result<Vec<Ranked>> {
    check_candidates(candidates, queries.len(), corpus.len())?;
    let encode = |start: usize, end: usize, docs: &[usize]| -> Result<(Representation, Representation)> {
        let texts: Vec<&str> = docs.iter().map(|&d| corpus[d].as_ref()).collect();
        Ok((scorer.encode_queries(&queries[start..end])?, scorer.encode_passages(&texts)?))
    };
    rerank_with(scorer, candidates, &encode, progress)
}

/// [`rerank_candidates`] over representations encoded already (what stage
/// one kept, [`Encoded`]): nothing is encoded again.
///
/// # Errors
/// As [`rerank_candidates`].
pub fn rerank_encoded(scorer: &Scorer, encoded: &Encoded, candidates: &[Ranked], progress: ProgressFn) -> Result<Vec<Ranked>> {
    check_candidates(candidates, encoded.queries.len(), encoded.corpus.len())?;
    let take = |start: usize, end: usize, docs: &[usize]| -> Result<(Representation, Representation)> {
        let rows: Vec<i64> = docs.iter().map(|&d| d as i64).collect();
        let rows = Tensor::f_from_slice(&rows)?.f_to_device(encoded.corpus.tensor().device())?;
        Ok((encoded.queries.narrow(start, end - start)?, encoded.corpus.select(&rows)?))
    };
    rerank_with(scorer, candidates, &take, progress)
}

fn check_candidates(candidates: &[Ranked], queries: usize, corpus: usize) -> Result<()> {
    if candidates.len() != queries || candidates.iter().flatten().any(|&(d, _)| d >= corpus) {
        return Err(GradCacheError::Shape {
            what: "candidates",
            expected: "one list per query, documents inside the corpus",
            got: vec![queries as i64, candidates.len() as i64],
        }
        .into());
    }
    Ok(())
}

/// `represent(start, end, docs)`: a group of queries' representations and
/// those of its distinct candidates `docs`.
type RepresentGroup<'a> = &'a dyn Fn(usize, usize, &[usize]) -> Result<(Representation, Representation)>;

/// Stage two over groups of `head_block_queries` queries: `represent(start,
/// end, docs)` gives the group's queries and its distinct candidates
/// (`docs`, in first-seen order).
fn rerank_with(scorer: &Scorer, candidates: &[Ranked], represent: RepresentGroup, progress: ProgressFn) -> Result<Vec<Ranked>> {
    let group = scorer.config().layout.head_block_queries;
    let mut out = Vec::with_capacity(candidates.len());
    for start in (0..candidates.len()).step_by(group) {
        let end = (start + group).min(candidates.len());
        let mut row_of: HashMap<usize, i64> = HashMap::new();
        let mut docs: Vec<usize> = Vec::new();
        for &(d, _) in candidates[start..end].iter().flatten() {
            row_of.entry(d).or_insert_with(|| {
                docs.push(d);
                docs.len() as i64 - 1
            });
        }
        if docs.is_empty() {
            out.extend((start..end).map(|_| Vec::new()));
            progress("reranking", end, candidates.len());
            continue;
        }
        let (q, passages) = represent(start, end, &docs)?;
        for (j, cands) in candidates[start..end].iter().enumerate() {
            if cands.is_empty() {
                out.push(Vec::new());
                continue;
            }
            let rows: Vec<i64> = cands.iter().map(|(d, _)| row_of[d]).collect();
            let chosen = passages.select(&Tensor::f_from_slice(&rows)?.f_to_device(scorer.device())?)?;
            let scores = scorer.score_representations(&q.narrow(j, 1)?, &chosen)?;
            let values = crate::util::to_f64_vec(&scores)?;
            let mut ranked: Ranked = cands.iter().zip(values).map(|(&(d, _), s)| (d, s)).collect();
            ranked.sort_by(crate::app::metrics::by_descending_score);
            out.push(ranked);
        }
        progress("reranking", end, candidates.len());
    }
    Ok(out)
}

/// Both stages' rankings of a retrieval set and their metrics.
#[derive(Debug, Clone)]
pub struct TwoStageRun {
    /// Candidates per query kept by stage one.
    pub retrieve_k: usize,
    /// Stage one's ranking of each query (its top `retrieve_k`).
    pub first_stage: Vec<Ranked>,
    /// The head's ranking of the same candidates.
    pub reranked: Vec<Ranked>,
    /// Metrics of stage one.
    pub first_stage_metrics: RetrievalMetrics,
    /// Metrics after reranking.
    pub reranked_metrics: RetrievalMetrics,
}

/// Runs both stages over a retrieval set (e.g. a BEIR folder read by
/// [`crate::app::data::beir::read_beir`]) and measures them. With `retrieve_k`
/// at least the corpus size, the reranked metrics are those of the head
/// over the whole grid.
///
/// # Errors
/// As [`first_stage`] and [`rerank_candidates`].
pub fn evaluate_two_stage(scorer: &Scorer, set: &RetrievalSet, retrieve_k: usize, progress: ProgressFn) -> Result<TwoStageRun> {
    evaluate_retrieval(scorer, set, retrieve_k, FirstStage::Cosine, progress)
}

/// Evaluates retrieval over a set with stage one searching `how`. With
/// [`FirstStage::Cosine`], [`evaluate_two_stage`]. With the head as its own
/// first stage, the head's ranking is both stages' (`first_stage` and
/// `reranked` are the same): exact for [`FirstStage::Head`], and for the
/// component searches the candidates rescored by the head and cut to the
/// top `retrieve_k`.
///
/// # Errors
/// As [`evaluate_two_stage`]; [`GradCacheError::InvalidConfig`] for a
/// component search with a head that has no components.
pub fn evaluate_retrieval(
    scorer: &Scorer,
    set: &RetrievalSet,
    retrieve_k: usize,
    how: FirstStage,
    progress: ProgressFn,
) -> Result<TwoStageRun> {
    // Judgements first: a bad qrel fails before any encoding.
    let relevance = set.relevance()?;
    let queries: Vec<&str> = set.queries.iter().map(|(_, t)| t.as_str()).collect();
    let corpus: Vec<&str> = set.corpus.iter().map(|(_, t)| t.as_str()).collect();
    // Stage one's representations serve stage two when they fit a quarter
    // of the memory available (vectors nearly always; token states of a
    // large corpus may not): encoding every candidate again cost a pydoc
    // evaluation about 45 s.
    let keep_bytes = crate::runtime::gpu::available_bytes_on(scorer.device()).map(|b| (b / 4) as usize).unwrap_or(0);
    let blocks = corpus.chunks(first_stage_block(scorer)).map(Ok);
    let (found, kept) = first_stage_keeping(scorer, &queries, blocks, corpus.len(), retrieve_k, how, keep_bytes, progress)?;
    let mut rerank = |candidates: &[Ranked]| match &kept {
        Some(encoded) => rerank_encoded(scorer, encoded, candidates, progress),
        None => rerank_candidates(scorer, &queries, &corpus, candidates, progress),
    };
    // With the head as first stage its ranking is both stages'; a
    // component search's candidates are rescored and cut to k first.
    let (first, reranked) = match how {
        FirstStage::Cosine => {
            let reranked = rerank(&found)?;
            (found, reranked)
        }
        FirstStage::Head => (found.clone(), found),
        FirstStage::HeadUnion | FirstStage::HeadMean => {
            let cut: Vec<Ranked> = rerank(&found)?
                .into_iter()
                .map(|mut r| {
                    r.truncate(retrieve_k);
                    r
                })
                .collect();
            (cut.clone(), cut)
        }
    };
    let order = |r: &[Ranked]| r.iter().map(|row| row.iter().map(|&(d, _)| d).collect::<Vec<_>>()).collect::<Vec<_>>();
    Ok(TwoStageRun {
        retrieve_k,
        first_stage_metrics: ranked_metrics(&order(&first), &relevance)?,
        reranked_metrics: ranked_metrics(&order(&reranked), &relevance)?,
        first_stage: first,
        reranked,
    })
}

/// Checks that every query and document id of `set` fits a TREC run file
/// (no whitespace), so that a caller can refuse before the work.
///
/// # Errors
/// [`AppError::TrecId`] naming the first id that does not.
pub fn check_trec_ids(set: &RetrievalSet) -> Result<()> {
    let ids = set.queries.iter().map(|(id, _)| ("query", id)).chain(set.corpus.iter().map(|(id, _)| ("document", id)));
    for (what, id) in ids {
        if id.chars().any(char::is_whitespace) || id.is_empty() {
            return Err(AppError::TrecId { what, id: id.clone() });
        }
    }
    Ok(())
}

/// Writes rankings as a TREC run file (`qid Q0 docid rank score tag`),
/// atomically.
///
/// # Errors
/// [`AppError::TrecId`] for an id with whitespace;
/// [`GradCacheError::Shape`] when the rankings do not fit the set;
/// [`GradCacheError::Io`].
pub fn write_trec_run(path: &Path, set: &RetrievalSet, rankings: &[Ranked], tag: &str) -> Result<()> {
    check_trec_ids(set)?;
    if rankings.len() != set.queries.len() || rankings.iter().flatten().any(|&(d, _)| d >= set.corpus.len()) {
        return Err(GradCacheError::Shape {
            what: "run file rankings",
            expected: "one list per query, documents inside the corpus",
            got: vec![rankings.len() as i64],
        }
        .into());
    }
    let mut text = String::new();
    for ((qid, _), ranked) in set.queries.iter().zip(rankings) {
        for (rank, &(d, score)) in ranked.iter().enumerate() {
            text += &format!("{qid} Q0 {} {} {score:.6} {tag}\n", set.corpus[d].0, rank + 1);
        }
    }
    write_bytes_atomically(path, text.as_bytes()).map_err(Into::into)
}
