//! The generation path both completion endpoints share: sampling parameters checked once,
//! requests handed to the [`Backend`], and the events turned into one JSON response or a
//! server-sent-event stream (`data: {chunk}\n\n` … `data: [DONE]\n\n`). What differs between
//! `chat.completion` and `text_completion` objects is an [`Endpoint`].

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::backend::{BackendError, Event, Events};
use super::http::{ApiError, AppState};
use super::types::{
    OpenAICompatCompletion, OpenAICompatErrorBody, OpenAICompatPromptTokensDetails, OpenAICompatStop,
    OpenAICompatStreamOptions, OpenAICompatUsage,
};
use crate::llm::{Delta, FinishReason, GenerateRequest, Generation, Prompt};

/// How one endpoint shapes its objects.
pub trait Endpoint: Send + 'static {
    /// A choice of the whole response.
    type Choice: Serialize + Send;
    /// A choice of a stream chunk.
    type ChunkChoice: Serialize + Send;
    /// `object` of a response and of a chunk, and the id prefix.
    const OBJECT: &'static str;
    const CHUNK_OBJECT: &'static str;
    const ID_PREFIX: &'static str;
    /// The request field holding the prompt, named in errors about it.
    const PROMPT_PARAM: &'static str;

    fn choice(&self, index: u32, generation: Generation) -> Self::Choice;
    /// The chunk that opens choice `index`'s stream, if the endpoint sends one (chat: role).
    fn opening(&self, index: u32) -> Option<Self::ChunkChoice>;
    /// New text of choice `index`, which starts at character `text_offset` of its reply.
    fn chunk(&self, index: u32, delta: Delta, text_offset: usize) -> Self::ChunkChoice;
    /// The last chunk of choice `index`.
    fn closing(&self, index: u32, finish: FinishReason) -> Self::ChunkChoice;
}

/// Parameters both endpoints take, as sent: flattened into each request body.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sampling {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<OpenAICompatStop>,
    pub n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<OpenAICompatStreamOptions>,
    /// Not implemented: rejected unless neutral, so no client silently gets less.
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<serde_json::Value>,
}

/// Checked [`Sampling`]: the request template and how to answer.
#[derive(Debug, Clone)]
pub struct Checked {
    pub template: GenerateRequest,
    /// `Some(include_usage)` for a stream.
    pub stream: Option<bool>,
}

impl Sampling {
    /// Check every parameter (400 naming it when out of range) and build the request
    /// template (its prompt is filled in per prompt). `default_max_tokens` is the endpoint's
    /// (chat: the room the context leaves; legacy completions: 16, as OpenAI). `logprobs`:
    /// alternatives per token when logprobs are asked for (each endpoint has its own field).
    pub fn check(
        self,
        state: &AppState,
        default_max_tokens: usize,
        logprobs: Option<usize>,
    ) -> Result<Checked, ApiError> {
        let n = self.n.unwrap_or(1) as usize;
        if n == 0 {
            return Err(ApiError::bad_request("n must be at least 1", "n"));
        }
        let max_batch = state.backend.max_batch;
        if n > max_batch {
            let message = format!("n = {n} is more than this server decodes together (serve.max_batch = {max_batch})");
            return Err(ApiError::bad_request(message, "n"));
        }
        let temperature = self.temperature.unwrap_or(1.0) as f64;
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::bad_request("temperature must be between 0 and 2", "temperature"));
        }
        let top_p = self.top_p.unwrap_or(1.0) as f64;
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::bad_request("top_p must be in (0, 1]", "top_p"));
        }
        for (param, penalty) in
            [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)]
        {
            if penalty.is_some_and(|p| p != 0.0) {
                return Err(ApiError::bad_request(format!("{param} is not supported (only 0)"), param));
            }
        }
        if self.logit_bias.as_ref().is_some_and(|b| b.as_object().is_none_or(|m| !m.is_empty())) {
            return Err(ApiError::bad_request("logit_bias is not supported", "logit_bias"));
        }
        if self.max_tokens == Some(0) {
            return Err(ApiError::bad_request("max_tokens must be at least 1", "max_tokens"));
        }
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::bad_request("stream_options is only allowed with stream = true", "stream_options"));
        }
        let include_usage = self.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
        let template = GenerateRequest {
            prompt: Prompt::Text(String::new()),
            n,
            logprobs,
            max_tokens: self.max_tokens.map_or(default_max_tokens, |m| m as usize),
            temperature,
            top_p,
            // Two's complement keeps negative seeds distinct.
            seed: self.seed.map_or(state.default_seed, |s| s as u64),
            stop: self.stop.map(OpenAICompatStop::into_vec).unwrap_or_default(),
            json_schema: None,
            grounded_source: None,
            ignore_eos: false,
        };
        Ok(Checked { template, stream: stream.then_some(include_usage) })
    }
}

/// Generate every request (the prompts of one HTTP request, each with `n` choices; choice
/// `j` of prompt `p` is index `p × n + j`) and answer with one response or a stream.
pub async fn respond<E: Endpoint>(
    state: &AppState,
    model: String,
    requests: Vec<GenerateRequest>,
    stream: Option<bool>,
    endpoint: E,
) -> Result<Response, ApiError> {
    let n = requests.first().map_or(1, |r| r.n);
    let mut receivers = Vec::with_capacity(requests.len());
    for request in requests {
        receivers.push(state.backend.submit(request, stream.is_some())?);
    }
    // Admission errors (a prompt too long) are HTTP errors, before any byte is sent.
    for events in &mut receivers {
        match events.recv().await {
            Some(Ok(Event::Started)) => {}
            Some(Err(e)) => return Err(ApiError::from(e).for_prompt_param(E::PROMPT_PARAM)),
            Some(Ok(_)) | None => return Err(BackendError::Stopped.into()),
        }
    }
    let id = format!("{}-{}", E::ID_PREFIX, state.next_id.fetch_add(1, Ordering::Relaxed));
    let envelope = Envelope { id, model, created: unix_now() };
    match stream {
        None => Ok(Json(complete(receivers, n, &endpoint, envelope).await?).into_response()),
        Some(include_usage) => {
            let (sender, chunks) = mpsc::channel(16);
            tokio::spawn(stream_chunks(receivers, n, endpoint, envelope, include_usage, sender));
            let body = futures::stream::unfold(chunks, |mut chunks| async move {
                chunks.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), chunks))
            });
            Ok(Sse::new(body).into_response())
        }
    }
}

