//! The mock's Batch API: `POST /v1/files` (multipart, `purpose=batch`), `GET
//! /v1/files/{id}/content`, `POST /v1/batches`, `GET /v1/batches/{id}`, in OpenAI's wire format.
//!
//! A batch stays `in_progress` for [`BatchApi::set_polls_to_finish`] status checks, then ends
//! the way its [`Fate`] says: every line answered by the server's script as a chat request
//! would be (non-200 answers go to the error file, as OpenAI does), an expiry after some
//! lines, or a failed validation.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::{Action, Shared, completion_json, content_of, decide};

/// How a batch ends.
#[derive(Debug, Clone)]
pub enum Fate {
    /// Every line runs.
    Complete,
    /// `expired` after the first `after` lines ran; the rest are `batch_expired` errors.
    Expire { after: usize },
    /// Validation fails with this message: nothing runs.
    Fail(String),
}

/// The Batch API's state and counters.
#[derive(Default)]
pub struct BatchApi {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    files: HashMap<String, Vec<u8>>,
    /// Batch id -> (batch object, status checks so far).
    batches: BTreeMap<String, (serde_json::Value, usize)>,
    /// The fate of the n-th batch created (the last one repeats; none: complete).
    fates: Vec<Fate>,
    polls_to_finish: usize,
    lines_run: usize,
}

impl BatchApi {
    /// How the batches created from now on end, in creation order (the last repeats).
    pub fn set_fates(&self, fates: Vec<Fate>) {
        self.inner.lock().unwrap().fates = fates;
    }

    /// Status checks a batch answers `in_progress` to before it ends.
    pub fn set_polls_to_finish(&self, polls: usize) {
        self.inner.lock().unwrap().polls_to_finish = polls;
    }

    /// Batches created so far.
    pub fn created(&self) -> usize {
        self.inner.lock().unwrap().batches.len()
    }

    /// Lines that ran (and a provider would bill), over every batch.
    pub fn lines_run(&self) -> usize {
        self.inner.lock().unwrap().lines_run
    }

    /// Lines per batch, in creation order.
    pub fn sizes(&self) -> Vec<u64> {
        let inner = self.inner.lock().unwrap();
        inner.batches.values().map(|(b, _)| b["request_counts"]["total"].as_u64().unwrap()).collect()
    }
}

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/files", post(upload))
        .route("/v1/files/{id}/content", get(content))
        .route("/v1/batches", post(create))
        .route("/v1/batches/{id}", get(retrieve))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({"error": {"message": message}}))).into_response()
}

/// The bytes of multipart field `name`.
fn multipart_field<'a>(headers: &HeaderMap, body: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let content_type = headers.get("content-type")?.to_str().ok()?;
    let boundary = format!("--{}", content_type.split("boundary=").nth(1)?.trim_matches('"'));
    let find = |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).position(|w| w == needle);
    let mut rest = body;
    while let Some(start) = find(rest, boundary.as_bytes()) {
        rest = &rest[start + boundary.len()..];
        let head_end = find(rest, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&rest[..head_end]);
        let part = &rest[head_end + 4..];
        let end = find(part, format!("\r\n{boundary}").as_bytes())?;
        if head.contains(&format!("name=\"{name}\"")) {
            return Some(&part[..end]);
        }
    }
    None
}

async fn upload(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if multipart_field(&headers, &body, "purpose") != Some(b"batch") {
        return error(StatusCode::BAD_REQUEST, "purpose must be batch");
    }
    let Some(file) = multipart_field(&headers, &body, "file") else {
        return error(StatusCode::BAD_REQUEST, "no file");
    };
    let mut inner = shared.batch.inner.lock().unwrap();
    let id = format!("file-{}", inner.files.len());
    inner.files.insert(id.clone(), file.to_vec());
    axum::Json(serde_json::json!({
        "id": id, "object": "file", "bytes": file.len(), "created_at": 0,
        "filename": "input.jsonl", "purpose": "batch",
    }))
    .into_response()
}

async fn content(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match shared.batch.inner.lock().unwrap().files.get(&id) {
        Some(bytes) => bytes.clone().into_response(),
        None => error(StatusCode::NOT_FOUND, &format!("no file {id}")),
    }
}

