//! `POST /v1/completions`, OpenAI's legacy text completions: a raw prompt (no chat template)
//! continued as is, answered with `text_completion` objects, streamed or not. Its logprobs
//! are the legacy shape (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::generate::{Endpoint, Sampling, respond};
use super::http::{ApiError, AppState, check_auth};
use super::types::finish_reason;
use crate::llm::{Delta, FinishReason, GenerateRequest, Generation, Prompt, TokenLogprob};

/// Most alternatives the legacy `logprobs` takes (OpenAI's limit).
pub const MAX_LOGPROBS: usize = 5;

/// OpenAI's default `max_tokens` for this endpoint.
const DEFAULT_MAX_TOKENS: usize = 16;

/// `POST /v1/completions` body.
#[derive(Debug, Clone, Deserialize)]
pub struct OpenAICompatCompletionRequest {
    pub model: String,
    pub prompt: OpenAICompatPrompt,
    /// `max_tokens`, `temperature`, `top_p`, `seed`, `stop`, `n`, `stream`, … as for chat.
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Log probabilities of each token and of this many alternatives (0..=5).
    pub logprobs: Option<u32>,
    /// Not supported; rejected when set, so a client never gets less than it asked for.
    pub echo: Option<bool>,
    pub best_of: Option<u32>,
    pub suffix: Option<String>,
}

/// A prompt, or several (each gets `n` choices); token-id prompts are not supported.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OpenAICompatPrompt {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<serde_json::Value>),
}

/// A `text_completion` choice (of a response, or of a stream chunk with `finish_reason` null
/// until its last chunk).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenAICompatTextChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<OpenAICompatLegacyLogprobs>,
    pub finish_reason: Option<String>,
}

/// Legacy logprobs, one entry per token in each list. `top_logprobs` maps token text to its
/// logprob (the chosen token is added when it is not among the best); `text_offset` counts
/// characters of the reply before the token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OpenAICompatLegacyLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<serde_json::Map<String, serde_json::Value>>,
    pub text_offset: Vec<usize>,
}

impl OpenAICompatLegacyLogprobs {
    pub fn new(logprobs: &[TokenLogprob], mut text_offset: usize) -> Self {
        let mut out = Self::default();
        for lp in logprobs {
            let token = String::from_utf8_lossy(&lp.token.bytes).into_owned();
            let mut top = serde_json::Map::new();
            for alt in lp.top.iter().chain([&lp.token]) {
                top.entry(String::from_utf8_lossy(&alt.bytes).into_owned()).or_insert(alt.logprob.into());
            }
            out.text_offset.push(text_offset);
            text_offset += token.chars().count();
            out.token_logprobs.push(lp.token.logprob);
            out.top_logprobs.push(top);
            out.tokens.push(token);
        }
        out
    }
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<OpenAICompatCompletionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    check_auth(&state, &headers)?;
    let Json(request) = body.map_err(ApiError::rejected)?;
    let model = request.model.clone();
    let logprobs = request.logprobs.is_some();
    let (requests, stream) = to_generate_requests(&state, request)?;
    respond(&state, model, requests, stream, Completion { logprobs }).await
}

/// Validate a wire request: one model request per prompt.
fn to_generate_requests(
    state: &AppState,
    request: OpenAICompatCompletionRequest,
) -> Result<(Vec<GenerateRequest>, Option<bool>), ApiError> {
    ApiError::check_model(state, &request.model)?;
    let prompts = match request.prompt {
        OpenAICompatPrompt::One(p) => vec![p],
        OpenAICompatPrompt::Many(p) => p,
        OpenAICompatPrompt::Tokens(_) => {
            return Err(ApiError::bad_request("token-id prompts are not supported; send text", "prompt"));
        }
    };
    if prompts.is_empty() || prompts.iter().any(String::is_empty) {
        return Err(ApiError::bad_request("the prompt must not be empty", "prompt"));
    }
    if request.echo == Some(true) {
        return Err(ApiError::bad_request("echo is not supported", "echo"));
    }
    if request.best_of.is_some_and(|b| Some(b) != request.sampling.n.or(Some(1))) {
        return Err(ApiError::bad_request("best_of is not supported (only best_of = n)", "best_of"));
    }
    if request.suffix.is_some() {
        return Err(ApiError::bad_request("suffix is not supported", "suffix"));
    }
    let logprobs = request.logprobs.map(|k| k as usize);
    if logprobs.is_some_and(|k| k > MAX_LOGPROBS) {
        return Err(ApiError::bad_request(format!("logprobs must be between 0 and {MAX_LOGPROBS}"), "logprobs"));
    }
    let checked = request.sampling.check(state, DEFAULT_MAX_TOKENS, logprobs)?;
    let requests =
        prompts.into_iter().map(|p| GenerateRequest { prompt: Prompt::Text(p), ..checked.template.clone() }).collect();
    Ok((requests, checked.stream))
}

/// The legacy endpoint's objects; `logprobs` says whether the request asked for them.
struct Completion {
    logprobs: bool,
}

impl Completion {
    fn text_choice(
        &self,
        index: u32,
        text: String,
        logprobs: &[TokenLogprob],
        offset: usize,
    ) -> OpenAICompatTextChoice {
        let logprobs = self.logprobs.then(|| OpenAICompatLegacyLogprobs::new(logprobs, offset));
        OpenAICompatTextChoice { index, text, logprobs, finish_reason: None }
    }
}

impl Endpoint for Completion {
    type Choice = OpenAICompatTextChoice;
    type ChunkChoice = OpenAICompatTextChoice;
    const OBJECT: &'static str = "text_completion";
    const CHUNK_OBJECT: &'static str = "text_completion";
    const ID_PREFIX: &'static str = "cmpl";
    const PROMPT_PARAM: &'static str = "prompt";

    fn choice(&self, index: u32, generation: Generation) -> OpenAICompatTextChoice {
        let finish = finish_reason(generation.finish_reason).into();
        let choice = self.text_choice(index, generation.text, &generation.logprobs, 0);
        OpenAICompatTextChoice { finish_reason: Some(finish), ..choice }
    }

    fn opening(&self, _index: u32) -> Option<OpenAICompatTextChoice> {
        None
    }

    fn chunk(&self, index: u32, delta: Delta, text_offset: usize) -> OpenAICompatTextChoice {
        self.text_choice(index, delta.text, &delta.logprobs, text_offset)
    }

    fn closing(&self, index: u32, finish: FinishReason) -> OpenAICompatTextChoice {
        let finish_reason = Some(finish_reason(finish).into());
        OpenAICompatTextChoice { index, text: String::new(), logprobs: None, finish_reason }
    }
}