/// What every object of one response repeats.
struct Envelope {
    id: String,
    model: String,
    created: u64,
}

impl Envelope {
    fn wrap<C>(&self, object: &str, choices: Vec<C>, usage: Option<OpenAICompatUsage>) -> OpenAICompatCompletion<C> {
        let (id, model) = (self.id.clone(), self.model.clone());
        OpenAICompatCompletion { id, object: object.into(), created: self.created, model, choices, usage }
    }
}

/// Token counts over all choices: each prompt once (its choices share it), every choice's
/// completion.
#[derive(Default)]
struct Usage {
    prompts: Vec<Option<(usize, usize)>>,
    completion: usize,
}

impl Usage {
    fn add(&mut self, prompt: usize, generation: &Generation) {
        if self.prompts.len() <= prompt {
            self.prompts.resize(prompt + 1, None);
        }
        self.prompts[prompt] = Some((generation.prompt_tokens, generation.cached_prompt_tokens));
        self.completion += generation.completion_tokens();
    }

    fn wire(&self) -> OpenAICompatUsage {
        let (prompt, cached) = self.prompts.iter().flatten().fold((0, 0), |(p, c), &(dp, dc)| (p + dp, c + dc));
        OpenAICompatUsage {
            prompt_tokens: prompt as u32,
            completion_tokens: self.completion as u32,
            total_tokens: (prompt + self.completion) as u32,
            prompt_tokens_details: OpenAICompatPromptTokensDetails { cached_tokens: cached as u32 },
        }
    }
}

async fn complete<E: Endpoint>(
    receivers: Vec<Events>,
    n: usize,
    endpoint: &E,
    envelope: Envelope,
) -> Result<OpenAICompatCompletion<E::Choice>, ApiError> {
    let mut generations: Vec<Option<Generation>> = (0..receivers.len() * n).map(|_| None).collect();
    let mut usage = Usage::default();
    for (prompt, mut events) in receivers.into_iter().enumerate() {
        while let Some(event) = events.recv().await {
            if let Event::Finished { choice, generation } = event? {
                usage.add(prompt, &generation);
                generations[prompt * n + choice] = Some(generation);
            }
        }
    }
    let mut choices = Vec::with_capacity(generations.len());
    for (index, generation) in generations.into_iter().enumerate() {
        choices.push(endpoint.choice(index as u32, generation.ok_or(BackendError::Stopped)?));
    }
    Ok(envelope.wrap(E::OBJECT, choices, Some(usage.wire())))
}

/// Turn the requests' events into SSE events on `sender` until every choice is done, the
/// backend fails (an error object, then the stream ends without `[DONE]`), or the client
/// goes away (a failed send; dropping the receivers then stops generation).
async fn stream_chunks<E: Endpoint>(
    receivers: Vec<Events>,
    n: usize,
    endpoint: E,
    envelope: Envelope,
    include_usage: bool,
    sender: mpsc::Sender<SseEvent>,
) {
    let chunk = |choices: Vec<E::ChunkChoice>, usage: Option<OpenAICompatUsage>| {
        sse_json(&envelope.wrap(E::CHUNK_OBJECT, choices, usage))
    };
    let total = receivers.len() * n;
    for index in 0..total {
        if let Some(opening) = endpoint.opening(index as u32) {
            if sender.send(chunk(vec![opening], None)).await.is_err() {
                return;
            }
        }
    }
    let mut events = futures::stream::select_all(receivers.into_iter().enumerate().map(|(prompt, events)| {
        futures::stream::unfold(events, |mut events| async move { events.recv().await.map(|e| (e, events)) })
            .map(move |event| (prompt, event))
            .boxed()
    }));
    let mut offsets = vec![0usize; total];
    let mut usage = Usage::default();
    while let Some((prompt, event)) = events.next().await {
        let choice = match event {
            Ok(Event::Started) => continue,
            Ok(Event::Delta { choice, delta }) => {
                let index = prompt * n + choice;
                let offset = offsets[index];
                offsets[index] += delta.text.chars().count();
                endpoint.chunk(index as u32, delta, offset)
            }
            Ok(Event::Finished { choice, generation }) => {
                usage.add(prompt, &generation);
                endpoint.closing((prompt * n + choice) as u32, generation.finish_reason)
            }
            Err(e) => {
                let _ = sender.send(sse_json(&OpenAICompatErrorBody { error: ApiError::from(e).into_body() })).await;
                return;
            }
        };
        if sender.send(chunk(vec![choice], None)).await.is_err() {
            return;
        }
    }
    if include_usage && sender.send(chunk(Vec::new(), Some(usage.wire()))).await.is_err() {
        return;
    }
    let _ = sender.send(SseEvent::default().data("[DONE]")).await;
}

fn sse_json(value: &impl Serialize) -> SseEvent {
    // Our wire types always serialize.
    SseEvent::default().data(serde_json::to_string(value).unwrap_or_default())
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
