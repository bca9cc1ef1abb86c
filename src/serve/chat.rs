//! `POST /v1/chat/completions`: chat messages in, `chat.completion` objects (or
//! `chat.completion.chunk`s when streaming) out, with optional JSON schema / grounding and
//! per-token logprobs.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::HeaderMap;
use axum::response::Response;

use super::generate::{Endpoint, Sampling, respond};
use super::http::{ApiError, AppState, check_auth};
use super::types::*;
use crate::llm::{Delta, FinishReason, GenerateRequest, Generation, MAX_TOP_LOGPROBS, Prompt};

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<OpenAICompatChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    check_auth(&state, &headers)?;
    let Json(request) = body.map_err(ApiError::rejected)?;
    let model = request.model.clone();
    let logprobs = request.logprobs.unwrap_or(false);
    let (generate, stream) = to_generate_request(&state, request)?;
    respond(&state, model, vec![generate], stream, Chat { logprobs }).await
}

/// Validate a wire request and turn it into a model request (and whether to stream, with
/// or without a usage chunk).
fn to_generate_request(
    state: &AppState,
    request: OpenAICompatChatRequest,
) -> Result<(GenerateRequest, Option<bool>), ApiError> {
    ApiError::check_model(state, &request.model)?;
    if request.messages.is_empty() {
        return Err(ApiError::bad_request("`messages` must not be empty", "messages"));
    }
    let top_logprobs = request.top_logprobs.map(|k| k as usize);
    if top_logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
        let message = format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}");
        return Err(ApiError::bad_request(message, "top_logprobs"));
    }
    let logprobs = request.logprobs.unwrap_or(false);
    if top_logprobs.is_some() && !logprobs {
        return Err(ApiError::bad_request("top_logprobs needs logprobs = true", "top_logprobs"));
    }
    if request.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::bad_request("tools (function calling) are not supported", "tools"));
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
    let sampling =
        Sampling { max_tokens: request.max_completion_tokens.or(request.sampling.max_tokens), ..request.sampling };
    let checked = sampling.check(state, usize::MAX, logprobs.then(|| top_logprobs.unwrap_or(0)))?;
    let generate = GenerateRequest { prompt: Prompt::Chat(messages), json_schema, grounded_source, ..checked.template };
    Ok((generate, checked.stream))
}

/// The chat endpoint's objects; `logprobs` says whether the request asked for them.
struct Chat {
    logprobs: bool,
}

impl Chat {
    fn logprobs(&self, generation_logprobs: &[crate::llm::TokenLogprob]) -> Option<OpenAICompatChatLogprobs> {
        self.logprobs.then(|| OpenAICompatChatLogprobs::new(generation_logprobs))
    }
}

impl Endpoint for Chat {
    type Choice = OpenAICompatChoice;
    type ChunkChoice = OpenAICompatChunkChoice;
    const OBJECT: &'static str = "chat.completion";
    const CHUNK_OBJECT: &'static str = "chat.completion.chunk";
    const ID_PREFIX: &'static str = "chatcmpl";
    const PROMPT_PARAM: &'static str = "messages";

    fn choice(&self, index: u32, generation: Generation) -> OpenAICompatChoice {
        OpenAICompatChoice {
            index,
            logprobs: self.logprobs(&generation.logprobs),
            message: OpenAICompatReplyMessage { role: "assistant".into(), content: generation.text },
            finish_reason: finish_reason(generation.finish_reason).into(),
        }
    }

    fn opening(&self, index: u32) -> Option<OpenAICompatChunkChoice> {
        let delta = OpenAICompatDelta { role: Some("assistant".into()), content: Some(String::new()) };
        Some(OpenAICompatChunkChoice { index, delta, logprobs: None, finish_reason: None })
    }

    fn chunk(&self, index: u32, delta: Delta, _text_offset: usize) -> OpenAICompatChunkChoice {
        OpenAICompatChunkChoice {
            index,
            logprobs: self.logprobs(&delta.logprobs),
            delta: OpenAICompatDelta { role: None, content: Some(delta.text) },
            finish_reason: None,
        }
    }

    fn closing(&self, index: u32, finish: FinishReason) -> OpenAICompatChunkChoice {
        let delta = OpenAICompatDelta::default();
        OpenAICompatChunkChoice { index, delta, logprobs: None, finish_reason: Some(finish_reason(finish).into()) }
    }
}
