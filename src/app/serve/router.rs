//! The router: HTTP, validation, limits, tokenization (on the blocking
//! pool, inside the concurrency permits, after a cut by characters), the
//! queue, metrics, health. The model itself lives on the backend's thread.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::queue::{Answer, BackendError, Command, Entry, Job};
use super::types::*;
use super::{ServeConfig, CHARS_PER_TOKEN};
use crate::core::layout::Side;
use crate::models::text::TextTokenizer;

/// What the handlers share.
pub(crate) struct AppState {
    pub config: ServeConfig,
    /// Set once the model is loaded (`/health` is 503 before).
    pub loaded: OnceLock<Loaded>,
    /// The model failed to load.
    pub failed: AtomicBool,
    /// False once the model thread has ended.
    pub alive: Arc<AtomicBool>,
    pub queue: mpsc::UnboundedSender<Vec<Entry>>,
    /// The model thread's commands (health checks go straight to it).
    pub model: mpsc::Sender<Command>,
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
    /// Token ids must be below it.
    pub vocab_size: usize,
    /// TEI's `x-compute-type`: `gpu` or `cpu`, where the model was
    /// loaded (`--device auto` included).
    pub compute_type: &'static str,
}

/// An error as TEI answers it: its status and `{error, error_type}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: u16,
    kind: ErrorType,
    message: String,
    /// The `err` label of `te_request_failure` when it is not the kind's.
    label: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn new(kind: ErrorType, message: impl Into<String>) -> Self {
        ApiError { status: kind.status(), kind, message: message.into(), label: None }
    }

    fn labelled(mut self, label: &'static str) -> Self {
        self.label = Some(label);
        self
    }

    fn count(&self) {
        metrics::counter!("te_request_failure", "err" => self.label.unwrap_or(self.kind.metric_label())).increment(1);
    }

    /// A backend's error: 503 once the model thread is gone, else 424.
    fn backend(state: &AppState, error: BackendError) -> Self {
        if !state.alive.load(Ordering::SeqCst) {
            return ApiError::new(ErrorType::Unhealthy, "the model thread died; the server is stopping");
        }
        ApiError::new(ErrorType::Backend, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.count();
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorResponse { error: self.message, error_type: self.kind })).into_response()
    }
}

/// Whether a body error was the body-read timeout.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// A JSON body whose rejections (bad JSON, wrong types, a body over the
/// payload limit, a missing content type, a body that stalled past the
/// body-read timeout: 408) answer in TEI's error body.
pub(crate) struct TeiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for TeiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(TeiJson(v)),
            Err(rejection) => {
                let status = if timed_out(&rejection) { 408 } else { rejection.status().as_u16() };
                Err(ApiError { status, kind: ErrorType::Validation, message: rejection.body_text(), label: None })
            }
        }
    }
}

type Shared = State<Arc<AppState>>;

/// The routes, with the body limit, the body-read and whole-request
/// timeouts, and the API key.
pub(crate) fn routes(state: Arc<AppState>) -> Router {
    let limit = state.config.limits.payload_limit;
    let timeouts = state.config.timeouts;
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
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(Duration::from_secs(timeouts.body_read)))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, Duration::from_secs(timeouts.request)))
        .with_state(state)
}

/// Routes TEI leaves open under `--api-key`: what load balancers and
/// Prometheus call.
fn open_route(method: &Method, path: &str) -> bool {
    matches!(path, "/health" | "/ping" | "/metrics") || (path == "/" && method == Method::GET)
}

