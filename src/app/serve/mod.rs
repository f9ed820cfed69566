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
mod queue;
mod router;
pub mod types;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};

use crate::app::error::{AppError, Result};
use crate::app::scorer::Scorer;
use crate::core::layout::Side;
use crate::error::GradCacheError;
use crate::runtime::precision::Precision;

/// The server's limits, TEI's flags with TEI's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Inputs (a rerank request's pairs, an embed request's texts) in
    /// flight at once; over it, 429.
    pub max_concurrent_requests: usize,
    /// Padded tokens per batch (entries × the longest entry's tokens).
    pub max_batch_tokens: usize,
    /// Entries per batch, at most (`None`: no limit but the tokens).
    pub max_batch_requests: Option<usize>,
    /// Texts per request; over it, 422.
    pub max_client_batch_size: usize,
    /// Bytes per request body; over it, 413.
    pub payload_limit: usize,
    /// Cut texts over the model's length unless a request says
    /// `truncate: false` (then 422).
    pub auto_truncate: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_concurrent_requests: 512, max_batch_tokens: 16384, max_batch_requests: None, max_client_batch_size: 32, payload_limit: 2_000_000, auto_truncate: true }
    }
}

impl Limits {
    /// Checks every limit.
    ///
    /// # Errors
    /// [`GradCacheError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> crate::error::Result<()> {
        let positive = [
            ("max_concurrent_requests", self.max_concurrent_requests),
            ("max_batch_tokens", self.max_batch_tokens),
            ("max_client_batch_size", self.max_client_batch_size),
            ("payload_limit", self.payload_limit),
            ("max_batch_requests", self.max_batch_requests.unwrap_or(1)),
        ];
        match positive.iter().find(|(_, v)| *v == 0) {
            Some(&(field, _)) => Err(GradCacheError::InvalidConfig { field, reason: "must be at least 1" }),
            None if self.max_concurrent_requests > Semaphore::MAX_PERMITS || self.max_client_batch_size > u32::MAX as usize => {
                Err(GradCacheError::InvalidConfig { field: "max_concurrent_requests", reason: "is too large" })
            }
            None => Ok(()),
        }
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
    /// The name `/info` and `/v1/embeddings` give (default: the bundle's
    /// folder).
    pub served_model_name: Option<String>,
    /// Requests must carry `Authorization: Bearer KEY` (all routes but
    /// `/health` and `/ping`).
    pub api_key: Option<String>,
    /// The limits.
    pub limits: Limits,
}

/// Serves until SIGTERM or SIGINT: stops accepting, answers what is in
/// flight, returns. Prints `listening on http://ADDRESS` on stdout once the
/// socket is bound (the model loads meanwhile; `/health` is 503 until it
/// has).
///
/// # Errors
/// [`AppError::Core`] for bad limits, a socket that cannot be bound, or a
/// bundle that cannot be loaded (the server then stops).
pub fn run(config: ServeConfig) -> Result<()> {
    config.limits.validate()?;
    // A folder that is no bundle fails here, before anything listens.
    let file = config.model.join(crate::app::scorer::BUNDLE_FILE);
    if !file.is_file() {
        return Err(crate::error::not_found(&file, "not a gradcache model bundle (no gradcache.json)").into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| io(&config.model, e))?;
    runtime.block_on(serve(config))
}

fn io(path: &std::path::Path, e: std::io::Error) -> AppError {
    GradCacheError::Io { path: path.to_path_buf(), source: e }.into()
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
    let (queue, requests) = mpsc::unbounded_channel();
    let (to_model, batches) = mpsc::channel(1);
    let queued = Arc::new(AtomicUsize::new(0));
    let state = Arc::new(router::AppState {
        config: config.clone(),
        loaded: OnceLock::new(),
        failed: AtomicBool::new(false),
        queue,
        queued: queued.clone(),
        permits: Arc::new(Semaphore::new(config.limits.max_concurrent_requests)),
        prometheus,
    });
    let limits = queue::BatchLimits { max_batch_tokens: config.limits.max_batch_tokens, max_batch_requests: config.limits.max_batch_requests };
    let batcher = tokio::spawn(queue::batching_task(requests, to_model, limits, queued));
    // The backend thread loads the bundle, tells the router, then runs
    // batches until the queue closes.
    let (ready, loaded) = tokio::sync::oneshot::channel::<Result<router::Loaded>>();
    let backend_config = config.clone();
    let backend = std::thread::Builder::new()
        .name("gradcache-model".into())
        .spawn(move || match load(&backend_config) {
            Ok((scorer, info)) => {
                let _ = ready.send(Ok(info));
                backend::run(&scorer, batches, backend_config.embed_side);
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        })
        .map_err(|e| io(&config.model, e))?;
    println!("listening on http://{address}");
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let app = router::routes(state.clone());
    let shutdown = async {
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
    };
    let server = tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(shutdown).await });
    let load_result = match loaded.await {
        Ok(Ok(l)) => {
            let _ = state.loaded.set(l);
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(GradCacheError::InvalidConfig { field: "model", reason: "the model thread ended while loading" }.into()),
    };
    if let Err(e) = load_result {
        state.failed.store(true, std::sync::atomic::Ordering::Relaxed);
        return Err(e);
    }
    let served = server.await;
    // Every handler is done: closing the queue ends the batcher, then the
    // backend.
    drop(state);
    let _ = batcher.await;
    let _ = backend.join();
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(io(&config.model, e)),
        Err(e) => Err(io(&config.model, std::io::Error::other(e.to_string()))),
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
    let probe = scorer.encode_tokens(&crate::core::batch::TokenBatch::from_ids(&[scorer.tokenizer().ids_untruncated("width")?])?, config.embed_side)?;
    let dim = crate::app::retrieval::pooled_vectors(&probe)?.size()[1] as usize;
    let name = config.served_model_name.clone().unwrap_or_else(|| config.model.display().to_string());
    let info = types::Info {
        model_id: config.model.display().to_string(),
        model_sha: None,
        model_dtype: match config.precision {
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
        }),
        max_concurrent_requests: config.limits.max_concurrent_requests,
        max_input_length: model.max_len,
        max_batch_tokens: config.limits.max_batch_tokens,
        max_batch_requests: config.limits.max_batch_requests,
        max_client_batch_size: config.limits.max_client_batch_size,
        auto_truncate: config.limits.auto_truncate,
        tokenization_workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        version: env!("CARGO_PKG_VERSION"),
        sha: None,
        docker_label: None,
    };
    let tokenizer = scorer.tokenizer().clone();
    Ok((scorer, router::Loaded { tokenizer, info, dim }))
}
