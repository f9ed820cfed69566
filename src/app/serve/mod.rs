//! `gradcache serve`: a trained bundle behind the HTTP API of
//! text-embeddings-inference (TEI), so that the retrieval stacks that call
//! TEI (LlamaIndex, Haystack, Milvus, LangChain through the OpenAI route)
//! call a gradcache model unchanged — with its learned head, which TEI
//! cannot run (docs/serving.md).
//!
//! As in TEI, a router (HTTP, validation, tokenization, the queue and the
//! batching task: [`router`](self) and `queue`) stands apart from the
//! backend, one thread that owns the [`Scorer`] and runs batches.

mod backend;
pub mod faults;
mod queue;
mod router;
pub mod types;

pub use queue::BackendError;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};

use crate::app::error::{AppError, Result};
use crate::app::scorer::Scorer;
use crate::core::layout::Side;
use crate::error::GradCacheError;
use crate::runtime::precision::Precision;

/// Characters per token of `max_input_length` that a text may have before
/// it is tokenized: longer texts are cut to `max_input_length ×
/// CHARS_PER_TOKEN` characters first (or refused, `truncate: false`), so a
/// 2 MB text costs what a long page costs. A WordPiece or BPE token of
/// running text covers 3-6 characters; 16 leaves room for long words.
pub const CHARS_PER_TOKEN: usize = 16;

/// Process exit code when the model thread died while serving (a
/// supervisor should restart the server); 0 is a stop by SIGTERM or
/// SIGINT, 1 a server that could not start (bad flags, bundle, port).
pub const EXIT_MODEL_DIED: u8 = 3;

/// The server's limits, TEI's flags with TEI's defaults, and the
/// connection limits TEI leaves to a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Inputs (a rerank request's pairs, an embed request's texts) in
    /// flight at once; over it, 429.
    pub max_concurrent_requests: usize,
    /// Padded tokens per batch (entries × the longest entry's tokens); a
    /// model length above it is clamped to it.
    pub max_batch_tokens: usize,
    /// Entries per batch, at most (`None`: no limit but the tokens).
    pub max_batch_requests: Option<usize>,
    /// Texts per request; over it, 422. At most `max_concurrent_requests`.
    pub max_client_batch_size: usize,
    /// Bytes per request body; over it, 413.
    pub payload_limit: usize,
    /// Cut texts over the model's length unless a request says
    /// `truncate: false` (then 422).
    pub auto_truncate: bool,
    /// Threads that tokenize (the blocking pool's size, at most).
    pub tokenization_workers: usize,
    /// Open connections at most; past it, new ones wait in the kernel's
    /// backlog until one closes.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_requests: 512,
            max_batch_tokens: 16384,
            max_batch_requests: None,
            max_client_batch_size: 32,
            payload_limit: 2_000_000,
            auto_truncate: true,
            tokenization_workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_connections: 512,
        }
    }
}

impl Limits {
    /// Checks every limit, and that no two contradict each other.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] naming the first bad field (its
    /// flag is the field's name with dashes).
    pub fn validate(&self) -> crate::error::Result<()> {
        refuse_zero(
            &[
                ("max_concurrent_requests", self.max_concurrent_requests as u64),
                ("max_batch_tokens", self.max_batch_tokens as u64),
                ("max_client_batch_size", self.max_client_batch_size as u64),
                ("payload_limit", self.payload_limit as u64),
                ("max_batch_requests", self.max_batch_requests.unwrap_or(1) as u64),
                ("tokenization_workers", self.tokenization_workers as u64),
                ("max_connections", self.max_connections as u64),
            ],
            "must be at least 1",
        )?;
        if self.max_concurrent_requests > Semaphore::MAX_PERMITS.min(u32::MAX as usize) {
            return Err(GradCacheError::InvalidConfig { field: "max_concurrent_requests", reason: "is too large" });
        }
        if self.max_client_batch_size > self.max_concurrent_requests {
            return Err(GradCacheError::InvalidConfig {
                field: "max_client_batch_size",
                reason: "must not exceed max_concurrent_requests (--max-client-batch-size over --max-concurrent-requests: a request that large would get 429 on an idle server)",
            });
        }
        if self.max_connections > Semaphore::MAX_PERMITS {
            return Err(GradCacheError::InvalidConfig { field: "max_connections", reason: "is too large" });
        }
        Ok(())
    }
}

