//! A loopback OpenAI-compatible server for tests and benchmarks (not the embedded teacher),
//! kept out of the shipped library: `tests/` has it as a module, benches by `#[path]`.
//!
//! It answers `POST /v1/chat/completions` according to a [`Script`], which sees each request
//! and picks an [`Action`]: a reply, an HTTP error with or without `Retry-After`, a hang, a
//! dropped connection, a body that is not a chat completion, or content that is not usable.
//! [`faulty`] mixes them all at a given rate. The server counts what happened, so tests can
//! check the client from its side: requests per body, answers per body, requests re-sent after
//! an answer, actions by kind, and the most requests it ever had in flight at once.
//!
//! It also serves the Batch API ([`batch`]): each batch line is answered by the same script.
#![allow(dead_code)]

/// `/v1/files` and `/v1/batches` over the same script.
#[path = "mock_batch.rs"]
pub mod batch;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use sha2::{Digest, Sha256};

use biodistill::error::Result;
use biodistill::run_dir::{RunDir, batch};
use biodistill::schema::{self, table};

/// What the server does with one request.
#[derive(Debug, Clone)]
pub enum Action {
    /// 200 with this assistant content.
    Reply(String),
    /// 200 whose content is not JSON.
    Malformed,
    /// 200 with JSON cut off mid-way and `finish_reason: "length"` (the `max_tokens` budget ran out).
    Truncated,
    /// An error status, optionally with `Retry-After` (seconds) or `retry-after-ms`.
    Status { code: u16, retry_after: Option<String>, retry_after_ms: Option<u64>, body: String },
    /// Wait this long, then answer 504 (the client should have given up by then).
    Hang(Duration),
    /// Drop the connection without a response: the socket is closed with a TCP reset.
    Reset,
    /// 200 whose HTTP body is exactly this (cut-off JSON, an HTML page): not a chat completion.
    Body(String),
    /// 200, a chat completion with an empty `choices` list.
    EmptyChoices,
    /// 200 with valid JSON naming strings that are not in the sentence ([`HALLUCINATED`]).
    Hallucinated,
}

/// The strings an [`Action::Hallucinated`] reply names; none occurs in a test sentence.
pub const HALLUCINATED: [&str; 2] = ["Zorblaxin", "quantum hiccups"];

impl Action {
    /// A short name for counting (`status 500`, `connection reset`, ...).
    pub fn kind(&self) -> String {
        match self {
            Action::Reply(_) => "reply".into(),
            Action::Malformed => "malformed content".into(),
            Action::Truncated => "cut at max_tokens".into(),
            Action::Status { code, retry_after: Some(_), .. } => format!("status {code} + Retry-After"),
            Action::Status { code, .. } => format!("status {code}"),
            Action::Hang(_) => "hang (timeout)".into(),
            Action::Reset => "connection reset".into(),
            Action::Body(body) if body.starts_with('{') => "truncated body".into(),
            Action::Body(_) => "non-JSON body".into(),
            Action::EmptyChoices => "empty choices".into(),
            Action::Hallucinated => "hallucinated spans".into(),
        }
    }

    /// Whether the client gets a chat completion it can keep (and a provider would bill).
    fn answers(&self) -> bool {
        matches!(self, Action::Reply(_) | Action::Malformed | Action::Truncated | Action::Hallucinated)
    }
}

/// What a script knows about a request.
#[derive(Debug, Clone)]
pub struct Request {
    /// 0-based arrival order.
    pub seq: usize,
    /// How many earlier requests had the same body.
    pub seen_before: usize,
    /// `response_format.json_schema.name` (`<task>_labels`), if sent.
    pub schema_name: Option<String>,
    /// The last user message.
    pub user: String,
    /// Every message's content, joined by newlines.
    pub conversation: String,
    /// The assistant content a well-behaved teacher would give about the sentence, also when
    /// re-asked (see [`plausible_reply`]).
    pub plausible: String,
}

/// Picks the action for each request.
pub type Script = Arc<dyn Fn(&Request) -> Action + Send + Sync>;

/// Always answer plausibly.
pub fn always_ok() -> Script {
    Arc::new(|r: &Request| Action::Reply(r.plausible.clone()))
}

