//! `teacher.mode = "batch"`: the requests the cache lacks go through the provider's Batch API
//! (`POST /v1/files` with `purpose=batch`, `POST /v1/batches`, `GET /v1/batches/{id}`,
//! `GET /v1/files/{id}/content`) instead of one chat request each: half the price, its own
//! rate limits, answers within the 24 h completion window.
//!
//! - **Same requests, same cache.** A batch line's body is exactly the chat request online
//!   mode sends, and its `custom_id` is that request's cache key, so each answer lands in the
//!   cache where online mode looks for it (a later online run reuses it, and the reverse).
//!   Answers carry their batch id ([`CachedReply::batch_id`]) and are priced at
//!   `teacher.batch_discount` × the online price.
//! - **Resumable.** The batches of the label run in progress are recorded in
//!   `<run dir>/teacher_batches.json` (each written as soon as the provider created it; the
//!   JSONL it was made from is kept in `teacher_batches/`). A rerun after a kill polls the
//!   same batches instead of paying again, and keeps the run id, so its answers still count
//!   as paid by this run. The file is marked finished once the run wrote its tables.
//! - **Soft failures.** A line that comes back with an error (or a non-200 response) is a
//!   failed call in `teacher_calls`, never cached, like an online failure. Lines an expired
//!   batch never ran are sent once more in a new batch (`teacher.batch_resubmit_expired`),
//!   then recorded as failed. A batch that fails as a whole (the provider rejected its file)
//!   stops the run with the provider's message.
//!
//! The label stage drives it in rounds ([`super::run_with_endpoint`]): label from the cache
//! while a [`Collector`] gathers what is missing, [`Batcher::settle`] it, and label again (a
//! reply that does not parse needs a re-ask: a second, smaller batch) until nothing is missing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_openai::types::InputSource;
use async_openai::types::batches::{Batch, BatchCompletionWindow, BatchEndpoint, BatchRequest, BatchStatus};
use async_openai::types::chat::{CreateChatCompletionRequest, CreateChatCompletionResponse};
use async_openai::types::files::{CreateFileRequest, FileInput, FilePurpose};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::cache::{Cache, CachedReply, RequestKey};
use super::client::{TeacherClient, reply_of};
use super::config::TeacherConfig;
use crate::error::{Error, IoContext, Result, TeacherError};
use crate::run_dir::{RunDir, write_file_atomic};

/// The batch state of a run directory.
pub const STATE_FILE: &str = "teacher_batches.json";
/// The JSONL files batches were made from.
pub const INPUT_DIR: &str = "teacher_batches";

/// A request the cache lacks, waiting for a batch.
#[derive(Debug, Clone)]
struct Pending {
    key: RequestKey,
    body: serde_json::Value,
}

/// What one labeling round found missing, and the failures batches recorded (shared by every
/// job of the round).
#[derive(Debug, Default)]
pub struct Collector {
    pending: Mutex<BTreeMap<String, Pending>>,
    failures: Mutex<HashMap<String, TeacherError>>,
}

impl Collector {
    /// Gather `request` (under `key`) for the next batch; identical requests are sent once.
    pub fn collect(&self, key: RequestKey, request: &CreateChatCompletionRequest) {
        let body = serde_json::to_value(request).expect("a chat request always serializes");
        let mut pending = self.pending.lock().expect("no panics under the pending lock");
        pending.entry(key.key.clone()).or_insert(Pending { key, body });
    }

    /// The failure a batch line recorded for the request under `key`, if any.
    pub fn failure(&self, key: &str) -> Option<TeacherError> {
        self.failures.lock().expect("no panics under the failures lock").get(key).cloned()
    }

    /// Whether the last round gathered nothing.
    pub fn is_settled(&self) -> bool {
        self.pending.lock().expect("no panics under the pending lock").is_empty()
    }

    fn take_pending(&self) -> BTreeMap<String, Pending> {
        std::mem::take(&mut *self.pending.lock().expect("no panics under the pending lock"))
    }

    fn record(&self, batch: &BatchRecord) {
        let mut failures = self.failures.lock().expect("no panics under the failures lock");
        for (key, (code, message)) in &batch.failed {
            let batch_id = batch.id.clone();
            failures.insert(
                key.clone(),
                TeacherError::BatchLine { batch_id, code: code.clone(), message: message.clone() },
            );
        }
    }
}