/// The first field that is 0, as an error with `reason`.
fn refuse_zero(fields: &[(&'static str, u64)], reason: &'static str) -> crate::error::Result<()> {
    match fields.iter().find(|(_, v)| *v == 0) {
        Some(&(field, _)) => Err(GradCacheError::InvalidConfig { field, reason }),
        None => Ok(()),
    }
}

/// How long the server waits, in seconds (each at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// For a request's head, from when the connection waits for one: this
    /// also bounds how long a kept-alive connection may sit idle (hyper
    /// runs one timer for both).
    pub header_read: u64,
    /// Between two pieces of a request body.
    pub body_read: u64,
    /// For a whole request, head to answer (then 408).
    pub request: u64,
    /// For the model thread to answer a health check (then `/health` is
    /// 503): how long a batch may run before the model counts as stuck.
    pub health: u64,
    /// After SIGTERM, for requests in flight; then open connections are
    /// cut and the process exits.
    pub shutdown: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { header_read: 10, body_read: 30, request: 120, health: 30, shutdown: 30 }
    }
}

impl Timeouts {
    /// Checks that each is at least a second.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] naming the first that is 0.
    pub fn validate(&self) -> crate::error::Result<()> {
        refuse_zero(
            &[
                ("header_read_timeout", self.header_read),
                ("body_read_timeout", self.body_read),
                ("request_timeout", self.request),
                ("health_timeout", self.health),
                ("shutdown_timeout", self.shutdown),
            ],
            "must be at least 1 second",
        )
    }
}

/// What `gradcache serve` serves and how.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// The bundle.
    pub model: PathBuf,
    /// Where to listen (`127.0.0.1:3000`; port 0 picks a free one).
    pub address: SocketAddr,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// The forward passes' precision.
    pub precision: Precision,
    /// Which encoder `/embed`, `/embed_all` and `/v1/embeddings` run
    /// (the same one when tied): passages by default, what an index holds.
    pub embed_side: Side,
    /// The name `/info` and `/v1/embeddings` give (default: the bundle
    /// folder's last component, never a full path).
    pub served_model_name: Option<String>,
    /// Requests must carry `Authorization: Bearer KEY` (all routes but
    /// `/health`, `/ping`, `GET /` and `/metrics`, as in TEI).
    pub api_key: Option<String>,
    /// The limits.
    pub limits: Limits,
    /// The timeouts.
    pub timeouts: Timeouts,
}

/// Prints one line on stdout at once: the lines tests and supervisors wait
/// for (`listening on`, `ready`, `stopping`, the faults).
pub(crate) fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Serves until SIGTERM or SIGINT: stops accepting, answers what is in
/// flight for up to the shutdown timeout, cuts what is left, returns.
/// Prints `listening on http://ADDRESS` on stdout once the socket is bound
/// (the model loads meanwhile; `/health` is 503 until it has), `ready`
/// once the model is loaded, and `stopping: WHY` when it stops.
///
/// # Errors
/// [`AppError::Core`] for bad limits, a socket that cannot be bound, or a
/// bundle that cannot be loaded (the server then stops);
/// [`AppError::ModelDied`] when the model thread died while serving (the
/// binary exits with [`EXIT_MODEL_DIED`]).
pub fn run(config: ServeConfig) -> Result<()> {
    config.limits.validate()?;
    config.timeouts.validate()?;
    // A folder that is no bundle fails here, before anything listens.
    let file = config.model.join(crate::app::scorer::BUNDLE_FILE);
    if !file.is_file() {
        return Err(crate::error::not_found(&file, "not a gradcache model bundle (no gradcache.json)").into());
    }
    // Tokenization runs on the blocking pool: its size is the workers'.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(config.limits.tokenization_workers)
        .build()
        .map_err(|e| io(&config.model, e))?;
    let result = runtime.block_on(serve(config));
    // Connections cut at the deadline may leave tasks behind: not waited for.
    runtime.shutdown_background();
    result
}

fn io(path: &std::path::Path, e: std::io::Error) -> AppError {
    GradCacheError::Io { path: path.to_path_buf(), source: e }.into()
}

/// Why the server stops.
enum Stop {
    /// SIGTERM or SIGINT.
    Signal,
    /// The model thread ended on its own (a panic).
    ModelDied(String),
}

/// Sets the model's liveness flag and reports the thread's end when the
/// model thread ends, by return or by panic.
struct EndGuard {
    alive: Arc<AtomicBool>,
    ended: Option<tokio::sync::oneshot::Sender<String>>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::SeqCst);
        let why = if std::thread::panicking() { "the model thread panicked" } else { "the model thread ended" };
        if let Some(ended) = self.ended.take() {
            let _ = ended.send(why.to_string());
        }
    }
}

async fn signals() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match terminate.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! { _ = interrupt => {}, _ = term => {} }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

