//! Routes and handlers (after TEI's `router/src/http/server.rs`):
//!
//! - `POST /v1/chat/completions` (non-streaming),
//! - `GET /v1/models`,
//! - `GET /health` (no auth; 200 once the model is loaded, which is before the port serves).
//!
//! Every failure is an OpenAI error body with the status OpenAI would use, so clients'
//! retry logic works unchanged: 400 bad request (including `context_length_exceeded`),
//! 401 bad key, 404 unknown model, 429 queue full, 500/503 model failures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::backend::{Backend, BackendError};
use super::types::*;
use crate::Error;
use crate::model::teacher_llm::GenerateRequest;

/// What the handlers share.
pub struct AppState {
    pub backend: Backend,
    pub api_key: Option<String>,
    /// Seed for requests that do not send one.
    pub default_seed: u64,
    pub next_id: AtomicU64,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint", "invalid_request_error") })
        .with_state(state)
}

/// An OpenAI-style error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: OpenAICompatError,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>, kind: &str) -> Self {
        let body = OpenAICompatError { message: message.into(), kind: kind.into(), param: None, code: None };
        Self { status, body }
    }

    fn bad_request(message: impl Into<String>, param: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message, "invalid_request_error").param(param)
    }

    fn param(mut self, param: &str) -> Self {
        self.body.param = Some(param.into());
        self
    }

    fn code(mut self, code: &str) -> Self {
        self.body.code = Some(code.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(OpenAICompatErrorBody { error: self.body })).into_response()
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        let message = e.to_string();
        match e {
            BackendError::Overloaded(_) => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, message, "requests").code("rate_limit_exceeded")
            }
            BackendError::Stopped => Self::new(StatusCode::SERVICE_UNAVAILABLE, message, "server_error"),
            BackendError::Generate(Error::PromptTooLong { .. }) => {
                Self::bad_request(message, "messages").code("context_length_exceeded")
            }
            BackendError::Generate(Error::Config(_)) => Self::bad_request(message, "messages"),
            BackendError::Generate(_) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, message, "server_error"),
        }
    }
}

fn check_auth(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else { return Ok(()) };
    let sent = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match sent.and_then(|v| v.strip_prefix("Bearer ")) {
        Some(token) if token == key => Ok(()),
        _ => Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid or missing API key", "invalid_request_error")
            .code("invalid_api_key")),
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

async fn models(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<OpenAICompatModelList>, ApiError> {
    check_auth(&state, &headers)?;
    let model = OpenAICompatModel {
        id: state.backend.model_id.clone(),
        object: "model".into(),
        created: 0,
        owned_by: "biodistill".into(),
    };
    Ok(Json(OpenAICompatModelList { object: "list".into(), data: vec![model] }))
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<OpenAICompatChatRequest>, JsonRejection>,
) -> Result<Json<OpenAICompatChatResponse>, ApiError> {
    check_auth(&state, &headers)?;
    let Json(request) = body.map_err(|e| {
        let status = e.status();
        let message = format!("could not parse the JSON body of your request: {}", e.body_text());
        ApiError::new(status, message, "invalid_request_error")
    })?;
    let model = request.model.clone();
    let generate = to_generate_request(&state, request)?;
    let generation = state.backend.generate(generate).await?;
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let (prompt, completion) = (generation.prompt_tokens as u32, generation.completion_tokens() as u32);
    Ok(Json(OpenAICompatChatResponse {
        id: format!("chatcmpl-{id}"),
        object: "chat.completion".into(),
        created: unix_now(),
        model,
        choices: vec![OpenAICompatChoice {
            index: 0,
            message: OpenAICompatReplyMessage { role: "assistant".into(), content: generation.text },
            finish_reason: finish_reason(generation.finish_reason).into(),
        }],
        usage: OpenAICompatUsage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: OpenAICompatPromptTokensDetails {
                cached_tokens: generation.cached_prompt_tokens as u32,
            },
        },
    }))
}

/// Validate a wire request and turn it into a model request.
fn to_generate_request(state: &AppState, request: OpenAICompatChatRequest) -> Result<GenerateRequest, ApiError> {
    if request.model != state.backend.model_id {
        let message =
            format!("The model `{}` does not exist; this server serves `{}`.", request.model, state.backend.model_id);
        return Err(ApiError::new(StatusCode::NOT_FOUND, message, "invalid_request_error")
            .param("model")
            .code("model_not_found"));
    }
    if request.stream {
        return Err(ApiError::bad_request("streaming is not supported by this server", "stream"));
    }
    if request.n.unwrap_or(1) != 1 {
        return Err(ApiError::bad_request("only n = 1 is supported", "n"));
    }
    if request.messages.is_empty() {
        return Err(ApiError::bad_request("`messages` must not be empty", "messages"));
    }
    let temperature = request.temperature.unwrap_or(1.0) as f64;
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request("temperature must be between 0 and 2", "temperature"));
    }
    let top_p = request.top_p.unwrap_or(1.0) as f64;
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_request("top_p must be in (0, 1]", "top_p"));
    }
    let grounded_source = request.grounded_source();
    if request.biodistill.as_ref().is_some_and(|e| e.grounded) && grounded_source.is_none() {
        return Err(ApiError::bad_request("grounded decoding needs `source_text`", "biodistill"));
    }
    let json_schema = request.json_schema();
    let messages = request
        .messages
        .iter()
        .map(|m| m.to_chat())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request(e, "messages"))?;
    let max_tokens = request.max_completion_tokens.or(request.max_tokens).map_or(usize::MAX, |n| n as usize);
    Ok(GenerateRequest {
        messages,
        max_tokens,
        temperature,
        top_p,
        // Two's complement keeps negative seeds distinct.
        seed: request.seed.map_or(state.default_seed, |s| s as u64),
        stop: request.stop.map(OpenAICompatStop::into_vec).unwrap_or_default(),
        json_schema,
        grounded_source,
        ignore_eos: false,
    })
}