/// One batch, as recorded in [`STATE_FILE`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub id: String,
    /// The JSONL it was made from, relative to the run directory.
    pub input: String,
    pub input_file_id: String,
    pub requests: usize,
    /// The provider's last status (`validating`, `in_progress`, … `completed`, `expired`).
    pub status: String,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    /// Its answers are in the cache and its failures below.
    pub collected: bool,
    pub answered: usize,
    /// Lines sent again in a new batch because this one expired first.
    pub resubmitted: usize,
    /// Cache key -> (code, message) of every line that failed for good.
    pub failed: BTreeMap<String, (String, String)>,
}

/// The batches of one label run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State {
    /// The run that pays for these batches; a resumed run keeps it.
    run_id: String,
    /// The run wrote its tables; the next run starts a new state.
    finished: bool,
    batches: Vec<BatchRecord>,
    /// Keys whose batch expired before they ran: sent once more, then failed.
    expired: BTreeSet<String>,
}

/// What batch mode did in a run (part of the label report).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchReport {
    /// Every batch of the run, in creation order.
    pub ids: Vec<String>,
    pub requests: usize,
    pub answered: usize,
    pub failed: usize,
    /// Lines an expired batch left unanswered and a new batch was sent for.
    pub resubmitted: usize,
}

impl fmt::Display for BatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "batch API: {} batches ({}), {} requests: {} answered, {} failed, {} resubmitted after expiry",
            self.ids.len(),
            self.ids.join(", "),
            self.requests,
            self.answered,
            self.failed,
            self.resubmitted
        )
    }
}

/// Sends, resumes and collects the batches of one label run.
pub struct Batcher<'a> {
    cfg: &'a TeacherConfig,
    client: &'a TeacherClient,
    cache: &'a Cache,
    run_dir: &'a RunDir,
    state: State,
}