async fn serve(config: ServeConfig) -> Result<()> {
    // Histograms with buckets for what they count: seconds, tokens, entries.
    use metrics_exporter_prometheus::Matcher;
    let seconds = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];
    let counts: Vec<f64> = (0..17).map(|i| f64::from(1u32 << i)).collect();
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("duration".into()), &seconds)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full("te_request_input_length".into()), &counts))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Prefix("te_batch_next".into()), &counts))
        .ok()
        .and_then(|b| b.install_recorder().ok());
    let listener = tokio::net::TcpListener::bind(config.address).await.map_err(|e| io(&config.model, e))?;
    let address = listener.local_addr().map_err(|e| io(&config.model, e))?;
    let faults = faults::Faults::from_env();
    if let Some(f) = &faults {
        tokio::spawn(f.clone().listen());
    }
    let (queue, requests) = mpsc::unbounded_channel();
    let (to_model, commands) = mpsc::channel(1);
    let queued = Arc::new(AtomicUsize::new(0));
    let alive = Arc::new(AtomicBool::new(true));
    let state = Arc::new(router::AppState {
        config: config.clone(),
        loaded: OnceLock::new(),
        failed: AtomicBool::new(false),
        alive: alive.clone(),
        queue,
        model: to_model.clone(),
        queued: queued.clone(),
        permits: Arc::new(Semaphore::new(config.limits.max_concurrent_requests)),
        prometheus,
    });
    let limits =
        queue::BatchLimits { max_batch_tokens: config.limits.max_batch_tokens, max_batch_requests: config.limits.max_batch_requests };
    let batcher = tokio::spawn(queue::batching_task(requests, to_model, limits, queued));
    // The backend thread loads the bundle, tells the router, then runs
    // commands until every sender is gone.
    let (ready, loaded) = tokio::sync::oneshot::channel::<Result<router::Loaded>>();
    let (ended, mut model_ended) = tokio::sync::oneshot::channel::<String>();
    let backend_config = config.clone();
    let backend = std::thread::Builder::new()
        .name("gradcache-model".into())
        .spawn(move || {
            let _guard = EndGuard { alive, ended: Some(ended) };
            match load(&backend_config) {
                Ok((scorer, info)) => {
                    let _ = ready.send(Ok(info));
                    backend::run(&scorer, commands, backend_config.embed_side, faults.as_deref());
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        })
        .map_err(|e| io(&config.model, e))?;
    say(&format!("listening on http://{address}"));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = router::routes(state.clone());
    let accepting = tokio::spawn(connections::serve(listener, app, config.limits.max_connections, config.timeouts, stop_rx));
    let load_result = match loaded.await {
        Ok(Ok(l)) => {
            let _ = state.loaded.set(l);
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(GradCacheError::InvalidConfig { field: "model", reason: "the model thread ended while loading" }.into()),
    };
    if let Err(e) = load_result {
        state.failed.store(true, Ordering::Relaxed);
        return Err(e);
    }
    say("ready");
    let stop = tokio::select! {
        _ = signals() => Stop::Signal,
        why = &mut model_ended => Stop::ModelDied(why.unwrap_or_else(|_| "the model thread ended".into())),
    };
    match &stop {
        Stop::Signal => say("stopping: signal"),
        Stop::ModelDied(why) => {
            say(&format!("stopping: {why}"));
            eprintln!("gradcache serve: {why}; stopping with exit code {EXIT_MODEL_DIED} so that a supervisor restarts the server");
        }
    }
    let _ = stop_tx.send(true);
    let _ = accepting.await;
    // Every connection is done or cut: closing the queue ends the batcher,
    // then the backend.
    drop(state);
    let _ = batcher.await;
    let joined = tokio::task::spawn_blocking(move || backend.join()).await;
    match (stop, joined) {
        (Stop::Signal, Ok(Ok(()))) => Ok(()),
        (Stop::ModelDied(why), _) => Err(AppError::ModelDied { reason: why }),
        (Stop::Signal, _) => Err(AppError::ModelDied { reason: "the model thread panicked while stopping".into() }),
    }
}

/// Accepting and serving connections with hyper directly: a timer for
/// the head, a cap on open connections, and a graceful stop with a
/// deadline (axum's `serve` has none of these).
mod connections {
    use std::sync::Arc;

    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use tokio::sync::{watch, Semaphore};
    use tokio::task::JoinSet;

    use super::Timeouts;

    async fn stopped(stop: &mut watch::Receiver<bool>) {
        let _ = stop.wait_for(|s| *s).await;
    }

    pub(super) async fn serve(
        listener: tokio::net::TcpListener,
        app: axum::Router,
        max_connections: usize,
        timeouts: Timeouts,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(std::time::Duration::from_secs(timeouts.header_read));
        let open = Arc::new(Semaphore::new(max_connections));
        let graceful = GracefulShutdown::new();
        let mut tasks = JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            // A free slot first: past the cap, new connections wait in the
            // backlog rather than each taking a socket and a task.
            let permit = tokio::select! {
                p = open.clone().acquire_owned() => p,
                _ = stopped(&mut stop) => break,
            };
            let Ok(permit) = permit else { break };
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a
                        // little instead of spinning on the error.
                        eprintln!("gradcache serve: accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stopped(&mut stop) => break,
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tasks.spawn(async move {
                let _ = connection.await;
                drop(permit);
            });
        }
        drop(listener);
        // In-flight requests are answered, idle connections closed; past
        // the deadline whatever is still open is cut.
        if tokio::time::timeout(std::time::Duration::from_secs(timeouts.shutdown), graceful.shutdown()).await.is_err() {
            eprintln!("gradcache serve: {} connection(s) still open after the {} s shutdown timeout: cut", tasks.len(), timeouts.shutdown);
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// Loads the bundle and describes it for the router.
fn load(config: &ServeConfig) -> Result<(Scorer, router::Loaded)> {
    let device = crate::runtime::parse_device(&config.device)?;
    let scorer = Scorer::load(&config.model, device)?.with_precision(config.precision)?;
    let model = scorer.config();
    let head = serde_json::to_value(&model.head).ok().and_then(|v| v["kind"].as_str().map(str::to_string)).unwrap_or_default();
    let token_encoder = model.encoder.pooling() == crate::models::encoders::Pooling::Tokens;
    // The width of `/embed`'s vectors, measured on one text.
    let probe = scorer
        .encode_tokens(&crate::core::batch::TokenBatch::from_ids(&[scorer.tokenizer().ids_untruncated("width")?])?, config.embed_side)?;
    let dim = crate::app::retrieval::pooled_vectors(&probe)?.size()[1] as usize;
    let name = served_name(config);
    // TEI clamps the input length to the batch budget: a text of the
    // model's full length must fit in one batch.
    let max_input_length = model.max_len.min(config.limits.max_batch_tokens);
    if max_input_length < model.max_len {
        eprintln!(
            "gradcache serve: the model reads up to {} tokens but --max-batch-tokens is {}: inputs are cut (or refused) at {max_input_length} tokens; raise --max-batch-tokens to serve the full length",
            model.max_len, config.limits.max_batch_tokens
        );
    }
    let info = types::Info {
        model_id: name.clone(),
        model_sha: None,
        model_dtype: match scorer.precision() {
            Precision::Bf16 => "bfloat16".into(),
            _ => "float32".into(),
        },
        served_model_name: name,
        model_type: types::ModelType::Reranker(types::RerankerModel {
            id2label: [("0".to_string(), "score".to_string())].into(),
            label2id: [("score".to_string(), 0)].into(),
            head,
            embed_side: router::side_name(config.embed_side).into(),
            token_encoder,
            embed_returns: embed_returns(&model.head).into(),
        }),
        max_concurrent_requests: config.limits.max_concurrent_requests,
        max_input_length,
        max_batch_tokens: config.limits.max_batch_tokens,
        max_batch_requests: config.limits.max_batch_requests,
        max_client_batch_size: config.limits.max_client_batch_size,
        auto_truncate: config.limits.auto_truncate,
        tokenization_workers: config.limits.tokenization_workers,
        version: env!("CARGO_PKG_VERSION"),
        sha: None,
        docker_label: None,
    };
    let tokenizer = scorer.tokenizer().clone();
    let vocab_size = tokenizer.vocab_size();
    let compute_type = if device.is_cuda() { "gpu" } else { "cpu" };
    Ok((scorer, router::Loaded { tokenizer, info, dim, vocab_size, compute_type }))
}

/// The name clients see: `--served-model-name`, else the bundle folder's
/// last component (a full path would publish the server's file system).
fn served_name(config: &ServeConfig) -> String {
    config.served_model_name.clone().unwrap_or_else(|| {
        let folder = config.model.canonicalize().unwrap_or_else(|_| config.model.clone());
        folder.file_name().map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned())
    })
}

/// What `/embed` returns for a bundle with `head`, for `/info`.
fn embed_returns(head: &crate::models::heads::HeadConfig) -> &'static str {
    match head {
        crate::models::heads::HeadConfig::Mol(_) => {
            "the encoder's pooled vectors (the cosine first stage's), not the Mixture of Logits head's component embeddings: `gradcache encode` writes those (`components` [n, P, c]) for `gradcache eval --first-stage head-union|head-mean`"
        }
        _ => "the encoder's pooled vectors (the cosine first stage's)",
    }
}
