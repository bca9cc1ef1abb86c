//! Routes, auth and errors (after TEI's `router/src/http/server.rs`):
//!
//! - `POST /v1/chat/completions` ([`super::chat`]),
//! - `POST /v1/completions` ([`super::completions`]),
//! - `GET /v1/models`,
//! - `GET /health` (no auth; 200 once the model is loaded, which is before the port serves).
//!
//! Every failure is an OpenAI error body with the status OpenAI would use, so clients'
//! retry logic works unchanged: 400 bad request (including `context_length_exceeded`),
//! 401 bad key, 404 unknown model, 429 queue full, 500/503 model failures.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::backend::{Backend, BackendError};
use super::types::*;
use crate::Error;

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
        .route("/v1/chat/completions", post(super::chat::chat_completions))
        .route("/v1/completions", post(super::completions::completions))
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

    pub fn bad_request(message: impl Into<String>, param: &str) -> Self {
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

    /// Name the endpoint's prompt parameter (`prompt` instead of chat's `messages`).
    pub fn for_prompt_param(mut self, param: &str) -> Self {
        if self.body.param.as_deref() == Some("messages") {
            self.body.param = Some(param.into());
        }
        self
    }

    /// The `error` object (also sent inside a stream that fails after it started).
    pub fn into_body(self) -> OpenAICompatError {
        self.body
    }

    /// A JSON body axum could not parse (400, or 415/422 as axum decides).
    pub fn rejected(e: JsonRejection) -> Self {
        let message = format!("could not parse the JSON body of your request: {}", e.body_text());
        Self::new(e.status(), message, "invalid_request_error")
    }

    /// `model` names another model than the one served (404 `model_not_found`).
    pub fn check_model(state: &AppState, model: &str) -> Result<(), Self> {
        if model == state.backend.model_id {
            return Ok(());
        }
        let message = format!("The model `{model}` does not exist; this server serves `{}`.", state.backend.model_id);
        Err(Self::new(StatusCode::NOT_FOUND, message, "invalid_request_error").param("model").code("model_not_found"))
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
            // Only admission raises these: the prompt cannot be used.
            BackendError::Generate(Error::Config(_) | Error::Tokenizer(_)) => Self::bad_request(message, "messages"),
            BackendError::Generate(_) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, message, "server_error"),
        }
    }
}

pub fn check_auth(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else { return Ok(()) };
    let sent = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match sent.and_then(|v| v.strip_prefix("Bearer ")) {
        Some(token) if token == key => Ok(()),
        _ => Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid or missing API key", "invalid_request_error")
            .code("invalid_api_key")),
    }
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
