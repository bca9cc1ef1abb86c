//! A loopback OpenAI-compatible server for tests and benchmarks (not the embedded teacher).
//!
//! It answers `POST /v1/chat/completions` according to a [`Script`], which sees each request
//! and picks an [`Action`]: a reply, an HTTP error with or without `Retry-After`, a hang, or a
//! reply that is not JSON. It counts what happened, so tests can check the client from the
//! server's side: requests per body, successful answers per body, and the most requests it
//! ever had in flight at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::run_dir::{RunDir, batch};
use crate::schema::{self, table};

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
    /// The assistant content a well-behaved teacher would give (see [`plausible_reply`]).
    pub plausible: String,
}

/// Picks the action for each request.
pub type Script = Arc<dyn Fn(&Request) -> Action + Send + Sync>;

/// Always answer plausibly.
pub fn always_ok() -> Script {
    Arc::new(|r: &Request| Action::Reply(r.plausible.clone()))
}

/// Counts kept by the server.
#[derive(Default)]
pub struct Stats {
    requests: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    per_body: Mutex<HashMap<[u8; 32], (usize, usize)>>,
    log: Mutex<Vec<(Instant, String, u16)>>,
}

struct Shared {
    script: Mutex<Script>,
    latency: Mutex<Duration>,
    stats: Stats,
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
        let shared =
            Arc::new(Shared { script: Mutex::new(script), latency: Mutex::new(latency), stats: Stats::default() });
        let app = Router::new().route("/v1/chat/completions", post(chat)).with_state(Arc::clone(&shared));
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

    /// The largest number of successful (200, valid JSON content) answers given to one body.
    pub fn max_successes_per_body(&self) -> usize {
        self.shared.stats.per_body.lock().unwrap().values().map(|&(_, ok)| ok).max().unwrap_or(0)
    }

    /// (arrival time, last user message, status) of every request, in arrival order.
    pub fn log(&self) -> Vec<(Instant, String, u16)> {
        self.shared.stats.log.lock().unwrap().clone()
    }

    /// Reset the counters (not the script).
    pub fn reset_counts(&self) {
        let stats = &self.shared.stats;
        stats.requests.store(0, Ordering::SeqCst);
        stats.max_in_flight.store(stats.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
        stats.log.lock().unwrap().clear();
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
        entry.0 - 1
    };
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let schema_name = json["response_format"]["json_schema"]["name"].as_str().map(str::to_owned);
    let user = json["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    let conversation: Vec<&str> =
        json["messages"].as_array().into_iter().flatten().filter_map(|m| m["content"].as_str()).collect();
    let plausible = plausible_reply(schema_name.as_deref(), &user);
    let request =
        Request { seq, seen_before, schema_name, user: user.clone(), conversation: conversation.join("\n"), plausible };
    let action = {
        let script = shared.script.lock().unwrap().clone();
        script(&request)
    };
    let latency = *shared.latency.lock().unwrap();
    tokio::time::sleep(latency).await;
    let (status, response) = match action {
        Action::Reply(content) => {
            stats.per_body.lock().unwrap().entry(hash).or_default().1 += 1;
            (200, completion(&json, &content, "stop"))
        }
        Action::Malformed => (200, completion(&json, "Sure! Here are the entities: drugs = [aspirin", "stop")),
        Action::Truncated => (200, completion(&json, r#"{"pairs": [{"drug": "aspirin", "eff"#, "length")),
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
    };
    stats.log.lock().unwrap().push((arrived, user, status));
    response
}

fn completion(request: &serde_json::Value, content: &str, finish_reason: &str) -> Response {
    let prompt_tokens = request.to_string().len() / 4;
    let completion_tokens = content.len() / 4 + 1;
    axum::Json(serde_json::json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 0,
        "model": request["model"].as_str().unwrap_or("mock"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }))
    .into_response()
}

/// A valid reply for the task named by `schema_name`, built from the words of the sentence
/// (after the `Sentence:`/`Text:` label): first word as the drug/gene/name, last word as the
/// event/disease. Enough to exercise parsing and grounding.
pub fn plausible_reply(schema_name: Option<&str>, user: &str) -> String {
    let sentence = user.split_once(": ").map_or(user, |(_, s)| s);
    let words: Vec<&str> = sentence.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let first = words.first().copied().unwrap_or("");
    let last = words.last().copied().unwrap_or("");
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
