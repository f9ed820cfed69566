//! The backend: one thread owns the [`Scorer`] (libtorch is not async) and
//! runs the batches the queue hands it. In a batch, each distinct query is
//! encoded once, the passages of all pairs in one pass (chunked as the
//! bundle's layout cuts them), and each query's passages are scored by the
//! head; embeddings are encoded by the `--embed-side` encoder.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::queue::{Answer, BackendError, Command, Entry, Job, Served};
use crate::app::error::Result;
use crate::app::retrieval::{l2_normalized, pooled_vectors};
use crate::app::scorer::Scorer;
use crate::core::batch::TokenBatch;
use crate::core::layout::Side;
use crate::core::representation::Representation;

/// Runs the commands until the channel closes: batches, and health checks
/// answered between them. `faults` (tests only, [`super::faults`]) may
/// hold the thread or make it panic before a command.
pub(crate) fn run(scorer: &Scorer, mut commands: mpsc::Receiver<Command>, embed_side: Side, faults: Option<&super::faults::Faults>) {
    while let Some(command) = commands.blocking_recv() {
        if let Some(f) = faults {
            f.before_command();
        }
        match command {
            Command::Batch(batch) => run_batch(scorer, batch, embed_side),
            Command::Health(reply) => {
                let _ = reply.send(());
            }
        }
    }
}

fn run_batch(scorer: &Scorer, batch: Vec<Entry>, embed_side: Side) {
    let started = Instant::now();
    let live: Vec<Entry> = batch
        .into_iter()
        .filter(|e| {
            if e.abandoned() {
                metrics::counter!("te_request_failure", "err" => "dropped").increment(1);
            }
            !e.abandoned()
        })
        .collect();
    for e in &live {
        metrics::histogram!("te_request_queue_duration").record(started.duration_since(e.queued).as_secs_f64());
    }
    if live.is_empty() {
        return;
    }
    let answers = answer(scorer, &live, embed_side);
    let inference = started.elapsed();
    metrics::histogram!("te_request_inference_duration").record(inference.as_secs_f64());
    match answers {
        Ok(answers) => {
            for (e, a) in live.into_iter().zip(answers) {
                let queue = started.duration_since(e.queued);
                let _ = e.reply.send(a.map(|answer| Served { answer, queue, inference }).ok_or(BackendError::Unanswered));
            }
        }
        Err(err) => {
            let error = BackendError::Inference(err.to_string());
            for e in live {
                let _ = e.reply.send(Err(error.clone()));
            }
        }
    }
}

/// Every entry's answer, in order (`None`: the batch left it unanswered,
/// which the router reports as an error, never as a value).
fn answer(scorer: &Scorer, entries: &[Entry], embed_side: Side) -> Result<Vec<Option<Answer>>> {
    let mut out: Vec<Option<Answer>> = entries.iter().map(|_| None).collect();
    let pairs: Vec<usize> = (0..entries.len()).filter(|&i| matches!(entries[i].job, Job::Pair { .. })).collect();
    let embeds: Vec<usize> = (0..entries.len()).filter(|&i| matches!(entries[i].job, Job::Embed { .. })).collect();
    let token_embeds: Vec<usize> = (0..entries.len()).filter(|&i| matches!(entries[i].job, Job::EmbedTokens { .. })).collect();
    if !pairs.is_empty() {
        for (i, s) in pairs.iter().zip(score_pairs(scorer, entries, &pairs)?) {
            out[*i] = Some(Answer::Score(s));
        }
    }
    for (group, pooled_group) in [(&embeds, true), (&token_embeds, false)] {
        if group.is_empty() {
            continue;
        }
        let rows: Vec<&[i64]> = group.iter().map(|&i| entries[i].job.ids()).collect();
        let rep = scorer.encode_tokens(&TokenBatch::from_ids(&rows)?, embed_side)?;
        // Pooled once for the group; each entry cuts and normalises its row.
        let pooled = if pooled_group { Some(pooled_vectors(&rep)?) } else { None };
        for (k, &i) in group.iter().enumerate() {
            out[i] = Some(match (&entries[i].job, &pooled) {
                (Job::Embed { normalize, dimensions, .. }, Some(pooled)) => Answer::Vector(vector(pooled, k, *normalize, *dimensions)?),
                _ => Answer::Tokens(token_vectors(&rep, k)?),
            });
        }
    }
    Ok(out)
}

