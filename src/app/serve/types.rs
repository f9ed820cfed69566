//! The JSON of text-embeddings-inference's HTTP API (TEI v1.9,
//! `router/src/http/types.rs` and `router/src/lib.rs`), field for field, so
//! that its clients call a gradcache server unchanged. As in TEI, request
//! fields a route does not know are ignored, not refused.

use serde::{Deserialize, Serialize};

/// Which end a text over the length limit is cut from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TruncationDirection {
    /// Keep the end of the text.
    #[serde(alias = "left", alias = "Left")]
    Left,
    /// Keep the start (the default).
    #[serde(alias = "right", alias = "Right")]
    #[default]
    Right,
}

/// `POST /rerank`.
#[derive(Debug, Deserialize)]
pub struct RerankRequest {
    /// The query.
    pub query: String,
    /// The candidates.
    pub texts: Vec<String>,
    /// Cut texts over the length limit (`null`: the server's
    /// `--auto-truncate`); `false` refuses them.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Which end to cut.
    #[serde(default)]
    pub truncation_direction: TruncationDirection,
    /// The head's raw score instead of its sigmoid.
    #[serde(default)]
    pub raw_scores: bool,
    /// Return each candidate's text with its score.
    #[serde(default)]
    pub return_text: bool,
}

/// One ranked candidate.
#[derive(Debug, Serialize)]
pub struct Rank {
    /// Its position in the request's `texts`.
    pub index: usize,
    /// Its text, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Its score.
    pub score: f32,
}

/// One input: a text, or token ids as the model's tokenizer numbers them
/// (TEI's `InputType`; LangChain's OpenAI embeddings send ids).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum InputType {
    /// A text, tokenized by the server.
    Text(String),
    /// Token ids, used as they are (no special tokens added), each checked
    /// against the vocabulary.
    Ids(Vec<u32>),
}

/// One input or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    /// One input (a text, or one list of ids).
    Single(InputType),
    /// Several.
    Batch(Vec<InputType>),
}

impl Input {
    /// The inputs, in order.
    pub fn into_inputs(self) -> Vec<InputType> {
        match self {
            Input::Single(s) => vec![s],
            Input::Batch(v) => v,
        }
    }
}

/// How the texts of a request are tokenized: the fields `/embed` and
/// `/embed_all` share (flat in their JSON).
#[derive(Debug, Default, Deserialize)]
pub struct TextOptions {
    /// As [`RerankRequest::truncate`].
    #[serde(default)]
    pub truncate: Option<bool>,
    /// As [`RerankRequest::truncation_direction`].
    #[serde(default)]
    pub truncation_direction: TruncationDirection,
    /// A prompt of the model's configuration (a gradcache bundle has none:
    /// any name is refused).
    #[serde(default)]
    pub prompt_name: Option<String>,
}

/// `POST /embed`.
#[derive(Debug, Deserialize)]
pub struct EmbedRequest {
    /// The texts.
    pub inputs: Input,
    /// Truncation and prompt.
    #[serde(flatten)]
    pub options: TextOptions,
    /// L2-normalise each vector (default true).
    #[serde(default = "default_true")]
    pub normalize: bool,
    /// Truncate each vector to this many dimensions (Matryoshka); must not
    /// exceed the model's.
    #[serde(default)]
    pub dimensions: Option<usize>,
}

fn default_true() -> bool {
    true
}

/// `POST /embed_all`: one vector per token.
#[derive(Debug, Deserialize)]
pub struct EmbedAllRequest {
    /// The texts.
    pub inputs: Input,
    /// Truncation and prompt.
    #[serde(flatten)]
    pub options: TextOptions,
}

/// How `/v1/embeddings` encodes each vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    /// A JSON array of numbers.
    #[default]
    Float,
    /// The little-endian f32 bytes in base64 (the openai client's default).
    Base64,
}

/// `POST /v1/embeddings` (OpenAI-compatible).
#[derive(Debug, Deserialize)]
pub struct OpenAiEmbeddingsRequest {
    /// The texts.
    pub input: Input,
    /// Ignored (one model per server), as in TEI.
    #[serde(default)]
    pub model: Option<String>,
    /// Ignored, as in TEI.
    #[serde(default)]
    pub user: Option<String>,
    /// `float` or `base64`.
    #[serde(default)]
    pub encoding_format: EncodingFormat,
    /// As [`EmbedRequest::dimensions`].
    #[serde(default)]
    pub dimensions: Option<usize>,
}

