//! The router: HTTP, validation, limits, tokenization (on tokio's blocking
//! threads, off the model thread), the queue, metrics. The model itself
//! lives on the backend's thread.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::queue::{Answer, Entry, Job};
use super::types::*;
use super::ServeConfig;
use crate::core::layout::Side;
use crate::models::text::TextTokenizer;

/// What the handlers share.
pub(crate) struct AppState {
    pub config: ServeConfig,
    /// Set once the model is loaded (`/health` is 503 before).
    pub loaded: OnceLock<Loaded>,
    pub failed: AtomicBool,
    pub queue: mpsc::UnboundedSender<Vec<Entry>>,
    pub queued: Arc<AtomicUsize>,
    pub permits: Arc<Semaphore>,
    pub prometheus: Option<PrometheusHandle>,
}

/// What the backend tells the router once the bundle is loaded.
pub(crate) struct Loaded {
    pub tokenizer: TextTokenizer,
    pub info: Info,
    /// The width of `/embed`'s vectors.
    pub dim: usize,
}

/// An error as TEI answers it: its status and `{error, error_type}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: u16,
    kind: ErrorType,
    message: String,
}

impl ApiError {
    pub(crate) fn new(kind: ErrorType, message: impl Into<String>) -> Self {
        ApiError { status: kind.status(), kind, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("te_request_failure", "err" => self.kind.metric_label()).increment(1);
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorResponse { error: self.message, error_type: self.kind })).into_response()
    }
}

/// A JSON body whose rejections (bad JSON, wrong types, a body over the
/// payload limit, a missing content type) answer in TEI's error body with
/// axum's status for each.
pub(crate) struct TeiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for TeiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(TeiJson(v)),
            Err(rejection) => {
                let status = rejection.status().as_u16();
                Err(ApiError { status, kind: ErrorType::Validation, message: rejection.body_text() })
            }
        }
    }
}

type Shared = State<Arc<AppState>>;

/// The routes.
pub(crate) fn routes(state: Arc<AppState>) -> Router {
    let limit = state.config.limits.payload_limit;
    Router::new()
        .route("/rerank", post(rerank))
        .route("/", post(rerank).get(health))
        .route("/embed", post(embed))
        .route("/embed_all", post(embed_all))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/embeddings", post(openai_embeddings))
        .route("/info", get(info))
        .route("/health", get(health))
        .route("/ping", get(health))
        .route("/metrics", get(metrics_text))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// `Authorization: Bearer KEY` on every route but `/health` and `/ping`
/// when the server has `--api-key`.
async fn authorize(State(state): Shared, headers: HeaderMap, request: Request, next: Next) -> Response {
    let open = matches!(request.uri().path(), "/health" | "/ping");
    if let (Some(key), false) = (&state.config.api_key, open) {
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            metrics::counter!("te_request_failure", "err" => "unauthorized").increment(1);
            let body = serde_json::json!({"error": "missing or wrong API key (Authorization: Bearer KEY)", "error_type": "Unauthorized"});
            return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
        }
    }
    next.run(request).await
}

fn loaded(state: &AppState) -> Result<&Loaded, ApiError> {
    state.loaded.get().ok_or_else(|| {
        let why = if state.failed.load(Ordering::Relaxed) { "the model failed to load" } else { "the model is loading" };
        ApiError::new(ErrorType::Unhealthy, why)
    })
}

/// 200 once the model is loaded, else 503 with TEI's body (not counted as
/// a failed request: a load balancer asks it in a loop).
async fn health(State(state): Shared) -> Response {
    match loaded(&state) {
        Ok(_) => StatusCode::OK.into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Json(ErrorResponse { error: "unhealthy".into(), error_type: ErrorType::Unhealthy })).into_response(),
    }
}

async fn info(State(state): Shared) -> Result<Json<Info>, ApiError> {
    Ok(Json(loaded(&state)?.info.clone()))
}