/// `Authorization: Bearer KEY` on every route but the open ones when the
/// server has `--api-key`; without it, 401 with an empty body (as TEI).
async fn authorize(State(state): Shared, headers: HeaderMap, request: Request, next: Next) -> Response {
    if let (Some(key), false) = (&state.config.api_key, open_route(request.method(), request.uri().path())) {
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            metrics::counter!("te_request_failure", "err" => "unauthorized").increment(1);
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    next.run(request).await
}

fn loaded(state: &AppState) -> Result<&Loaded, ApiError> {
    if !state.alive.load(Ordering::SeqCst) && state.loaded.get().is_some() {
        return Err(ApiError::new(ErrorType::Unhealthy, "the model thread died; the server is stopping"));
    }
    state.loaded.get().ok_or_else(|| {
        let why = if state.failed.load(Ordering::Relaxed) { "the model failed to load" } else { "the model is loading" };
        ApiError::new(ErrorType::Unhealthy, why)
    })
}

/// Asks the model thread to answer between batches, within the health
/// timeout.
async fn backend_health(state: &AppState) -> Result<(), ApiError> {
    loaded(state)?;
    let (reply, answered) = oneshot::channel();
    let ask = async {
        state.model.send(Command::Health(reply)).await.ok()?;
        answered.await.ok()
    };
    match tokio::time::timeout(Duration::from_secs(state.config.timeouts.health), ask).await {
        Ok(Some(())) => Ok(()),
        Ok(None) => Err(ApiError::new(ErrorType::Unhealthy, "the model thread is gone")),
        Err(_) => Err(ApiError::new(
            ErrorType::Unhealthy,
            format!("the model did not answer within the {} s health timeout", state.config.timeouts.health),
        )),
    }
}

/// 200 with an empty body when the model thread answers, else 503 with
/// TEI's body (not counted as a failed request: a load balancer asks it in
/// a loop).
async fn health(State(state): Shared) -> Response {
    match backend_health(&state).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Json(ErrorResponse { error: "unhealthy".into(), error_type: ErrorType::Unhealthy }))
            .into_response(),
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
    state.permits.clone().try_acquire_many_owned(n as u32).map_err(|_| ApiError::new(ErrorType::Overloaded, "Model is overloaded"))
}

/// Checks a request's number of inputs against the client batch limit.
fn check_count(state: &AppState, n: usize, what: &str) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::new(ErrorType::Empty, format!("`{what}` cannot be empty")));
    }
    let max = state.config.limits.max_client_batch_size;
    if n > max {
        return Err(
            ApiError::new(ErrorType::Validation, format!("batch size {n} > maximum allowed batch size {max}")).labelled("batch_size")
        );
    }
    Ok(())
}

/// A request's inputs as token ids, and what it took.
struct Tokenized {
    ids: Vec<Vec<i64>>,
    characters: usize,
    took: Duration,
}

/// A text of `chars` characters cut to `max_chars` from the kept end:
/// what tokenization then reads.
fn cut_chars(text: &str, chars: usize, max_chars: usize, from_left: bool) -> &str {
    if chars <= max_chars {
        text
    } else if from_left {
        text.char_indices().nth(chars - max_chars).map_or("", |(i, _)| &text[i..])
    } else {
        text.char_indices().nth(max_chars).map_or(text, |(i, _)| &text[..i])
    }
}

/// Turns inputs into token ids: texts on the blocking pool (each cut to
/// `max_input_length × CHARS_PER_TOKEN` characters first), ids checked
/// against the vocabulary; each cut to the input length when `truncate`,
/// else refused over it. `permit` is held until tokenization ends, even if
/// the client hangs up meanwhile, so that the work in the pool stays
/// within the concurrency limit.
async fn tokenize(
    state: &Arc<AppState>,
    inputs: Vec<InputType>,
    truncate: Option<bool>,
    direction: TruncationDirection,
    permit: &Arc<OwnedSemaphorePermit>,
) -> Result<Tokenized, ApiError> {
    let model = loaded(state)?;
    let (tokenizer, max_len, vocab) = (model.tokenizer.clone(), model.info.max_input_length, model.vocab_size);
    let truncate = truncate.unwrap_or(state.config.limits.auto_truncate);
    let from_left = direction == TruncationDirection::Left;
    let max_chars = max_len.saturating_mul(CHARS_PER_TOKEN);
    let started = Instant::now();
    let permit = permit.clone();
    let (ids, characters) = tokio::task::spawn_blocking(move || -> Result<(Vec<Vec<i64>>, usize), ApiError> {
        let _permit = permit;
        let mut characters = 0;
        let mut out = Vec::with_capacity(inputs.len());
        for input in &inputs {
            let ids = match input {
                InputType::Text(t) if t.is_empty() => return Err(ApiError::new(ErrorType::Empty, "`inputs` cannot be empty")),
                InputType::Text(t) => {
                    let chars = t.chars().count();
                    if chars > max_chars && !truncate {
                        return Err(ApiError::new(
                            ErrorType::Validation,
                            format!("Input validation error: `inputs` has {chars} characters; with truncation off at most {max_chars} ({max_len} tokens × {CHARS_PER_TOKEN}) are read"),
                        ));
                    }
                    let text = cut_chars(t, chars, max_chars, from_left);
                    characters += chars.min(max_chars);
                    tokenizer.ids_untruncated(text).map_err(|e| ApiError::new(ErrorType::Tokenizer, e.to_string()))?
                }
                InputType::Ids(ids) if ids.is_empty() => return Err(ApiError::new(ErrorType::Empty, "`inputs` cannot be empty")),
                InputType::Ids(ids) => {
                    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                        return Err(ApiError::new(ErrorType::Validation, format!("Input validation error: token id {bad} is not in the vocabulary (ids are below {vocab})")));
                    }
                    ids.iter().map(|&id| i64::from(id)).collect()
                }
            };
            if ids.len() > max_len && !truncate {
                return Err(ApiError::new(ErrorType::Validation, format!("Input validation error: `inputs` must have less than {max_len} tokens. Given: {}", ids.len())));
            }
            out.push(match input {
                InputType::Text(_) => tokenizer.truncate_to(ids, max_len, from_left),
                InputType::Ids(_) if from_left => ids[ids.len().saturating_sub(max_len)..].to_vec(),
                InputType::Ids(_) => ids[..ids.len().min(max_len)].to_vec(),
            });
        }
        Ok((out, characters))
    })
    .await
    .map_err(|e| ApiError::new(ErrorType::Tokenizer, e.to_string()))??;
    let took = started.elapsed();
    metrics::histogram!("te_request_tokenization_duration").record(took.as_secs_f64());
    for row in &ids {
        metrics::histogram!("te_request_input_length").record(row.len() as f64);
    }
    Ok(Tokenized { ids, characters, took })
}