/// Every fault [`faulty`] injects: rate limiting, server errors, a timeout, a broken
/// connection, bodies that are not chat completions, and content that cannot be used.
pub fn faults() -> [Action; 10] {
    let status = |code: u16, retry_after: Option<&str>| Action::Status {
        code,
        retry_after: retry_after.map(str::to_owned),
        retry_after_ms: None,
        body: r#"{"error":{"message":"injected"}}"#.into(),
    };
    [
        status(429, Some("0.1")),
        status(500, None),
        // Longer than any client timeout a test sets.
        Action::Hang(Duration::from_secs(30)),
        Action::Reset,
        Action::Body(r#"{"id":"chatcmpl-mock","object":"chat.completion","choices":[{"index":0,"mess"#.into()),
        Action::Body("<html><body>502 Bad Gateway</body></html>".into()),
        Action::EmptyChoices,
        Action::Truncated,
        Action::Malformed,
        Action::Hallucinated,
    ]
}

/// A plausible reply, except that a `rate` (0 to 1) of requests get one of [`faults`], drawn
/// from `seed` and the arrival number: a retry is a new draw, so faults are transient, and one
/// seed injects the same faults at the same arrivals in every run.
pub fn faulty(rate: f64, seed: u64) -> Script {
    Arc::new(move |r: &Request| {
        // splitmix64 of (seed, seq): well spread even for consecutive arrivals.
        let mut x = seed ^ (r.seq as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        if ((x >> 11) as f64 / (1u64 << 53) as f64) >= rate {
            return Action::Reply(r.plausible.clone());
        }
        let all = faults();
        let pick = (x % all.len() as u64) as usize;
        all.into_iter().nth(pick).expect("pick < len")
    })
}

/// Counts kept by the server.
#[derive(Default)]
pub struct Stats {
    requests: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Per request body: (requests, answers).
    per_body: Mutex<HashMap<[u8; 32], (usize, usize)>>,
    /// Requests whose body had already been answered: paid for twice.
    resent_after_answer: AtomicUsize,
    actions: Mutex<BTreeMap<String, usize>>,
    log: Mutex<Vec<(Instant, String, u16)>>,
}

struct Shared {
    script: Mutex<Script>,
    latency: Mutex<Duration>,
    stats: Stats,
    batch: batch::BatchApi,
}

/// A running loopback server; stops when dropped.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockServer {
    /// Start on a free loopback port with `latency` before each answer.
    pub async fn start(latency: Duration, script: Script) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        // Closing a connection resets it (RST, no FIN), so [`Action::Reset`] is a real reset.
        let listener = listener.tap_io(|stream| {
            let _ = stream.set_zero_linger();
        });
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            latency: Mutex::new(latency),
            stats: Stats::default(),
            batch: batch::BatchApi::default(),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .merge(batch::routes())
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(MockServer { addr, shared, task })
    }

    /// The base URL to configure (`http://127.0.0.1:<port>/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Replace the script (e.g. stop injecting faults for a rerun).
    pub fn set_script(&self, script: Script) {
        *self.shared.script.lock().unwrap() = script;
    }

    pub fn set_latency(&self, latency: Duration) {
        *self.shared.latency.lock().unwrap() = latency;
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.shared.stats.requests.load(Ordering::SeqCst)
    }

    /// The most requests ever in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.stats.max_in_flight.load(Ordering::SeqCst)
    }

    /// The largest number of answers (200 with a chat completion the client keeps, whether or
    /// not its content parses) given to one body.
    pub fn max_successes_per_body(&self) -> usize {
        self.shared.stats.per_body.lock().unwrap().values().map(|&(_, ok)| ok).max().unwrap_or(0)
    }

    /// Requests that arrived with a body the server had already answered (a repeated paid
    /// call), since the server started.
    pub fn resent_after_answer(&self) -> usize {
        self.shared.stats.resent_after_answer.load(Ordering::SeqCst)
    }

    /// How many times each kind of action ([`Action::kind`]) was taken since the last reset.
    pub fn actions(&self) -> BTreeMap<String, usize> {
        self.shared.stats.actions.lock().unwrap().clone()
    }

    /// (arrival time, last user message, status) of every request, in arrival order.
    pub fn log(&self) -> Vec<(Instant, String, u16)> {
        self.shared.stats.log.lock().unwrap().clone()
    }

    /// The Batch API side: how batches end, and what it saw.
    pub fn batches(&self) -> &batch::BatchApi {
        &self.shared.batch
    }

    /// Reset the counters (not the script).
    pub fn reset_counts(&self) {
        let stats = &self.shared.stats;
        stats.requests.store(0, Ordering::SeqCst);
        stats.max_in_flight.store(stats.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
        stats.log.lock().unwrap().clear();
        stats.actions.lock().unwrap().clear();
    }
}

