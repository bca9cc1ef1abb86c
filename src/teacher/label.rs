//! Labeling one (task, sentence): cache or teacher, strict parse, one re-ask, grounding.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_openai::types::chat::{CreateChatCompletionRequest, ResponseFormat, ResponseFormatJsonSchema};
use tokio::sync::{OnceCell, Semaphore};

use super::batch::Collector;
use super::cache::{Cache, CachedReply, RequestKey};
use super::client::TeacherClient;
use super::confidence::Confidences;
use super::config::TeacherConfig;
use super::ground::{Alignment, Grounder, Grounding, nearest_pair};
use super::parse::{self, Mention, TaskOutput};
use super::prompt::{self, Message, Prompt};
use super::select::Sentence;
use crate::error::{Error, Result, TeacherError};
use crate::vocab::Task;

/// Final status of one (task, sentence), as stored in `teacher_calls.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Ok,
    ParseError,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::ParseError => "parse_error",
            Status::Failed => "failed",
        }
    }
}

/// One grounded string of a label row.
#[derive(Debug, Clone, PartialEq)]
pub struct Side {
    pub entity_type: String,
    pub text: String,
    pub span: Option<(usize, usize)>,
    pub alignment: Alignment,
}

/// One `teacher_labels` row, without the columns shared by its call.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelRow {
    pub subject: Side,
    /// Set for pairs only.
    pub object: Option<Side>,
    /// The teacher's confidence in this label ([`Confidences`]), when its reply came with
    /// token log probabilities.
    pub confidence: Option<f64>,
}

/// Everything recorded about one (task, sentence).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub task: Task,
    pub doc_id: String,
    pub sent_id: i32,
    /// Which look at the sentence this is (`label.passes`; 0 for the first).
    pub pass: usize,
    pub cache_key: String,
    /// The run that paid for the first request's reply (`None` for replies stored before
    /// runs were recorded).
    pub first_run: Option<String>,
    pub status: Status,
    /// Every request it needed was answered from the cache (nothing paid this run).
    pub cached: bool,
    /// Its first reply came from a Batch API batch (priced at the batch price).
    pub batched: bool,
    pub latency_ms: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub retries: u32,
    pub error: Option<String>,
    pub prompt_version: String,
    pub reasked: bool,
    pub fenced: bool,
    /// Requests asked of the cache, and how many it answered.
    pub lookups: usize,
    pub hits: usize,
    pub rows: Vec<LabelRow>,
}

/// One request's answer, shared by every job in this run that makes the same request.
#[derive(Debug, Clone)]
struct Asked {
    key: String,
    reply: std::result::Result<CachedReply, TeacherError>,
    /// Answered without sending anything this run (cache, or another job's identical request).
    cached: bool,
    retries: u32,
    latency_ms: f64,
}

/// The teacher settings of each pass: pass 0 as configured, pass i > 0 sampled at
/// `temperature` with seed `seed + i` (so each pass is its own cached request).
pub fn pass_configs(cfg: &TeacherConfig, passes: usize, temperature: f32) -> Vec<TeacherConfig> {
    (0..passes.max(1))
        .map(|i| match i {
            0 => cfg.clone(),
            i => TeacherConfig { temperature, seed: Some(cfg.seed.unwrap_or(0) + i as i64), ..cfg.clone() },
        })
        .collect()
}

/// Labels sentences for every task of a run; shared by all concurrent jobs.
pub struct Labeler<'a> {
    /// One per pass ([`pass_configs`]).
    pub passes: Vec<TeacherConfig>,
    /// Recorded as `first_run` in every reply paid for here.
    pub run_id: String,
    /// No request is sent after this (`label.budget_minutes`); cached answers still count.
    pub deadline: Option<Instant>,
    /// Batch mode: requests the cache lacks are collected here instead of sent (and come
    /// back as not asked), or answered with the failure their batch line recorded.
    pub batch: Option<&'a Collector>,
    pub prompts: &'a BTreeMap<Task, Prompt>,
    pub cache: &'a Cache,
    pub client: &'a TeacherClient,
    /// Identical requests in flight at once are sent once (single flight).
    in_run: Mutex<HashMap<String, Arc<OnceCell<Asked>>>>,
    /// Requests paid for but not yet committed to the cache, at most `teacher.concurrency`:
    /// a slot is held from sending until the reply is on disk, so a `kill -9` loses (and a
    /// rerun pays again) no more than that. The client's own slots end with the HTTP reply,
    /// and under load the commits behind it lagged (a crash test saw more than 4 lost).
    unstored: Semaphore,
}