async fn create(State(shared): State<Arc<Shared>>, axum::Json(request): axum::Json<serde_json::Value>) -> Response {
    let mut inner = shared.batch.inner.lock().unwrap();
    let input = request["input_file_id"].as_str().unwrap_or_default().to_string();
    let Some(lines) = inner.files.get(&input).map(|f| f.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count())
    else {
        return error(StatusCode::BAD_REQUEST, &format!("no file {input}"));
    };
    if request["endpoint"] != "/v1/chat/completions" || request["completion_window"] != "24h" {
        return error(StatusCode::BAD_REQUEST, "endpoint must be /v1/chat/completions, completion_window 24h");
    }
    let id = format!("batch_{}", inner.batches.len());
    let batch = serde_json::json!({
        "id": id, "object": "batch", "endpoint": "/v1/chat/completions", "errors": null,
        "input_file_id": input, "completion_window": "24h", "status": "validating",
        "output_file_id": null, "error_file_id": null, "created_at": 0,
        "request_counts": {"total": lines, "completed": 0, "failed": 0},
        "metadata": request["metadata"],
    });
    inner.batches.insert(id, (batch.clone(), 0));
    axum::Json(batch).into_response()
}

async fn retrieve(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mut inner = shared.batch.inner.lock().unwrap();
    let polls_to_finish = inner.polls_to_finish;
    let index = inner.batches.keys().position(|k| *k == id);
    let fate = index.map(|i| inner.fates.get(i).or(inner.fates.last()).cloned().unwrap_or(Fate::Complete));
    let Some((batch, polls)) = inner.batches.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, &format!("no batch {id}"));
    };
    *polls += 1;
    let ended = ["completed", "failed", "expired", "cancelled"].contains(&batch["status"].as_str().unwrap());
    if !ended && *polls <= polls_to_finish {
        batch["status"] = "in_progress".into();
    } else if !ended {
        let mut batch_now = batch.clone();
        run_batch(&shared, &mut inner, &mut batch_now, fate.expect("the batch exists"));
        inner.batches.get_mut(&id).unwrap().0 = batch_now;
    }
    axum::Json(inner.batches[&id].0.clone()).into_response()
}

/// Run `batch` to its end: answer its lines with the script and write its output files.
fn run_batch(shared: &Shared, inner: &mut Inner, batch: &mut serde_json::Value, fate: Fate) {
    if let Fate::Fail(message) = fate {
        batch["status"] = "failed".into();
        batch["errors"] = serde_json::json!({"object": "list",
            "data": [{"code": "invalid_request", "message": message, "param": null, "line": 1}]});
        return;
    }
    let input = inner.files[batch["input_file_id"].as_str().unwrap()].clone();
    let (mut output, mut errors) = (Vec::new(), Vec::new());
    for (i, line) in input.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
        let line: serde_json::Value = serde_json::from_slice(line).unwrap();
        let custom_id = line["custom_id"].clone();
        if matches!(fate, Fate::Expire { after } if i >= after) {
            errors.push(serde_json::json!({"id": format!("req_{i}"), "custom_id": custom_id, "response": null,
                "error": {"code": "batch_expired",
                          "message": "This request could not be executed before the completion window expired."}}));
            continue;
        }
        inner.lines_run += 1;
        let body = &line["body"];
        let (request, action) = decide(shared, body, inner.lines_run - 1, 0);
        let (status, reply) = match (content_of(&action, &request), action) {
            (Some((content, finish_reason)), _) => (200, completion_json(body, &content, finish_reason)),
            (None, Action::Status { code, body, .. }) => {
                (code, serde_json::from_str(&body).unwrap_or_else(|_| serde_json::json!({"error": {"message": body}})))
            }
            (None, Action::EmptyChoices) => {
                let mut reply = completion_json(body, "", "stop");
                reply["choices"] = serde_json::json!([]);
                (200, reply)
            }
            (None, other) => (500, serde_json::json!({"error": {"message": other.kind()}})),
        };
        let out = serde_json::json!({"id": format!("req_{i}"), "custom_id": custom_id, "error": null,
            "response": {"status_code": status, "request_id": format!("req_{i}"), "body": reply}});
        if status == 200 { output.push(out) } else { errors.push(out) }
    }
    let mut file = |lines: &[serde_json::Value]| {
        if lines.is_empty() {
            return serde_json::Value::Null;
        }
        let id = format!("file-{}", inner.files.len());
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        inner.files.insert(id.clone(), text.into_bytes());
        id.into()
    };
    batch["output_file_id"] = file(&output);
    batch["error_file_id"] = file(&errors);
    batch["request_counts"]["completed"] = output.len().into();
    batch["request_counts"]["failed"] = errors.len().into();
    let expired = errors.iter().any(|e| e["error"]["code"] == "batch_expired");
    batch["status"] = if expired { "expired" } else { "completed" }.into();
}