/// Decrements the in-flight count however the handler ends (a client that gives up drops it).
struct InFlight<'a>(&'a Stats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn chat(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let arrived = Instant::now();
    let stats = &shared.stats;
    let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = InFlight(stats);
    stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let seq = stats.requests.fetch_add(1, Ordering::SeqCst);
    let hash: [u8; 32] = Sha256::digest(&body).into();
    let seen_before = {
        let mut per_body = stats.per_body.lock().unwrap();
        let entry = per_body.entry(hash).or_default();
        entry.0 += 1;
        if entry.1 > 0 {
            stats.resent_after_answer.fetch_add(1, Ordering::SeqCst);
        }
        entry.0 - 1
    };
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let (request, action) = decide(&shared, &json, seq, seen_before);
    let user = request.user.clone();
    *stats.actions.lock().unwrap().entry(action.kind()).or_default() += 1;
    let latency = *shared.latency.lock().unwrap();
    tokio::time::sleep(latency).await;
    if action.answers() {
        stats.per_body.lock().unwrap().entry(hash).or_default().1 += 1;
    }
    if let Some((content, finish_reason)) = content_of(&action, &request) {
        stats.log.lock().unwrap().push((arrived, user, 200));
        return completion(&json, &content, finish_reason);
    }
    let (status, response) = match action {
        Action::Reply(_) | Action::Hallucinated | Action::Malformed | Action::Truncated => {
            unreachable!("answered above")
        }
        Action::Status { code, retry_after, retry_after_ms, body } => {
            let mut headers = HeaderMap::new();
            if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                headers.insert("retry-after", v);
            }
            if let Some(ms) = retry_after_ms {
                headers.insert("retry-after-ms", HeaderValue::from(ms));
            }
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (code, (status, headers, body).into_response())
        }
        Action::Hang(wait) => {
            tokio::time::sleep(wait).await;
            (504, StatusCode::GATEWAY_TIMEOUT.into_response())
        }
        Action::Reset => {
            // A body that fails before its first byte: hyper drops the connection with the
            // head still unsent, and the zero linger turns the close into a reset.
            let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected reset");
            let body = Body::from_stream(futures::stream::once(async move { Err::<Bytes, _>(reset) }));
            (0, Response::new(body))
        }
        Action::Body(body) => (200, ([("content-type", "application/json")], body).into_response()),
        Action::EmptyChoices => {
            let mut reply = completion_json(&json, "", "stop");
            reply["choices"] = serde_json::json!([]);
            (200, axum::Json(reply).into_response())
        }
    };
    stats.log.lock().unwrap().push((arrived, user, status));
    response
}