/// The request body for `messages` about `sentence`, as sent and as hashed into the cache key.
/// With `teacher.grounded`, the embedded teacher and a task whose strings are all spans (ADE,
/// gene–disease), the sentence rides along as metadata,
/// which the embedded server uses to constrain its reply to JSON whose strings occur in the
/// sentence (hosted APIs limit metadata, so it is never sent to them).
// `max_tokens` and `seed` are deprecated by OpenAI but are what vLLM, llama.cpp and most
// compatible servers read; OpenAI still accepts them.
#[allow(deprecated)]
pub fn build_request(
    cfg: &TeacherConfig,
    task: Task,
    messages: &[Message],
    sentence: &str,
) -> CreateChatCompletionRequest {
    // PHI replies carry a type name ("NAME", "DATE") that is not in the sentence; the grounding
    // automaton constrains every string value, so it would force the type into a substring of
    // the text and the reply into a loop. PHI spans are aligned after the fact instead.
    let grounded = cfg.grounded && cfg.base_url == super::config::EMBEDDED && task != Task::Phi;
    let metadata = grounded.then(|| serde_json::json!({ crate::serve::types::METADATA_SOURCE_TEXT: sentence }).into());
    CreateChatCompletionRequest {
        metadata,
        model: cfg.model.clone(),
        messages: prompt::to_chat_messages(messages),
        temperature: Some(cfg.temperature),
        max_tokens: Some(cfg.max_tokens),
        seed: cfg.seed,
        logprobs: cfg.logprobs.then_some(true),
        response_format: cfg.json_schema.then(|| ResponseFormat::JsonSchema {
            json_schema: ResponseFormatJsonSchema {
                description: None,
                name: format!("{task}_labels"),
                schema: parse::json_schema(task),
                strict: Some(true),
            },
        }),
        ..Default::default()
    }
}

/// The cache key of the first request of every pass over `sentence`: the sentence belongs to
/// the silver set when the cache holds them all.
pub fn sentence_keys(passes: &[TeacherConfig], prompt: &Prompt, task: Task, sentence: &str) -> Vec<RequestKey> {
    let messages = prompt.messages(sentence);
    passes.iter().map(|cfg| request_key(cfg, &build_request(cfg, task, &messages, sentence))).collect()
}

/// The cache key of `request` (see [`RequestKey`]).
pub fn request_key(cfg: &TeacherConfig, request: &CreateChatCompletionRequest) -> RequestKey {
    let body = serde_json::to_value(request).expect("a chat request always serializes");
    RequestKey::new(&cfg.base_url, &body)
}

impl<'a> Labeler<'a> {
    pub fn new(
        passes: Vec<TeacherConfig>,
        run_id: String,
        prompts: &'a BTreeMap<Task, Prompt>,
        cache: &'a Cache,
        client: &'a TeacherClient,
    ) -> Self {
        assert!(!passes.is_empty(), "at least one pass");
        let unstored = Semaphore::new(passes[0].concurrency.max(1));
        Labeler {
            passes,
            run_id,
            deadline: None,
            batch: None,
            prompts,
            cache,
            client,
            in_run: Mutex::new(HashMap::new()),
            unstored,
        }
    }

    /// The answer to one request, or `None` when it is not cached and the time budget is
    /// spent (nothing was sent).
    async fn ask(&self, task: Task, pass: usize, messages: &[Message], sentence: &str) -> Result<Option<Asked>> {
        let cfg = &self.passes[pass];
        let request = build_request(cfg, task, messages, sentence);
        let key = request_key(cfg, &request);
        let cell = {
            let mut in_run = self.in_run.lock().expect("no panics under the single-flight lock");
            Arc::clone(in_run.entry(key.key.clone()).or_default())
        };
        let mut first = false;
        let asked = cell
            .get_or_try_init(|| {
                first = true;
                async {
                    match self.ask_uncached(key, &request, messages, cfg.max_tokens).await {
                        Ok(Some(asked)) => Ok(asked),
                        Ok(None) => Err(None),
                        Err(e) => Err(Some(e)),
                    }
                }
            })
            .await;
        let asked = match asked {
            Ok(asked) => asked,
            Err(None) => return Ok(None),
            Err(Some(e)) => return Err(e),
        };
        Ok(Some(if first {
            asked.clone()
        } else {
            Asked { cached: true, retries: 0, latency_ms: 0.0, ..asked.clone() }
        }))
    }

