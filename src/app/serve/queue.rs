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

impl Answer {
    fn kind(&self) -> &'static str {
        match self {
            Answer::Score(_) => "a score",
            Answer::Vector(_) => "a vector",
            Answer::Tokens(_) => "token vectors",
        }
    }

    /// The score of a pair, finite.
    ///
    /// # Errors
    /// [`BackendError::WrongKind`] for another answer,
    /// [`BackendError::NonFinite`] for NaN or an infinity.
    pub(crate) fn into_score(self) -> Result<f32, BackendError> {
        match self {
            Answer::Score(s) if s.is_finite() => Ok(s),
            Answer::Score(s) => Err(BackendError::NonFinite(format!("a score of {s}"))),
            other => Err(BackendError::WrongKind { wanted: "a score", got: other.kind() }),
        }
    }

    /// A pooled vector, every value finite.
    ///
    /// # Errors
    /// As [`Answer::into_score`].
    pub(crate) fn into_vector(self) -> Result<Vec<f32>, BackendError> {
        match self {
            Answer::Vector(v) if v.iter().all(|x| x.is_finite()) => Ok(v),
            Answer::Vector(_) => Err(BackendError::NonFinite("a vector with NaN or an infinity".into())),
            other => Err(BackendError::WrongKind { wanted: "a vector", got: other.kind() }),
        }
    }

    /// Token vectors, every value finite.
    ///
    /// # Errors
    /// As [`Answer::into_score`].
    pub(crate) fn into_tokens(self) -> Result<Vec<Vec<f32>>, BackendError> {
        match self {
            Answer::Tokens(t) if t.iter().flatten().all(|x| x.is_finite()) => Ok(t),
            Answer::Tokens(_) => Err(BackendError::NonFinite("token vectors with NaN or an infinity".into())),
            other => Err(BackendError::WrongKind { wanted: "token vectors", got: other.kind() }),
        }
    }
}

/// An entry's answer and how long it waited and ran (TEI's
/// `x-queue-time` and `x-inference-time`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Served {
    pub answer: Answer,
    /// From being queued to its batch starting.
    pub queue: std::time::Duration,
    /// Its batch's run.
    pub inference: std::time::Duration,
}

/// Why the backend gave no usable answer for an entry (a 424 or, when the
/// model thread is gone, a 503).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The model failed on the batch (a libtorch error, a bad shape).
    #[error("inference failed: {0}")]
    Inference(String),
    /// The batch ran but left this entry without an answer, or its reply
    /// was dropped unanswered (the model thread ended).
    #[error("the model gave no answer for an entry of its batch")]
    Unanswered,
    /// The answer is of another kind than the route asked for.
    #[error("the model answered {got} where {wanted} was asked for")]
    WrongKind {
        /// What the route asked for.
        wanted: &'static str,
        /// What came back.
        got: &'static str,
    },
    /// NaN or an infinity, which JSON cannot carry as a number.
    #[error("the model answered {0}")]
    NonFinite(String),
}

/// What the model thread is handed: a batch to run, or a health check to
/// answer between batches (so that `/health` sees a thread that is gone or
/// stuck).
#[derive(Debug)]
pub(crate) enum Command {
    /// Run these entries.
    Batch(Vec<Entry>),
    /// Answer this at once.
    Health(oneshot::Sender<()>),
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
    pub reply: oneshot::Sender<Result<Served, BackendError>>,
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
pub(crate) async fn batching_task(
    mut requests: mpsc::UnboundedReceiver<Vec<Entry>>,
    to_model: mpsc::Sender<Command>,
    limits: BatchLimits,
    queued: Arc<AtomicUsize>,
) {
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
        if to_model.send(Command::Batch(batch)).await.is_err() {
            break;
        }
    }
}