async fn metrics_text(State(state): Shared) -> Response {
    let text = state.prometheus.as_ref().map(PrometheusHandle::render).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Permits for `n` inputs, or 429.
fn permits(state: &AppState, n: usize) -> Result<OwnedSemaphorePermit, ApiError> {
    state
        .permits
        .clone()
        .try_acquire_many_owned(n as u32)
        .map_err(|_| ApiError::new(ErrorType::Overloaded, "Model is overloaded"))
}

/// Checks a request's number of inputs against the client batch limit.
fn check_count(state: &AppState, n: usize, what: &str) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::new(ErrorType::Empty, format!("`{what}` cannot be empty")));
    }
    let max = state.config.limits.max_client_batch_size;
    if n > max {
        return Err(ApiError::new(ErrorType::Validation, format!("batch size {n} > maximum allowed batch size {max}")));
    }
    Ok(())
}

/// Tokenizes texts on a blocking thread: each text's ids, cut to the
/// model's length when `truncate` (else refused over it).
async fn tokenize(state: &Arc<AppState>, texts: Vec<String>, truncate: Option<bool>, direction: TruncationDirection) -> Result<Vec<Vec<i64>>, ApiError> {
    let tokenizer = loaded(state)?.tokenizer.clone();
    let truncate = truncate.unwrap_or(state.config.limits.auto_truncate);
    let started = Instant::now();
    let ids = tokio::task::spawn_blocking(move || -> Result<Vec<Vec<i64>>, ApiError> {
        texts
            .iter()
            .map(|t| {
                let ids = tokenizer.ids_untruncated(t).map_err(|e| ApiError::new(ErrorType::Tokenizer, e.to_string()))?;
                if ids.len() > tokenizer.max_len() && !truncate {
                    return Err(ApiError::new(
                        ErrorType::Validation,
                        format!("Input validation error: `inputs` must have less than {} tokens. Given: {}", tokenizer.max_len(), ids.len()),
                    ));
                }
                Ok(tokenizer.truncate(ids, direction == TruncationDirection::Left))
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::new(ErrorType::Tokenizer, e.to_string()))??;
    metrics::histogram!("te_request_tokenization_duration").record(started.elapsed().as_secs_f64());
    for row in &ids {
        metrics::histogram!("te_request_input_length").record(row.len() as f64);
    }
    Ok(ids)
}

/// Queues a request's jobs together and waits for every answer (dropped,
/// with its queued work, when the client goes away).
async fn submit(state: &AppState, jobs: Vec<Job>) -> Result<Vec<Answer>, ApiError> {
    let mut waits = Vec::with_capacity(jobs.len());
    let mut entries = Vec::with_capacity(jobs.len());
    for job in jobs {
        let (reply, wait) = oneshot::channel();
        let tokens = job.ids().len();
        entries.push(Entry { job, tokens, queued: Instant::now(), reply });
        waits.push(wait);
    }
    state.queued.fetch_add(entries.len(), Ordering::Relaxed);
    metrics::gauge!("te_queue_size").set(state.queued.load(Ordering::Relaxed) as f64);
    state.queue.send(entries).map_err(|_| ApiError::new(ErrorType::Unhealthy, "the server is shutting down"))?;
    let mut answers = Vec::with_capacity(waits.len());
    for wait in waits {
        match wait.await {
            Ok(Ok(a)) => answers.push(a),
            Ok(Err(message)) => return Err(ApiError::new(ErrorType::Backend, message)),
            Err(_) => return Err(ApiError::new(ErrorType::Backend, "the model dropped the request")),
        }
    }
    Ok(answers)
}

/// Counts a request and times it, then counts its success.
struct Timed {
    method: &'static str,
    started: Instant,
}

impl Timed {
    fn start(method: &'static str) -> Self {
        metrics::counter!("te_request_count", "method" => method).increment(1);
        Timed { method, started: Instant::now() }
    }

    fn succeeded(self) {
        metrics::counter!("te_request_success", "method" => self.method).increment(1);
        metrics::histogram!("te_request_duration").record(self.started.elapsed().as_secs_f64());
    }
}

async fn rerank(State(state): Shared, TeiJson(r): TeiJson<RerankRequest>) -> Result<Json<Vec<Rank>>, ApiError> {
    let timed = Timed::start("rerank");
    loaded(&state)?;
    check_count(&state, r.texts.len(), "texts")?;
    if r.query.trim().is_empty() {
        return Err(ApiError::new(ErrorType::Validation, "`query` cannot be empty"));
    }
    let _permits = permits(&state, r.texts.len())?;
    let mut texts = vec![r.query];
    texts.extend(r.texts.iter().cloned());
    let mut ids = tokenize(&state, texts, r.truncate, r.truncation_direction).await?;
    let query = Arc::new(ids.remove(0));
    let jobs = ids.into_iter().map(|passage| Job::Pair { query: query.clone(), passage }).collect();
    let answers = submit(&state, jobs).await?;
    let mut ranks = Vec::with_capacity(answers.len());
    for (index, a) in answers.into_iter().enumerate() {
        let Answer::Score(s) = a else { return Err(ApiError::new(ErrorType::Backend, "the model answered a rerank with no score")) };
        if !s.is_finite() {
            return Err(ApiError::new(ErrorType::Backend, format!("the head scored text {index} {s}")));
        }
        let score = if r.raw_scores { s } else { 1.0 / (1.0 + (-s).exp()) };
        ranks.push(Rank { index, text: r.return_text.then(|| r.texts[index].clone()), score });
    }
    ranks.sort_by(|a, b| crate::app::metrics::by_descending_score(&(a.index, f64::from(a.score)), &(b.index, f64::from(b.score))));
    timed.succeeded();
    Ok(Json(ranks))
}

/// Checks an embedding request's options against the model.
fn check_embed_options(state: &AppState, prompt_name: &Option<String>, dimensions: Option<usize>) -> Result<(), ApiError> {
    if let Some(name) = prompt_name {
        return Err(ApiError::new(ErrorType::Validation, format!("prompt `{name}` is not in the model's configuration (a gradcache bundle has no prompts)")));
    }
    let dim = loaded(state)?.dim;
    if let Some(d) = dimensions {
        if d == 0 || d > dim {
            return Err(ApiError::new(ErrorType::Validation, format!("`dimensions` must be between 1 and {dim}, the model's width")));
        }
    }
    Ok(())
}

/// Embeds texts; each answer a vector.
async fn embed_texts(state: &Arc<AppState>, texts: Vec<String>, options: &TextOptions, normalize: bool, dimensions: Option<usize>) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
    check_count(state, texts.len(), "inputs")?;
    let _permits = permits(state, texts.len())?;
    let ids = tokenize(state, texts, options.truncate, options.truncation_direction).await?;
    let tokens = ids.iter().map(Vec::len).sum();
    let answers = submit(state, ids.into_iter().map(|ids| Job::Embed { ids, normalize, dimensions }).collect()).await?;
    let vectors = answers.into_iter().map(|a| if let Answer::Vector(v) = a { v } else { Vec::new() }).collect();
    Ok((vectors, tokens))
}

async fn embed(State(state): Shared, TeiJson(r): TeiJson<EmbedRequest>) -> Result<Json<Vec<Vec<f32>>>, ApiError> {
    let timed = Timed::start("embed");
    check_embed_options(&state, &r.options.prompt_name, r.dimensions)?;
    let (vectors, _) = embed_texts(&state, r.inputs.into_texts(), &r.options, r.normalize, r.dimensions).await?;
    timed.succeeded();
    Ok(Json(vectors))
}

async fn embed_all(State(state): Shared, TeiJson(r): TeiJson<EmbedAllRequest>) -> Result<Json<Vec<Vec<Vec<f32>>>>, ApiError> {
    let timed = Timed::start("embed_all");
    check_embed_options(&state, &r.options.prompt_name, None)?;
    let ModelType::Reranker(model) = &loaded(&state)?.info.model_type;
    if !model.token_encoder {
        return Err(ApiError::new(ErrorType::Validation, "`/embed_all` needs a bundle whose encoders give token vectors (pooling `tokens`: MaxSim, interaction heads); this one pools"));
    }
    let texts = r.inputs.into_texts();
    check_count(&state, texts.len(), "inputs")?;
    let _permits = permits(&state, texts.len())?;
    let ids = tokenize(&state, texts, r.options.truncate, r.options.truncation_direction).await?;
    let answers = submit(&state, ids.into_iter().map(|ids| Job::EmbedTokens { ids }).collect()).await?;
    timed.succeeded();
    Ok(Json(answers.into_iter().map(|a| if let Answer::Tokens(t) = a { t } else { Vec::new() }).collect()))
}

/// OpenAI's error body: `{message, code, type}`.
struct OpenAiError(ApiError);

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let e = self.0;
        metrics::counter!("te_request_failure", "err" => e.kind.metric_label()).increment(1);
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(serde_json::json!({"message": e.message, "code": e.status, "type": e.kind}))).into_response()
    }
}