    async fn ask_uncached(
        &self,
        key: RequestKey,
        request: &CreateChatCompletionRequest,
        messages: &[Message],
        max_tokens: u32,
    ) -> Result<Option<Asked>> {
        if let Some(reply) = self.cache.get(&key).await? {
            // A batch answer stored by this run (or by its killed predecessor, which had the
            // same run id) was paid by this run.
            let cached = self.batch.is_none() || reply.first_run.as_deref() != Some(self.run_id.as_str());
            return Ok(Some(Asked { key: key.key, reply: Ok(reply), cached, retries: 0, latency_ms: 0.0 }));
        }
        if let Some(batch) = self.batch {
            let reply = match batch.failure(&key.key) {
                Some(error) => Err(error),
                None => {
                    batch.collect(key, request);
                    return Ok(None);
                }
            };
            return Ok(Some(Asked { key: key.key, reply, cached: false, retries: 0, latency_ms: 0.0 }));
        }
        let estimate = prompt::estimate_tokens(messages) + u64::from(max_tokens);
        let _unstored = self.unstored.acquire().await.map_err(|_| Error::Internal("label slots closed".into()))?;
        // Checked once a slot is free, so at most `concurrency` requests start after it.
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        let mut call = self.client.complete(request, estimate).await;
        if let Ok(reply) = &mut call.reply {
            reply.first_run = Some(self.run_id.clone());
            reply.max_tokens = Some(max_tokens);
            self.cache.put(&key.key, reply).await?;
        }
        Ok(Some(Asked {
            key: key.key,
            reply: call.reply,
            cached: false,
            retries: call.retries,
            latency_ms: call.latency.as_secs_f64() * 1000.0,
        }))
    }

    /// Label one sentence for one task in one pass. Teacher failures become the outcome's
    /// status; only local failures (the cache file) are errors. `None`: not cached, and the
    /// time budget was spent before it could be asked.
    pub async fn label(&self, task: Task, sentence: &Sentence, pass: usize) -> Result<Option<Outcome>> {
        let prompt = &self.prompts[&task];
        let Some(first) = self.ask(task, pass, &prompt.messages(&sentence.text), &sentence.text).await? else {
            return Ok(None);
        };
        let mut outcome = Outcome {
            task,
            doc_id: sentence.doc_id.clone(),
            sent_id: sentence.sent_id,
            pass,
            cache_key: first.key.clone(),
            first_run: first.reply.as_ref().ok().and_then(|r| r.first_run.clone()),
            status: Status::Failed,
            cached: first.cached,
            batched: first.reply.as_ref().is_ok_and(|r| r.batch_id.is_some()),
            latency_ms: 0.0,
            prompt_tokens: 0,
            completion_tokens: 0,
            retries: 0,
            error: None,
            prompt_version: prompt.version.clone(),
            reasked: false,
            fenced: false,
            lookups: 0,
            hits: 0,
            rows: Vec::new(),
        };
        let reply = match outcome.absorb(&first) {
            Ok(reply) => reply,
            Err(e) => return Ok(Some(outcome.fail(Status::Failed, e.to_string()))),
        };
        let (parsed, reply) = match parse::parse(task, &reply.content) {
            Ok(parsed) => (parsed, reply),
            Err(problem) if reply.finish_reason.as_deref() == Some("length") => {
                // Cut at max_tokens: a re-ask (longer prompt, same budget) would be cut again.
                let error = TeacherError::Unparseable(format!("{problem}; the reply reached max_tokens"));
                return Ok(Some(outcome.fail(Status::ParseError, error.to_string())));
            }
            Err(problem) => {
                outcome.reasked = true;
                let again = self
                    .ask(task, pass, &prompt.reask_messages(&sentence.text, &reply.content, &problem), &sentence.text)
                    .await?;
                let Some(again) = again else {
                    let error = format!("{problem}; the time budget ran out before the re-ask");
                    return Ok(Some(outcome.fail(Status::ParseError, error)));
                };
                let second = match outcome.absorb(&again) {
                    Ok(reply) => reply,
                    Err(e) => {
                        return Ok(Some(outcome.fail(Status::Failed, format!("re-ask after a parse error: {e}"))));
                    }
                };
                match parse::parse(task, &second.content) {
                    Ok(parsed) => (parsed, second),
                    Err(problem) => {
                        let error =
                            TeacherError::Unparseable(format!("{problem}; reply: {}", snippet(&second.content)));
                        return Ok(Some(outcome.fail(Status::ParseError, error.to_string())));
                    }
                }
            }
        };
        outcome.fenced = parsed.fenced;
        outcome.status = Status::Ok;
        let confidences = Confidences::of_reply(task, &reply.content, reply.token_logprobs.as_deref());
        let threshold = self.passes[pass].fuzzy_threshold;
        outcome.rows = ground_output(&parsed.output, &sentence.text, threshold, confidences.as_ref());
        Ok(Some(outcome))
    }
}