/// The head's score of each pair: each distinct query encoded once, every
/// passage once, each query against its own passages.
fn score_pairs(scorer: &Scorer, entries: &[Entry], pairs: &[usize]) -> Result<Vec<f32>> {
    let mut distinct: Vec<Arc<Vec<i64>>> = Vec::new();
    let mut slot: HashMap<Arc<Vec<i64>>, usize> = HashMap::new();
    let mut query_of = Vec::with_capacity(pairs.len());
    let mut passages: Vec<&[i64]> = Vec::with_capacity(pairs.len());
    for &i in pairs {
        if let Job::Pair { query, passage } = &entries[i].job {
            let g = *slot.entry(query.clone()).or_insert_with(|| {
                distinct.push(query.clone());
                distinct.len() - 1
            });
            query_of.push(g);
            passages.push(passage);
        }
    }
    let queries: Vec<&[i64]> = distinct.iter().map(|q| q.as_slice()).collect();
    let q = scorer.encode_tokens(&TokenBatch::from_ids(&queries)?, Side::Queries)?;
    let p = scorer.encode_tokens(&TokenBatch::from_ids(&passages)?, Side::Passages)?;
    let mut scores = vec![0f32; pairs.len()];
    for g in 0..distinct.len() {
        let members: Vec<usize> = (0..pairs.len()).filter(|&k| query_of[k] == g).collect();
        let own = if members.len() == pairs.len() {
            p.with_tensor(p.tensor().shallow_clone())
        } else {
            let index: Vec<i64> = members.iter().map(|&k| k as i64).collect();
            p.select(&tch::Tensor::from_slice(&index).f_to_device(p.tensor().device())?)?
        };
        let s = scorer.score_representations(&q.narrow(g, 1)?, &own)?;
        let values = Vec::<f32>::try_from(s.f_to_kind(tch::Kind::Float)?.f_to_device(tch::Device::Cpu)?.f_flatten(0, -1)?)?;
        for (&k, v) in members.iter().zip(values) {
            scores[k] = v;
        }
    }
    Ok(scores)
}

/// Row `k` of pooled vectors `[n, d]`, cut to `dimensions`, then
/// normalised if asked.
fn vector(pooled: &tch::Tensor, k: usize, normalize: bool, dimensions: Option<usize>) -> Result<Vec<f32>> {
    let mut v = pooled.f_narrow(0, k as i64, 1)?;
    if let Some(d) = dimensions {
        v = v.f_narrow(1, 0, d as i64)?;
    }
    if normalize {
        v = l2_normalized(&v)?;
    }
    Ok(Vec::<f32>::try_from(v.f_to_kind(tch::Kind::Float)?.f_to_device(tch::Device::Cpu)?.f_flatten(0, -1)?)?)
}

/// Row `k`'s real tokens' vectors.
fn token_vectors(rep: &Representation, k: usize) -> Result<Vec<Vec<f32>>> {
    let Representation::Tokens { tokens, mask } = rep else {
        return Ok(vec![vector(&pooled_vectors(rep)?, k, false, None)?]);
    };
    let len = mask.f_get(k as i64)?.f_sum(tch::Kind::Int64)?.f_int64_value(&[])?;
    let rows = tokens.f_get(k as i64)?.f_narrow(0, 0, len)?.f_to_kind(tch::Kind::Float)?.f_to_device(tch::Device::Cpu)?;
    Ok(Vec::<Vec<f32>>::try_from(rows)?)
}