/// Counts a request whose future was dropped (the client hung up) while
/// its entries waited: `te_request_failure{err="cancelled"}`.
struct Waiting {
    armed: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.armed {
            metrics::counter!("te_request_failure", "err" => "cancelled").increment(1);
        }
    }
}

/// Queues a request's jobs together and waits for every answer (dropped,
/// with its queued work, when the client goes away); records the longest
/// queue and inference times among them in `timed`.
async fn submit(state: &AppState, jobs: Vec<Job>, timed: &mut Timed) -> Result<Vec<Answer>, ApiError> {
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
    let mut waiting = Waiting { armed: true };
    let mut answers = Vec::with_capacity(waits.len());
    for wait in waits {
        // A reply dropped unanswered: the batch it was in never answered
        // (a 503 when that is because the model thread is gone).
        match wait.await.unwrap_or(Err(BackendError::Unanswered)) {
            Ok(s) => {
                timed.queue = timed.queue.max(s.queue);
                timed.inference = timed.inference.max(s.inference);
                answers.push(s.answer);
            }
            Err(e) => {
                waiting.armed = false;
                return Err(ApiError::backend(state, e));
            }
        }
    }
    waiting.armed = false;
    Ok(answers)
}

/// A request's count and timing: TEI's counters and TEI's headers.
struct Timed {
    method: &'static str,
    started: Instant,
    characters: usize,
    tokens: usize,
    tokenization: Duration,
    queue: Duration,
    inference: Duration,
}

impl Timed {
    /// `inputs`: how many inputs the request has (TEI's `method` label is
    /// `single` for one, `batch` for more).
    fn start(inputs: usize) -> Self {
        let method = if inputs > 1 { "batch" } else { "single" };
        metrics::counter!("te_request_count", "method" => method).increment(1);
        Timed {
            method,
            started: Instant::now(),
            characters: 0,
            tokens: 0,
            tokenization: Duration::ZERO,
            queue: Duration::ZERO,
            inference: Duration::ZERO,
        }
    }

    fn tokenized(&mut self, t: &Tokenized) {
        self.characters = t.characters;
        self.tokens = t.ids.iter().map(Vec::len).sum();
        self.tokenization = t.took;
    }

