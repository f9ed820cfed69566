//! The queue between the HTTP router and the model: tokenized entries
//! wait here, and a batching task cuts them into batches of at most
//! `max_batch_tokens` padded tokens and `max_batch_requests` entries, in
//! arrival order, preparing the next batch while the model runs the
//! current one (the channel to the model holds one batch).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

/// What one entry asks of the model.
#[derive(Debug)]
pub(crate) enum Job {
    /// Score one (query, passage) pair with the head. Entries of one
    /// request share the query's ids.
    Pair {
        /// The query's token ids.
        query: Arc<Vec<i64>>,
        /// The passage's token ids.
        passage: Vec<i64>,
    },
    /// One pooled vector.
    Embed {
        /// The text's token ids.
        ids: Vec<i64>,
        /// L2-normalise it.
        normalize: bool,
        /// Keep only the first so many dimensions.
        dimensions: Option<usize>,
    },
    /// One vector per token.
    EmbedTokens {
        /// The text's token ids.
        ids: Vec<i64>,
    },
}

impl Job {
    /// The ids the entry's encoder reads: a pair's passage, a text to
    /// embed (its length is the entry's share of a batch's tokens).
    pub(crate) fn ids(&self) -> &[i64] {
        match self {
            Job::Pair { passage, .. } => passage,
            Job::Embed { ids, .. } | Job::EmbedTokens { ids } => ids,
        }
    }
}

/// What the model answers for one entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// A pair's head score.
    Score(f32),
    /// A pooled vector.
    Vector(Vec<f32>),
    /// Token vectors.
    Tokens(Vec<Vec<f32>>),
}

/// One unit of model work and where its answer goes.
#[derive(Debug)]
pub(crate) struct Entry {
    pub job: Job,
    /// Its tokens (a pair's passage, an embedded text): its share of a
    /// batch's padded tokens.
    pub tokens: usize,
    /// When it was queued.
    pub queued: Instant,
    /// Dropped by the router when the client goes away: the entry is then
    /// skipped.
    pub reply: oneshot::Sender<Result<Answer, String>>,
}

impl Entry {
    /// Whether nobody waits for the answer any more (the client hung up).
    pub(crate) fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// How large a batch may be.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    /// Entries × the longest entry's tokens, at most.
    pub max_batch_tokens: usize,
    /// Entries, at most.
    pub max_batch_requests: Option<usize>,
}

/// Cuts the requests' entries (each request's entries arrive together, in
/// order) into batches and hands them to the model, one ready ahead.
/// Entries whose client has gone are dropped here. Ends when the router's
/// side of the queue is closed and everything queued has been handed on.
pub(crate) async fn batching_task(mut requests: mpsc::UnboundedReceiver<Vec<Entry>>, to_model: mpsc::Sender<Vec<Entry>>, limits: BatchLimits, queued: Arc<AtomicUsize>) {
    let mut waiting: std::collections::VecDeque<Entry> = std::collections::VecDeque::new();
    loop {
        if waiting.is_empty() {
            match requests.recv().await {
                Some(entries) => waiting.extend(entries),
                None => break,
            }
        }
        // Everything that has arrived meanwhile.
        while let Ok(entries) = requests.try_recv() {
            waiting.extend(entries);
        }
        let mut batch: Vec<Entry> = Vec::new();
        let mut longest = 0;
        while let Some(entry) = waiting.front() {
            if entry.abandoned() {
                queued.fetch_sub(1, Ordering::Relaxed);
                metrics::counter!("te_request_failure", "err" => "dropped").increment(1);
                waiting.pop_front();
                continue;
            }
            let wider = longest.max(entry.tokens);
            let over_tokens = !batch.is_empty() && (batch.len() + 1) * wider > limits.max_batch_tokens;
            let over_requests = limits.max_batch_requests.is_some_and(|m| batch.len() >= m);
            if over_tokens || over_requests {
                break;
            }
            longest = wider;
            batch.extend(waiting.pop_front());
        }
        if batch.is_empty() {
            continue;
        }
        queued.fetch_sub(batch.len(), Ordering::Relaxed);
        metrics::gauge!("te_queue_size").set(queued.load(Ordering::Relaxed) as f64);
        metrics::histogram!("te_batch_next_size").record(batch.len() as f64);
        metrics::histogram!("te_batch_next_tokens").record((batch.len() * longest) as f64);
        if to_model.send(batch).await.is_err() {
            break;
        }
    }
}