/// One embedding of `/v1/embeddings`.
#[derive(Debug, Serialize)]
pub struct OpenAiEmbedding {
    /// `"embedding"`.
    pub object: &'static str,
    /// Numbers, or base64.
    pub embedding: serde_json::Value,
    /// Its input's position.
    pub index: usize,
}

/// Token counts of `/v1/embeddings`.
#[derive(Debug, Serialize)]
pub struct OpenAiUsage {
    /// Tokens read.
    pub prompt_tokens: usize,
    /// The same.
    pub total_tokens: usize,
}

/// The answer of `/v1/embeddings`.
#[derive(Debug, Serialize)]
pub struct OpenAiEmbeddingsResponse {
    /// `"list"`.
    pub object: &'static str,
    /// One per input.
    pub data: Vec<OpenAiEmbedding>,
    /// The served model's name.
    pub model: String,
    /// Token counts.
    pub usage: OpenAiUsage,
}

/// TEI's error kinds; each has its HTTP status
/// ([`ErrorType::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorType {
    /// The model is not loaded (503).
    Unhealthy,
    /// The model failed (424).
    Backend,
    /// Over the concurrency limit (429).
    Overloaded,
    /// A request that breaks a rule (422).
    Validation,
    /// A text that cannot be tokenized (422).
    Tokenizer,
    /// Nothing to do (400).
    Empty,
}

impl ErrorType {
    /// TEI's status for the kind.
    pub fn status(self) -> u16 {
        match self {
            ErrorType::Unhealthy => 503,
            ErrorType::Backend => 424,
            ErrorType::Overloaded => 429,
            ErrorType::Validation | ErrorType::Tokenizer => 422,
            ErrorType::Empty => 400,
        }
    }

    /// The `err` label of `te_request_failure`.
    pub fn metric_label(self) -> &'static str {
        match self {
            ErrorType::Unhealthy => "unhealthy",
            ErrorType::Backend => "backend",
            ErrorType::Overloaded => "overloaded",
            ErrorType::Validation => "validation",
            ErrorType::Tokenizer => "tokenization",
            ErrorType::Empty => "empty",
        }
    }
}

/// TEI's error body.
#[derive(Debug, Serialize)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: String,
    /// Its kind.
    pub error_type: ErrorType,
}

/// `model_type.reranker` of `/info`: TEI's classifier labels (one: the
/// score), and what a gradcache bundle adds.
#[derive(Debug, Clone, Serialize)]
pub struct RerankerModel {
    /// `{"0": "score"}`.
    pub id2label: std::collections::BTreeMap<String, String>,
    /// `{"score": 0}`.
    pub label2id: std::collections::BTreeMap<String, usize>,
    /// The head's kind (`mlp`, `max_sim`, `interaction`, …).
    pub head: String,
    /// Which encoder `/embed` runs: `queries` or `passages`.
    pub embed_side: String,
    /// Whether the encoders produce token matrices (`/embed_all` serves
    /// them; `/embed` their masked mean).
    pub token_encoder: bool,
    /// What `/embed` returns, in words: the pooled vectors the cosine first
    /// stage ranks with; for a Mixture of Logits head, also where its
    /// component embeddings come from.
    pub embed_returns: String,
}

/// `model_type` of `/info`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    /// A reranker, as TEI names a model with one label.
    Reranker(RerankerModel),
}

/// `GET /info`.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// The bundle's folder.
    pub model_id: String,
    /// None (a bundle has no revision).
    pub model_sha: Option<String>,
    /// `float32` or `bfloat16`.
    pub model_dtype: String,
    /// The name `/v1/embeddings` answers with.
    pub served_model_name: String,
    /// What the model does.
    pub model_type: ModelType,
    /// Pairs (rerank) or inputs (embed) in flight at most.
    pub max_concurrent_requests: usize,
    /// Tokens per text, special tokens included.
    pub max_input_length: usize,
    /// Padded tokens per batch at most.
    pub max_batch_tokens: usize,
    /// Entries per batch at most.
    pub max_batch_requests: Option<usize>,
    /// Texts per request at most.
    pub max_client_batch_size: usize,
    /// Whether over-long texts are cut unless a request says `truncate: false`.
    pub auto_truncate: bool,
    /// Threads that tokenize.
    pub tokenization_workers: usize,
    /// gradcache's version.
    pub version: &'static str,
    /// None.
    pub sha: Option<&'static str>,
    /// None.
    pub docker_label: Option<&'static str>,
}