    /// Counts the success and answers `body` with TEI's timing headers
    /// (milliseconds).
    fn succeeded(self, state: &AppState, body: impl IntoResponse) -> Response {
        let total = self.started.elapsed();
        metrics::counter!("te_request_success", "method" => self.method).increment(1);
        metrics::histogram!("te_request_duration").record(total.as_secs_f64());
        let mut response = body.into_response();
        let ms = |d: Duration| d.as_millis().to_string();
        let device = state.loaded.get().map_or("cpu", |l| l.compute_type);
        let headers = response.headers_mut();
        for (name, value) in [
            ("x-compute-type", device.to_string()),
            ("x-compute-time", ms(self.tokenization + self.queue + self.inference)),
            ("x-compute-characters", self.characters.to_string()),
            ("x-compute-tokens", self.tokens.to_string()),
            ("x-total-time", ms(total)),
            ("x-tokenization-time", ms(self.tokenization)),
            ("x-queue-time", ms(self.queue)),
            ("x-inference-time", ms(self.inference)),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        response
    }
}

async fn rerank(State(state): Shared, TeiJson(r): TeiJson<RerankRequest>) -> Result<Response, ApiError> {
    let mut timed = Timed::start(r.texts.len());
    loaded(&state)?;
    check_count(&state, r.texts.len(), "texts")?;
    let permit = Arc::new(permits(&state, r.texts.len())?);
    let mut inputs = vec![InputType::Text(r.query)];
    inputs.extend(r.texts.iter().cloned().map(InputType::Text));
    let tokenized = tokenize(&state, inputs, r.truncate, r.truncation_direction, &permit).await?;
    timed.tokenized(&tokenized);
    let mut ids = tokenized.ids;
    let query = Arc::new(ids.remove(0));
    let n = ids.len();
    metrics::counter!("te_predict_count").increment(n as u64);
    let jobs = ids.into_iter().map(|passage| Job::Pair { query: query.clone(), passage }).collect();
    let answers = submit(&state, jobs, &mut timed).await?;
    let mut ranks = Vec::with_capacity(answers.len());
    for (index, a) in answers.into_iter().enumerate() {
        let s = a.into_score().map_err(|e| ApiError::backend(&state, e))?;
        let score = if r.raw_scores { s } else { 1.0 / (1.0 + (-s).exp()) };
        ranks.push(Rank { index, text: r.return_text.then(|| r.texts[index].clone()), score });
    }
    ranks.sort_by(|a, b| crate::app::metrics::by_descending_score(&(a.index, f64::from(a.score)), &(b.index, f64::from(b.score))));
    metrics::counter!("te_predict_success").increment(n as u64);
    Ok(timed.succeeded(&state, Json(ranks)))
}

/// Checks an embedding request's options against the model.
fn check_embed_options(state: &AppState, prompt_name: &Option<String>, dimensions: Option<usize>) -> Result<(), ApiError> {
    if let Some(name) = prompt_name {
        return Err(ApiError::new(
            ErrorType::Validation,
            format!("prompt `{name}` is not in the model's configuration (a gradcache bundle has no prompts)"),
        ));
    }
    let dim = loaded(state)?.dim;
    if let Some(d) = dimensions {
        if d == 0 || d > dim {
            return Err(ApiError::new(ErrorType::Validation, format!("`dimensions` must be between 1 and {dim}, the model's width")));
        }
    }
    Ok(())
}

/// Tokenizes and runs an embedding request's inputs; `job` makes each
/// input's job from its ids.
async fn embed_inputs(
    state: &Arc<AppState>,
    timed: &mut Timed,
    inputs: Vec<InputType>,
    options: &TextOptions,
    job: impl Fn(Vec<i64>) -> Job,
) -> Result<Vec<Answer>, ApiError> {
    check_count(state, inputs.len(), "inputs")?;
    let permit = Arc::new(permits(state, inputs.len())?);
    let tokenized = tokenize(state, inputs, options.truncate, options.truncation_direction, &permit).await?;
    timed.tokenized(&tokenized);
    let n = tokenized.ids.len() as u64;
    metrics::counter!("te_embed_count").increment(n);
    let answers = submit(state, tokenized.ids.into_iter().map(job).collect(), timed).await?;
    metrics::counter!("te_embed_success").increment(n);
    Ok(answers)
}

/// Embeds inputs; each answer a finite vector.
async fn embed_vectors(
    state: &Arc<AppState>,
    timed: &mut Timed,
    inputs: Vec<InputType>,
    options: &TextOptions,
    normalize: bool,
    dimensions: Option<usize>,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let answers = embed_inputs(state, timed, inputs, options, |ids| Job::Embed { ids, normalize, dimensions }).await?;
    answers.into_iter().map(|a| a.into_vector().map_err(|e| ApiError::backend(state, e))).collect()
}

async fn embed(State(state): Shared, TeiJson(r): TeiJson<EmbedRequest>) -> Result<Response, ApiError> {
    let inputs = r.inputs.into_inputs();
    let mut timed = Timed::start(inputs.len());
    check_embed_options(&state, &r.options.prompt_name, r.dimensions)?;
    let vectors = embed_vectors(&state, &mut timed, inputs, &r.options, r.normalize, r.dimensions).await?;
    Ok(timed.succeeded(&state, Json(vectors)))
}

async fn embed_all(State(state): Shared, TeiJson(r): TeiJson<EmbedAllRequest>) -> Result<Response, ApiError> {
    let inputs = r.inputs.into_inputs();
    let mut timed = Timed::start(inputs.len());
    check_embed_options(&state, &r.options.prompt_name, None)?;
    let ModelType::Reranker(model) = &loaded(&state)?.info.model_type;
    if !model.token_encoder {
        return Err(ApiError::new(
            ErrorType::Validation,
            "`/embed_all` needs a bundle whose encoders give token vectors (pooling `tokens`: MaxSim, interaction heads); this one pools",
        )
        .labelled("model_type"));
    }
    let answers = embed_inputs(&state, &mut timed, inputs, &r.options, |ids| Job::EmbedTokens { ids }).await?;
    let tokens: Vec<Vec<Vec<f32>>> =
        answers.into_iter().map(|a| a.into_tokens().map_err(|e| ApiError::backend(&state, e))).collect::<Result<_, _>>()?;
    Ok(timed.succeeded(&state, Json(tokens)))
}

/// OpenAI's error body: `{message, code, type}`.
struct OpenAiError(ApiError);

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let e = self.0;
        e.count();
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(serde_json::json!({"message": e.message, "code": e.status, "type": e.kind}))).into_response()
    }
}