impl<'a> Batcher<'a> {
    /// Resume the unfinished batch state of `run_dir`, or start one paid for by `run_id`.
    pub fn open(
        cfg: &'a TeacherConfig,
        client: &'a TeacherClient,
        cache: &'a Cache,
        run_dir: &'a RunDir,
        run_id: String,
    ) -> Result<Self> {
        let path = run_dir.root().join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<State>(&bytes)
                .map_err(|e| Error::input(&path, format!("unreadable batch state: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(Error::Io { path, source: e }),
        };
        let state = if state.finished || state.batches.is_empty() {
            State { run_id, ..Default::default() }
        } else {
            let open = state.batches.iter().filter(|b| !b.collected).count();
            tracing::info!(
                "resuming run {}: {} batches recorded in {STATE_FILE}, {open} still to collect",
                state.run_id,
                state.batches.len()
            );
            state
        };
        Ok(Batcher { cfg, client, cache, run_dir, state })
    }

    /// The run id answers are recorded under (a resumed run keeps its first one).
    pub fn run_id(&self) -> &str {
        &self.state.run_id
    }

    /// Answer every request `collector` gathered: finish the recorded batches, send the rest
    /// in new ones, wait for them and collect. Afterwards each gathered request is in the cache
    /// or is a recorded failure.
    pub async fn settle(&mut self, collector: &Collector) -> Result<()> {
        let pending = collector.take_pending();
        for batch in self.state.batches.iter().filter(|b| b.collected) {
            collector.record(batch);
        }
        self.wait_and_collect(collector).await?;
        // Twice at most: the requests, then those an expired batch left.
        for _ in 0..3 {
            let keys: Vec<RequestKey> = pending.values().map(|p| p.key.clone()).collect();
            let cached = self.cache.contains(&keys)?;
            let todo: Vec<&Pending> = pending
                .values()
                .zip(cached)
                .filter(|(p, hit)| !hit && collector.failure(&p.key.key).is_none())
                .map(|(p, _)| p)
                .collect();
            if todo.is_empty() {
                return Ok(());
            }
            self.submit(&todo).await?;
            self.wait_and_collect(collector).await?;
        }
        Err(Error::Internal("batch requests still unanswered after a resubmission".into()))
    }

    /// Mark the state finished (the run wrote its tables) and say what the batches did.
    pub fn finish(mut self) -> Result<BatchReport> {
        self.state.finished = true;
        self.save()?;
        let batches = &self.state.batches;
        Ok(BatchReport {
            ids: batches.iter().map(|b| b.id.clone()).collect(),
            requests: batches.iter().map(|b| b.requests).sum(),
            answered: batches.iter().map(|b| b.answered).sum(),
            failed: batches.iter().map(|b| b.failed.len()).sum(),
            resubmitted: batches.iter().map(|b| b.resubmitted).sum(),
        })
    }

    fn save(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.state)?;
        write_file_atomic(&self.run_dir.root().join(STATE_FILE), &bytes)
    }

    /// Upload and create batches for `todo`, split at `batch_max_requests` lines and
    /// `batch_max_bytes`; each is recorded as soon as it exists.
    async fn submit(&mut self, todo: &[&Pending]) -> Result<()> {
        let mut chunks: Vec<(Vec<u8>, usize)> = vec![(Vec::new(), 0)];
        for p in todo {
            let line = serde_json::json!({
                "custom_id": p.key.key,
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": p.body,
            });
            let mut line = serde_json::to_vec(&line)?;
            line.push(b'\n');
            let (bytes, n) = chunks.last().expect("never empty");
            if *n > 0
                && (*n >= self.cfg.batch_max_requests || (bytes.len() + line.len()) as u64 > self.cfg.batch_max_bytes)
            {
                chunks.push((Vec::new(), 0));
            }
            let (bytes, n) = chunks.last_mut().expect("never empty");
            bytes.extend_from_slice(&line);
            *n += 1;
        }
        for (bytes, requests) in chunks {
            let input = format!("{INPUT_DIR}/{}-{}.jsonl", self.state.run_id, self.state.batches.len());
            let path = self.run_dir.root().join(&input);
            write_file_atomic(&path, &bytes)?;
            let (transfer, openai) = (self.transfer_timeout(), self.client.openai());
            let file = self
                .client
                .retrying(transfer, true, || {
                    let source = InputSource::Path { path: path.clone() };
                    let request = CreateFileRequest {
                        file: FileInput { source },
                        purpose: FilePurpose::Batch,
                        expires_after: None,
                    };
                    async move { openai.files().create(request).await }
                })
                .await?;
            let metadata = HashMap::from([
                ("biodistill_run".to_string(), serde_json::Value::from(self.state.run_id.as_str())),
                ("biodistill_input".to_string(), serde_json::Value::from(input.as_str())),
            ]);
            let request = BatchRequest {
                input_file_id: file.id.clone(),
                endpoint: BatchEndpoint::V1ChatCompletions,
                completion_window: BatchCompletionWindow::W24H,
                metadata: Some(metadata),
                output_expires_after: None,
            };
            let timeout = Duration::from_secs_f64(self.cfg.timeout_secs);
            let batch = self
                .client
                .retrying(timeout, false, || {
                    let request = request.clone();
                    async move { openai.batches().create(request).await }
                })
                .await?;
            tracing::info!("batch {} created: {requests} requests from {input}", batch.id);
            let mut record =
                BatchRecord { id: batch.id.clone(), input, input_file_id: file.id, requests, ..Default::default() };
            update(&mut record, &batch);
            self.state.batches.push(record);
            self.save()?;
        }
        Ok(())
    }

    /// Uploads and downloads move up to 200 MB: ten times the per-request timeout, at least
    /// ten minutes.
    fn transfer_timeout(&self) -> Duration {
        Duration::from_secs_f64((self.cfg.timeout_secs * 10.0).max(600.0))
    }

    /// Poll every uncollected batch until it ends, collecting each as it does.
    async fn wait_and_collect(&mut self, collector: &Collector) -> Result<()> {
        let open: Vec<usize> = (0..self.state.batches.len()).filter(|&i| !self.state.batches[i].collected).collect();
        if open.is_empty() {
            return Ok(());
        }
        let total: usize = open.iter().map(|&i| self.state.batches[i].requests).sum();
        let bar = super::accounting::progress_bar(total, self.cfg.progress);
        let timeout = Duration::from_secs_f64(self.cfg.timeout_secs);
        let mut last = String::new();
        loop {
            let mut done = 0;
            let mut waiting = Vec::new();
            for &i in &open {
                if !self.state.batches[i].collected {
                    let id = self.state.batches[i].id.clone();
                    let openai = self.client.openai();
                    let batch =
                        self.client.retrying(timeout, true, || async { openai.batches().retrieve(&id).await }).await?;
                    let record = &mut self.state.batches[i];
                    update(record, &batch);
                    let counts = batch.request_counts.clone().unwrap_or_default();
                    waiting.push(format!(
                        "{} {} {}/{} ({} failed)",
                        id, record.status, counts.completed, counts.total, counts.failed
                    ));
                    done += (counts.completed + counts.failed) as usize;
                    match batch.status {
                        BatchStatus::Failed => {
                            record.collected = true;
                            self.save()?;
                            return Err(
                                TeacherError::BatchFailed { batch_id: id, message: failure_message(&batch) }.into()
                            );
                        }
                        BatchStatus::Completed | BatchStatus::Expired | BatchStatus::Cancelled => {
                            self.collect(i, collector).await?;
                        }
                        _ => {}
                    }
                } else {
                    done += self.state.batches[i].requests;
                }
            }
            self.save()?;
            bar.set_position(done as u64);
            let line = waiting.join("; ");
            if line != last {
                tracing::info!("batches: {line}");
                last = line;
            }
            if open.iter().all(|&i| self.state.batches[i].collected) {
                bar.finish_and_clear();
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs_f64(self.cfg.batch_poll_secs)).await;
        }
    }

    /// Store the answers of ended batch `i` in the cache and record its failed lines.
    async fn collect(&mut self, i: usize, collector: &Collector) -> Result<()> {
        let record = self.state.batches[i].clone();
        let input_path = self.run_dir.root().join(&record.input);
        let budgets = budgets(&std::fs::read(&input_path).with_path(&input_path)?, &input_path)?;
        let mut lines = Vec::new();
        for file_id in [&record.output_file_id, &record.error_file_id].into_iter().flatten() {
            let transfer = self.transfer_timeout();
            let openai = self.client.openai();
            let bytes =
                self.client.retrying(transfer, true, || async move { openai.files().content(file_id).await }).await?;
            lines.extend(output_lines(&bytes, file_id)?);
        }
        let mut answered = Vec::new();
        let mut failed = BTreeMap::new();
        for line in lines {
            let Some(&budget) = budgets.get(&line.custom_id) else {
                tracing::warn!("batch {}: custom_id {} is not one of its requests; ignored", record.id, line.custom_id);
                continue;
            };
            match line.outcome() {
                Ok(mut reply) => {
                    reply.first_run = Some(self.state.run_id.clone());
                    reply.max_tokens = budget;
                    reply.batch_id = Some(record.id.clone());
                    answered.push((line.custom_id, reply));
                }
                // Never ran: handled with the lines missing from both files, below.
                Err((code, _)) if code == "batch_expired" => {}
                Err(failure) => {
                    failed.insert(line.custom_id, failure);
                }
            }
        }
        let stored = answered.len();
        let cache = self.cache;
        let mut puts =
            futures::stream::iter(answered.iter().map(|(key, reply)| cache.put(key, reply))).buffer_unordered(256);
        while let Some(put) = puts.next().await {
            put?;
        }
        // Lines that never ran: the batch expired (or was cancelled) before them.
        let answered: BTreeSet<&String> = answered.iter().map(|(key, _)| key).collect();
        let never_ran: Vec<&String> =
            budgets.keys().filter(|k| !answered.contains(k) && !failed.contains_key(*k)).collect();
        let mut resubmitted = 0;
        for key in never_ran {
            let expired = record.status == "expired";
            if expired && self.cfg.batch_resubmit_expired && self.state.expired.insert(key.clone()) {
                resubmitted += 1;
                continue;
            }
            let (code, message) = match record.status.as_str() {
                "expired" => ("batch_expired", "the batch expired before this request ran"),
                "cancelled" => ("batch_cancelled", "the batch was cancelled before this request ran"),
                _ => ("missing", "the batch output has no line for this request"),
            };
            failed.insert(key.clone(), (code.to_string(), message.to_string()));
        }
        if record.status != "completed" {
            tracing::warn!(
                "batch {} {}: {stored} of {} requests answered, {} failed, {resubmitted} sent again in a new batch",
                record.id,
                record.status,
                record.requests,
                failed.len()
            );
        } else if !failed.is_empty() {
            tracing::warn!(
                "batch {}: {} of {} requests failed (teacher_calls.error)",
                record.id,
                failed.len(),
                record.requests
            );
        }
        let record = &mut self.state.batches[i];
        record.answered = stored;
        record.resubmitted = resubmitted;
        record.failed = failed;
        record.collected = true;
        collector.record(record);
        self.save()
    }
}

/// Copy the provider's view of a batch into its record.
fn update(record: &mut BatchRecord, batch: &Batch) {
    record.status =
        serde_json::to_value(&batch.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    record.output_file_id = batch.output_file_id.clone();
    record.error_file_id = batch.error_file_id.clone();
}

/// The provider's reasons for failing a whole batch.
fn failure_message(batch: &Batch) -> String {
    let reasons: Vec<String> = batch
        .errors
        .iter()
        .flat_map(|e| &e.data)
        .map(|e| match e.line {
            Some(line) => format!("line {line}: {} ({})", e.message, e.code),
            None => format!("{} ({})", e.message, e.code),
        })
        .collect();
    if reasons.is_empty() { "no reason given".into() } else { reasons.join("; ") }
}

/// custom_id -> `max_tokens` of every line of a batch input file.
fn budgets(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, Option<u32>>> {
    let mut out = BTreeMap::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate().filter(|(_, l)| !l.is_empty()) {
        let value: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| Error::input_row(path, i + 1, e.to_string()))?;
        let custom_id = value["custom_id"].as_str().ok_or_else(|| Error::input_row(path, i + 1, "no custom_id"))?;
        let budget = value["body"]["max_tokens"].as_u64().and_then(|b| u32::try_from(b).ok());
        out.insert(custom_id.to_string(), budget);
    }
    Ok(out)
}

/// One line of a batch output or error file.
#[derive(Debug, Deserialize)]
struct OutputLine {
    custom_id: String,
    response: Option<OutputResponse>,
    error: Option<OutputError>,
}

#[derive(Debug, Deserialize)]
struct OutputResponse {
    status_code: u16,
    body: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct OutputError {
    code: Option<String>,
    message: Option<String>,
}

impl OutputLine {
    /// The reply, or the (code, message) of its failure.
    fn outcome(&self) -> std::result::Result<CachedReply, (String, String)> {
        if let Some(error) = &self.error {
            let code = error.code.clone().unwrap_or_else(|| "error".into());
            return Err((code, error.message.clone().unwrap_or_default()));
        }
        let Some(response) = &self.response else {
            return Err(("missing".into(), "a line with neither a response nor an error".into()));
        };
        if response.status_code != 200 {
            let message =
                response.body["error"]["message"].as_str().map_or_else(|| response.body.to_string(), str::to_owned);
            return Err((format!("HTTP {}", response.status_code), message));
        }
        let completion = serde_json::from_value::<CreateChatCompletionResponse>(response.body.clone())
            .map_err(|e| ("bad_response".to_string(), format!("not a chat completion response: {e}")))?;
        reply_of(completion, Duration::ZERO).map_err(|e| ("bad_response".to_string(), e.to_string()))
    }
}

/// The lines of a downloaded output or error file.
fn output_lines(bytes: &[u8], file_id: &str) -> Result<Vec<OutputLine>> {
    let path = PathBuf::from(format!("batch file {file_id}"));
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .map(|(i, line)| serde_json::from_slice(line).map_err(|e| Error::input_row(&path, i + 1, e.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_lines_become_replies_or_failures() {
        let file = br#"{"id":"r1","custom_id":"k1","response":{"status_code":200,"request_id":"q1","body":{"id":"c","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"{}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}},"error":null}
{"id":"r2","custom_id":"k2","response":{"status_code":400,"request_id":"q2","body":{"error":{"message":"bad max_tokens"}}},"error":null}

{"id":"r3","custom_id":"k3","response":null,"error":{"code":"batch_expired","message":"not run"}}
"#;
        let lines = output_lines(file, "file-1").unwrap();
        assert_eq!(lines.len(), 3, "blank lines are skipped");
        let reply = lines[0].outcome().unwrap();
        assert_eq!((reply.content.as_str(), reply.prompt_tokens, reply.completion_tokens), ("{}", 7, 2));
        assert_eq!(lines[1].outcome().unwrap_err(), ("HTTP 400".into(), "bad max_tokens".into()));
        assert_eq!(lines[2].outcome().unwrap_err().0, "batch_expired");
        let err = output_lines(b"{\"custom_id\":", "file-9").unwrap_err().to_string();
        assert!(err.contains("batch file file-9:1"), "{err}");
    }

    #[test]
    fn budgets_come_from_the_input_lines() {
        let input = br#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"max_tokens":64}}
{"custom_id":"b","method":"POST","url":"/v1/chat/completions","body":{}}
"#;
        let budgets = budgets(input, Path::new("in.jsonl")).unwrap();
        assert_eq!(budgets, BTreeMap::from([("a".to_string(), Some(64)), ("b".to_string(), None)]));
    }
}