async fn openai_embeddings(State(state): Shared, body: Result<TeiJson<OpenAiEmbeddingsRequest>, ApiError>) -> Result<Json<OpenAiEmbeddingsResponse>, OpenAiError> {
    let timed = Timed::start("embed");
    let TeiJson(r) = body.map_err(OpenAiError)?;
    check_embed_options(&state, &None, r.dimensions).map_err(OpenAiError)?;
    let (vectors, tokens) = embed_texts(&state, r.input.into_texts(), &TextOptions::default(), true, r.dimensions).await.map_err(OpenAiError)?;
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = match r.encoding_format {
                EncodingFormat::Float => serde_json::json!(v),
                EncodingFormat::Base64 => {
                    use base64::Engine;
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            OpenAiEmbedding { object: "embedding", embedding, index }
        })
        .collect();
    timed.succeeded();
    let model = loaded(&state).map_err(OpenAiError)?.info.served_model_name.clone();
    Ok(Json(OpenAiEmbeddingsResponse { object: "list", data, model, usage: OpenAiUsage { prompt_tokens: tokens, total_tokens: tokens } }))
}

/// The `/embed` side's name in `/info`.
pub(crate) fn side_name(side: Side) -> &'static str {
    match side {
        Side::Queries => "queries",
        Side::Passages => "passages",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unloaded() -> (Arc<AppState>, mpsc::UnboundedReceiver<Vec<Entry>>) {
        let (queue, requests) = mpsc::unbounded_channel();
        let config = ServeConfig {
            model: "bundle".into(),
            address: ([127, 0, 0, 1], 0).into(),
            device: "cpu".into(),
            precision: crate::runtime::precision::Precision::F32,
            embed_side: Side::Passages,
            served_model_name: None,
            api_key: None,
            limits: super::super::Limits::default(),
        };
        let state = AppState { config, loaded: OnceLock::new(), failed: AtomicBool::new(false), queue, queued: Arc::new(AtomicUsize::new(0)), permits: Arc::new(Semaphore::new(4)), prometheus: None };
        (Arc::new(state), requests)
    }

    #[test]
    fn until_the_model_is_loaded_health_is_503_and_work_is_refused_unqueued() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (state, mut requests) = unloaded();
            assert_eq!(health(State(state.clone())).await.status(), StatusCode::SERVICE_UNAVAILABLE);
            let request = RerankRequest { query: "q".into(), texts: vec!["t".into()], truncate: None, truncation_direction: TruncationDirection::Right, raw_scores: false, return_text: false };
            let refused = rerank(State(state.clone()), TeiJson(request)).await.unwrap_err();
            assert_eq!((refused.status, refused.kind, refused.message.as_str()), (503, ErrorType::Unhealthy, "the model is loading"));
            assert!(requests.try_recv().is_err(), "work was queued for a model that is not there");
            state.failed.store(true, Ordering::Relaxed);
            assert_eq!(info(State(state)).await.unwrap_err().message, "the model failed to load");
        });
    }
}