async fn openai_embeddings(
    State(state): Shared,
    body: Result<TeiJson<OpenAiEmbeddingsRequest>, ApiError>,
) -> Result<Response, OpenAiError> {
    let TeiJson(r) = body.map_err(OpenAiError)?;
    let inputs = r.input.into_inputs();
    let mut timed = Timed::start(inputs.len());
    check_embed_options(&state, &None, r.dimensions).map_err(OpenAiError)?;
    let vectors = embed_vectors(&state, &mut timed, inputs, &TextOptions::default(), true, r.dimensions).await.map_err(OpenAiError)?;
    let tokens = timed.tokens;
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
    let model = loaded(&state).map_err(OpenAiError)?.info.served_model_name.clone();
    let body =
        Json(OpenAiEmbeddingsResponse { object: "list", data, model, usage: OpenAiUsage { prompt_tokens: tokens, total_tokens: tokens } });
    Ok(timed.succeeded(&state, body))
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

    fn unloaded() -> (Arc<AppState>, mpsc::UnboundedReceiver<Vec<Entry>>, mpsc::Receiver<Command>) {
        let (queue, requests) = mpsc::unbounded_channel();
        let (model, commands) = mpsc::channel(1);
        let config = ServeConfig {
            model: "bundle".into(),
            address: ([127, 0, 0, 1], 0).into(),
            device: "cpu".into(),
            precision: crate::runtime::precision::Precision::F32,
            embed_side: Side::Passages,
            served_model_name: None,
            api_key: None,
            limits: super::super::Limits::default(),
            timeouts: super::super::Timeouts::default(),
        };
        let state = AppState {
            config,
            loaded: OnceLock::new(),
            failed: AtomicBool::new(false),
            alive: Arc::new(AtomicBool::new(true)),
            queue,
            model,
            queued: Arc::new(AtomicUsize::new(0)),
            permits: Arc::new(Semaphore::new(4)),
            prometheus: None,
        };
        (Arc::new(state), requests, commands)
    }

    fn request() -> RerankRequest {
        RerankRequest {
            query: "q".into(),
            texts: vec!["t".into()],
            truncate: None,
            truncation_direction: TruncationDirection::Right,
            raw_scores: false,
            return_text: false,
        }
    }

    #[test]
    fn until_the_model_is_loaded_health_is_503_and_work_is_refused_unqueued() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (state, mut requests, _commands) = unloaded();
            assert_eq!(health(State(state.clone())).await.status(), StatusCode::SERVICE_UNAVAILABLE);
            let refused = rerank(State(state.clone()), TeiJson(request())).await.unwrap_err();
            assert_eq!((refused.status, refused.kind, refused.message.as_str()), (503, ErrorType::Unhealthy, "the model is loading"));
            assert!(requests.try_recv().is_err(), "work was queued for a model that is not there");
            state.failed.store(true, Ordering::Relaxed);
            assert_eq!(info(State(state)).await.unwrap_err().message, "the model failed to load");
        });
    }

    /// A loaded model whose thread has died: health is 503, new work is
    /// refused with TEI's 503 body and never queued; a reply dropped
    /// unanswered is a 503 too, not a 424.
    #[test]
    fn once_the_model_thread_is_gone_health_and_requests_are_503() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (state, mut requests, commands) = unloaded();
            let dir = std::env::temp_dir().join(format!("gradcache-router-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("vocab.txt"), "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nq\nt\n").unwrap();
            let tokenizer = TextTokenizer::from_vocab(&dir.join("vocab.txt"), true, 8).unwrap();
            let info = Info {
                model_id: "m".into(),
                model_sha: None,
                model_dtype: "float32".into(),
                served_model_name: "m".into(),
                model_type: ModelType::Reranker(RerankerModel {
                    id2label: Default::default(),
                    label2id: Default::default(),
                    head: "mlp".into(),
                    embed_side: "passages".into(),
                    token_encoder: false,
                    embed_returns: String::new(),
                }),
                max_concurrent_requests: 4,
                max_input_length: 8,
                max_batch_tokens: 64,
                max_batch_requests: None,
                max_client_batch_size: 4,
                auto_truncate: true,
                tokenization_workers: 1,
                version: "0",
                sha: None,
                docker_label: None,
            };
            let _ = state.loaded.set(Loaded { tokenizer, info, dim: 4, vocab_size: 7, compute_type: "cpu" });
            // The model thread is gone: its end of the command channel too.
            drop(commands);
            state.alive.store(false, Ordering::SeqCst);
            let answer = health(State(state.clone())).await;
            assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
            let body = axum::body::to_bytes(answer.into_body(), 1 << 16).await.unwrap();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body, serde_json::json!({"error": "unhealthy", "error_type": "Unhealthy"}));
            let refused = rerank(State(state.clone()), TeiJson(request())).await.unwrap_err();
            assert_eq!((refused.status, refused.kind), (503, ErrorType::Unhealthy), "{}", refused.message);
            assert!(requests.try_recv().is_err(), "work was queued for a dead model");
            assert_eq!(ApiError::backend(&state, BackendError::Unanswered).status, 503);
            state.alive.store(true, Ordering::SeqCst);
            assert_eq!(ApiError::backend(&state, BackendError::Unanswered).status, 424);
            std::fs::remove_dir_all(&dir).unwrap();
        });
    }

    /// Every kind of wrong answer is an error on every route's accessor,
    /// never a value (NaN, an empty vector).
    #[test]
    fn answers_of_the_wrong_kind_or_not_finite_are_errors() {
        let score = Answer::Score(0.5);
        let vector = Answer::Vector(vec![1.0, 2.0]);
        let tokens = Answer::Tokens(vec![vec![1.0]]);
        assert_eq!(score.clone().into_score(), Ok(0.5));
        assert_eq!(vector.clone().into_vector(), Ok(vec![1.0, 2.0]));
        assert_eq!(tokens.clone().into_tokens(), Ok(vec![vec![1.0]]));
        assert!(matches!(vector.clone().into_score(), Err(BackendError::WrongKind { .. })));
        assert!(matches!(tokens.clone().into_vector(), Err(BackendError::WrongKind { .. })));
        assert!(matches!(score.clone().into_tokens(), Err(BackendError::WrongKind { .. })));
        assert!(matches!(Answer::Score(f32::NAN).into_score(), Err(BackendError::NonFinite(_))));
        assert!(matches!(Answer::Vector(vec![0.0, f32::INFINITY]).into_vector(), Err(BackendError::NonFinite(_))));
        assert!(matches!(Answer::Tokens(vec![vec![f32::NAN]]).into_tokens(), Err(BackendError::NonFinite(_))));
    }

    #[test]
    fn texts_are_cut_by_characters_at_a_character_boundary() {
        assert_eq!(cut_chars("héllo wörld", 11, 4, false), "héll");
        assert_eq!(cut_chars("héllo wörld", 11, 4, true), "örld");
        assert_eq!(cut_chars("abc", 3, 10, false), "abc");
        assert_eq!(cut_chars("abc", 3, 10, true), "abc");
    }

    #[test]
    fn open_routes_are_teis() {
        assert!(
            open_route(&Method::GET, "/health")
                && open_route(&Method::GET, "/ping")
                && open_route(&Method::GET, "/metrics")
                && open_route(&Method::GET, "/")
        );
        assert!(!open_route(&Method::POST, "/") && !open_route(&Method::POST, "/rerank") && !open_route(&Method::GET, "/info"));
    }
}