impl Outcome {
    /// Add one request's cost and timing; hand back its reply.
    fn absorb(&mut self, asked: &Asked) -> std::result::Result<CachedReply, TeacherError> {
        self.lookups += 1;
        self.hits += usize::from(asked.cached);
        self.cached &= asked.cached;
        self.retries += asked.retries;
        self.latency_ms += asked.latency_ms;
        let reply = asked.reply.clone()?;
        self.prompt_tokens += reply.prompt_tokens;
        self.completion_tokens += reply.completion_tokens;
        Ok(reply)
    }

    fn fail(mut self, status: Status, error: String) -> Self {
        self.status = status;
        self.error = Some(error);
        self
    }
}

fn snippet(text: &str) -> String {
    let mut s: String = text.chars().take(120).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

fn side(m: &Mention, g: &Grounding, span: Option<(usize, usize)>) -> Side {
    Side { entity_type: m.entity_type.clone(), text: m.text.clone(), span, alignment: g.alignment }
}

/// Turn a parsed reply into label rows: one span row per occurrence of each mention (one
/// unaligned row when it has none), one pair row per relation at its closest occurrences;
/// each with its confidence when the reply had them.
pub fn ground_output(
    output: &TaskOutput,
    text: &str,
    threshold: f64,
    confidences: Option<&Confidences>,
) -> Vec<LabelRow> {
    let grounder = Grounder::new(text, threshold);
    let mut rows = Vec::new();
    for m in output.mentions() {
        let g = grounder.ground(&m.text);
        let confidence = confidences.and_then(|c| c.of_mention(&m));
        if g.spans.is_empty() {
            rows.push(LabelRow { subject: side(&m, &g, None), object: None, confidence });
        }
        for &span in &g.spans {
            rows.push(LabelRow { subject: side(&m, &g, Some(span)), object: None, confidence });
        }
    }
    for r in output.relations() {
        let (gs, go) = (grounder.ground(&r.subject.text), grounder.ground(&r.object.text));
        let (s, o) = match nearest_pair(&gs.spans, &go.spans) {
            Some((s, o)) => (Some(s), Some(o)),
            None => (gs.spans.first().copied(), go.spans.first().copied()),
        };
        let confidence = confidences.and_then(|c| c.of_relation(&r));
        rows.push(LabelRow { subject: side(&r.subject, &gs, s), object: Some(side(&r.object, &go, o)), confidence });
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::char_slice;

    #[test]
    fn grounding_is_asked_of_the_embedded_teacher_for_span_tasks_only() {
        let embedded = TeacherConfig::default();
        let remote = TeacherConfig { base_url: "https://api.example.com/v1".into(), ..Default::default() };
        let grounded =
            |cfg: &TeacherConfig, task| build_request(cfg, task, &[], "Aspirin caused rash.").metadata.is_some();
        assert!(grounded(&embedded, Task::Ade) && grounded(&embedded, Task::GeneDisease));
        assert!(!grounded(&embedded, Task::Phi), "PHI type names are not in the sentence");
        assert!(!grounded(&remote, Task::Ade), "hosted APIs never get the sentence as metadata");
        let off = TeacherConfig { grounded: false, ..Default::default() };
        assert!(!grounded(&off, Task::Ade));
    }

    #[test]
    fn rows_carry_offsets_that_slice_to_the_strings() {
        let text = "Naïve patients on cisplatin had nausea; cisplatin also caused ototoxicity.";
        let output = parse::parse(
            Task::Ade,
            r#"{"drugs":[{"drug":"cisplatin","adverse_events":["nausea","Ototoxicity","hair loss"]}]}"#,
        )
        .unwrap()
        .output;
        let rows = ground_output(&output, text, 0.8, None);
        let spans: Vec<_> = rows.iter().filter(|r| r.object.is_none()).collect();
        assert_eq!(spans.iter().filter(|r| r.subject.text == "cisplatin").count(), 2, "both occurrences");
        for r in &rows {
            for s in std::iter::once(&r.subject).chain(r.object.as_ref()) {
                match s.span {
                    Some((a, b)) => assert_eq!(char_slice(text, a, b).unwrap().to_lowercase(), s.text.to_lowercase()),
                    None => assert_eq!(s.alignment, Alignment::Unaligned),
                }
            }
        }
        let pair = rows.iter().find(|r| r.object.as_ref().is_some_and(|o| o.text == "Ototoxicity")).unwrap();
        assert_eq!(pair.subject.span, Some((40, 49)), "the cisplatin nearest to ototoxicity");
        assert_eq!(pair.object.as_ref().unwrap().alignment, Alignment::CaseInsensitive);
        let lost = rows.iter().find(|r| r.object.as_ref().is_some_and(|o| o.text == "hair loss")).unwrap();
        assert_eq!(lost.object.as_ref().unwrap().span, None);
    }
}