/// What the request asks (`json` is its body) and what the script does with it.
fn decide(shared: &Shared, json: &serde_json::Value, seq: usize, seen_before: usize) -> (Request, Action) {
    let schema_name = json["response_format"]["json_schema"]["name"].as_str().map(str::to_owned);
    let user = json["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    let conversation: Vec<&str> =
        json["messages"].as_array().into_iter().flatten().filter_map(|m| m["content"].as_str()).collect();
    // About the sentence: the last user message of the prompt's `Label: text` form (a re-ask
    // ends with an instruction after the sentence and the bad reply).
    let labeled = |c: &&str| c.split_once(": ").is_some_and(|(label, _)| label.chars().all(char::is_alphabetic));
    let asked = json["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_str())
        .find(labeled)
        .unwrap_or(&user);
    let plausible = plausible_reply(schema_name.as_deref(), asked);
    let request = Request { seq, seen_before, schema_name, user, conversation: conversation.join("\n"), plausible };
    let action = {
        let script = shared.script.lock().unwrap().clone();
        script(&request)
    };
    (request, action)
}

/// The assistant content and finish reason of an action that answers with a chat completion.
fn content_of(action: &Action, request: &Request) -> Option<(String, &'static str)> {
    match action {
        Action::Reply(content) => Some((content.clone(), "stop")),
        Action::Hallucinated => {
            let [name, event] = HALLUCINATED;
            Some((reply_naming(request.schema_name.as_deref(), name, event), "stop"))
        }
        Action::Malformed => Some(("Sure! Here are the entities: drugs = [aspirin".into(), "stop")),
        Action::Truncated => Some((r#"{"pairs": [{"drug": "aspirin", "eff"#.into(), "length")),
        _ => None,
    }
}

fn completion(request: &serde_json::Value, content: &str, finish_reason: &str) -> Response {
    axum::Json(completion_json(request, content, finish_reason)).into_response()
}

fn completion_json(request: &serde_json::Value, content: &str, finish_reason: &str) -> serde_json::Value {
    let prompt_tokens = request.to_string().len() / 4;
    let completion_tokens = content.len() / 4 + 1;
    serde_json::json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 0,
        "model": request["model"].as_str().unwrap_or("mock"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })
}

/// A valid reply for the task named by `schema_name`, built from the words of the sentence
/// (after the `Sentence:`/`Text:` label): first word as the drug/gene/name, last word as the
/// event/disease. Enough to exercise parsing and grounding.
pub fn plausible_reply(schema_name: Option<&str>, user: &str) -> String {
    let sentence = user.split_once(": ").map_or(user, |(_, s)| s);
    let words: Vec<&str> = sentence.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let first = words.first().copied().unwrap_or("");
    let last = words.last().copied().unwrap_or("");
    reply_naming(schema_name, first, last)
}

/// A reply of the task's shape with `first` as the drug/gene/name and `last` as the
/// event/disease.
fn reply_naming(schema_name: Option<&str>, first: &str, last: &str) -> String {
    let reply = match schema_name.unwrap_or("ade_labels") {
        "gene_disease_labels" => serde_json::json!({
            "genes": [first], "diseases": [last], "associations": [{"gene": first, "disease": last}],
        }),
        "phi_labels" => serde_json::json!({"entities": [{"text": first, "type": "NAME"}]}),
        _ => serde_json::json!({"drugs": [{"drug": first, "adverse_events": [last]}]}),
    };
    reply.to_string()
}

/// Write `documents` and `sentences` tables holding one single-sentence `train` document per
/// text (`doc_id = test:<i>`), the input a label run needs.
pub fn write_inputs(run: &RunDir, texts: &[String]) -> Result<()> {
    use arrow::array::{ArrayRef, Int32Array, StringArray};
    let n = texts.len();
    let ids: Vec<String> = (0..n).map(|i| format!("test:{i}")).collect();
    let ids = || Arc::new(StringArray::from_iter_values(&ids)) as ArrayRef;
    let texts_column = || Arc::new(StringArray::from_iter_values(texts)) as ArrayRef;
    let constant = |v: &str| Arc::new(StringArray::from_iter_values(std::iter::repeat_n(v, n))) as ArrayRef;
    let documents = batch(
        &schema::DOCUMENTS,
        vec![
            ids(),
            constant("test"),
            constant("train"),
            Arc::new(StringArray::new_null(n)),
            texts_column(),
            constant("-"),
        ],
    )?;
    run.write_table(table::DOCUMENTS, schema::DOCUMENTS.clone(), &[documents])?;
    let ends: Vec<i32> = texts.iter().map(|t| t.chars().count() as i32).collect();
    let sentences = batch(
        &schema::SENTENCES,
        vec![
            ids(),
            Arc::new(Int32Array::from(vec![0; n])),
            Arc::new(Int32Array::from(vec![0; n])),
            Arc::new(Int32Array::from(ends)),
            texts_column(),
        ],
    )?;
    run.write_table(table::SENTENCES, schema::SENTENCES.clone(), &[sentences])?;
    Ok(())
}
