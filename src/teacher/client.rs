//! The teacher's HTTP client: async-openai for the wire format, with every retry decided here.
//!
//! async-openai's default client retries 429/5xx itself and then drops the response headers,
//! so `Retry-After` is lost and our limits would be blind to its retries. We install our own
//! HTTP service instead (its `middleware` feature): it sends exactly one request per call and
//! turns any non-2xx status into an [`HttpStatus`] error carrying the status, the body and the
//! server's requested delay. [`TeacherClient::complete`] then:
//!
//! - waits for the rate limiter (RPM, TPM, and any run-wide pause) and a concurrency slot;
//! - bounds each attempt with the per-request timeout;
//! - on "too fast" (429) pauses every request for `Retry-After` (or the backoff);
//! - on "too many at once" (503, or a 429 naming concurrency) lowers the concurrency limit;
//! - on 5xx, timeouts and transport errors retries with exponential backoff and full jitter;
//! - never retries a 4xx that waiting cannot fix.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::{HttpRequestFactory, ReqwestService};
use async_openai::types::chat::{CreateChatCompletionRequest, CreateChatCompletionResponse};
use rand::Rng;
use tokio::time::Instant;
use tower::ServiceExt;

use super::cache::CachedReply;
use super::limiter::{Gate, RateLimiter};
use crate::error::TeacherError;

/// Retry and pacing settings (from [`super::TeacherConfig`]).
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub concurrency: usize,
    pub rpm: u32,
    pub tpm: u32,
    pub max_retries: u32,
    pub timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// A non-2xx HTTP response, as our HTTP service reports it through async-openai.
#[derive(Debug)]
pub struct HttpStatus {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: String,
}

impl std::fmt::Display for HttpStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.body)
    }
}

impl std::error::Error for HttpStatus {}

/// The server's requested delay: OpenAI's `retry-after-ms` first (sub-second precision), then
/// standard `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(retry_after_ms: Option<&str>, retry_after: Option<&str>) -> Option<Duration> {
    let non_negative = |secs: f64| (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    if let Some(ms) = retry_after_ms.and_then(|v| v.trim().parse::<f64>().ok()).and_then(|ms| non_negative(ms / 1000.0))
    {
        return Some(ms);
    }
    let value = retry_after?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return non_negative(secs);
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let secs = (date.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds() as f64 / 1000.0;
    Some(non_negative(secs).unwrap_or(Duration::ZERO))
}

/// One request to the teacher, after all its attempts.
#[derive(Debug)]
pub struct Call {
    pub reply: Result<CachedReply, TeacherError>,
    /// Attempts after the first.
    pub retries: u32,
    /// Wall time including waits and retries.
    pub latency: Duration,
}

/// A shared client: one per run, used by every request.
pub struct TeacherClient {
    client: Client<OpenAIConfig>,
    settings: ClientSettings,
    gate: Gate,
    limiter: RateLimiter,
    attempts: AtomicU64,
}

impl TeacherClient {
    /// A client for `base_url` (including `/v1`); `api_key` may be empty for local servers.
    pub fn new(base_url: &str, api_key: String, settings: ClientSettings) -> Self {
        let config = OpenAIConfig::new().with_api_base(base_url.trim_end_matches('/')).with_api_key(api_key);
        let inner = ReqwestService::default();
        let service = tower::service_fn(move |request: HttpRequestFactory| {
            let inner = inner.clone();
            async move {
                let response = inner.oneshot(request).await?;
                let status = response.status();
                if status.is_success() {
                    return Ok(response);
                }
                let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let retry_after =
                    parse_retry_after(header("retry-after-ms").as_deref(), header("retry-after").as_deref());
                let body = response.text().await.unwrap_or_default();
                Err(OpenAIError::Boxed(Box::new(HttpStatus { status: status.as_u16(), retry_after, body })))
            }
        });
        TeacherClient {
            client: Client::with_config(config).with_http_service(service),
            gate: Gate::new(settings.concurrency),
            limiter: RateLimiter::new(settings.rpm, settings.tpm),
            settings,
            attempts: AtomicU64::new(0),
        }
    }

    /// HTTP attempts sent so far (first tries and retries).
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Send `request` until it succeeds, fails for good, or runs out of retries.
    /// `estimated_tokens` feeds the tokens-per-minute limit.
    pub async fn complete(&self, request: &CreateChatCompletionRequest, estimated_tokens: u64) -> Call {
        let started = Instant::now();
        let attempt = || async move {
            self.limiter.acquire(estimated_tokens).await;
            let permit = self.gate.acquire().await;
            let attempt_started = Instant::now();
            let outcome = tokio::time::timeout(self.settings.timeout, self.client.chat().create(request.clone())).await;
            let epoch = permit.epoch;
            drop(permit);
            let reply = match outcome {
                Ok(Ok(response)) => reply_of(response, attempt_started.elapsed()),
                Ok(Err(e)) => Err(classify(e, "a chat completion")),
                Err(_elapsed) => Err(TeacherError::Timeout(self.settings.timeout)),
            };
            match &reply {
                Ok(_) => self.gate.succeeded(),
                Err(TeacherError::Overloaded { .. }) => self.gate.overloaded(epoch),
                Err(_) => {}
            }
            reply
        };
        let pause = |error: &TeacherError, delay: Duration| {
            if matches!(error, TeacherError::RateLimited { .. }) {
                self.limiter.pause_until(Instant::now() + delay);
            }
        };
        let (reply, retries) = self.with_retries(|_| true, attempt, pause).await;
        Call { reply, retries, latency: started.elapsed() }
    }

    /// The async-openai client, for the Batch API's file and batch calls ([`super::batch`]);
    /// send them through [`Self::retrying`].
    pub fn openai(&self) -> &Client<OpenAIConfig> {
        &self.client
    }

    /// One Batch API call (no chat rate limits: the provider meters batches apart), under
    /// `timeout` per attempt and retried like a chat request. `idempotent = false` (creating a
    /// batch) retries only what the server refused outright (429, 503): after a timeout or a
    /// 5xx the batch may exist, and a second one would be paid twice.
    pub async fn retrying<T, F, Fut>(&self, timeout: Duration, idempotent: bool, call: F) -> Result<T, TeacherError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, OpenAIError>>,
    {
        let attempt = || async {
            match tokio::time::timeout(timeout, call()).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => Err(classify(e, "a Batch API file or batch object")),
                Err(_elapsed) => Err(TeacherError::Timeout(timeout)),
            }
        };
        let safe_to_repeat = |error: &TeacherError| {
            idempotent || matches!(error, TeacherError::RateLimited { .. } | TeacherError::Overloaded { .. })
        };
        self.with_retries(safe_to_repeat, attempt, |_, _| {}).await.0
    }

    /// The one retry rule of both kinds of call: a retryable error that `may_repeat` allows is
    /// attempted again, up to `max_retries` times, after the server's requested delay (plus up
    /// to 10% so waiters do not return in lockstep) or else the backoff; `before_retry` sees
    /// each error and its delay first. Returns the outcome and the retries spent.
    async fn with_retries<T, Fut>(
        &self,
        may_repeat: impl Fn(&TeacherError) -> bool,
        attempt: impl Fn() -> Fut,
        before_retry: impl Fn(&TeacherError, Duration),
    ) -> (Result<T, TeacherError>, u32)
    where
        Fut: Future<Output = Result<T, TeacherError>>,
    {
        let mut retries = 0;
        loop {
            self.attempts.fetch_add(1, Ordering::Relaxed);
            let error = match attempt().await {
                Ok(value) => return (Ok(value), retries),
                Err(error) => error,
            };
            if !(error.is_retryable() && may_repeat(&error)) || retries >= self.settings.max_retries {
                return (Err(error), retries);
            }
            let delay = match error.retry_after() {
                Some(after) => after.mul_f64(1.0 + rand::rng().random_range(0.0..0.1)),
                None => self.backoff(retries),
            };
            before_retry(&error, delay);
            tracing::debug!(retry = retries + 1, ?delay, "teacher request failed, retrying: {error}");
            tokio::time::sleep(delay).await;
            retries += 1;
        }
    }

    /// Exponential backoff with full jitter: uniform in [d/2, d], d = base·2^retry capped.
    fn backoff(&self, retry: u32) -> Duration {
        let ceiling =
            self.settings.backoff_base.saturating_mul(2u32.saturating_pow(retry)).min(self.settings.backoff_max);
        ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

pub(super) fn reply_of(response: CreateChatCompletionResponse, latency: Duration) -> Result<CachedReply, TeacherError> {
    let choice =
        response.choices.into_iter().next().ok_or_else(|| TeacherError::Transport("reply has no choices".into()))?;
    let usage = response.usage.unwrap_or_default();
    // Servers that do not send `bytes` (it is optional) send the token text.
    let token_logprobs = choice.logprobs.and_then(|l| l.content).map(|tokens| {
        tokens.iter().map(|t| (t.bytes.as_ref().map_or(t.token.len(), Vec::len) as u32, t.logprob)).collect()
    });
    Ok(CachedReply {
        content: choice.message.content.or(choice.message.refusal).unwrap_or_default(),
        prompt_tokens: u64::from(usage.prompt_tokens),
        completion_tokens: u64::from(usage.completion_tokens),
        model: response.model,
        finish_reason: choice.finish_reason.map(|r| format!("{r:?}").to_lowercase()),
        latency_ms: latency.as_secs_f64() * 1000.0,
        first_run: None,
        max_tokens: None,
        batch_id: None,
        token_logprobs,
    })
}

/// Map async-openai's error to the cases we act on; `expected` names what a reply that does
/// not parse should have been.
fn classify(error: OpenAIError, expected: &str) -> TeacherError {
    match error {
        OpenAIError::Boxed(boxed) => match boxed.downcast::<HttpStatus>() {
            Ok(status) => TeacherError::from_status(status.status, status.retry_after, &status.body),
            Err(other) => TeacherError::Transport(other.to_string()),
        },
        OpenAIError::ApiError(api) => {
            TeacherError::from_status(api.status_code.as_u16(), None, &api.api_error.to_string())
        }
        OpenAIError::Reqwest(e) => {
            // reqwest's Display omits the cause ("connection refused"), which is the useful part.
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message.push_str(": ");
                message.push_str(&cause.to_string());
                source = cause.source();
            }
            TeacherError::Transport(message)
        }
        OpenAIError::JSONDeserialize(e, _) => TeacherError::Transport(format!("the reply is not {expected}: {e}")),
        other => TeacherError::Http { status: 0, message: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after(None, Some("2")), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(Some("250"), Some("2")), Some(Duration::from_millis(250)));
        assert_eq!(parse_retry_after(None, Some("0.5")), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after(None, Some("-1")), None);
        assert_eq!(parse_retry_after(None, None), None);
        assert_eq!(parse_retry_after(None, Some("Wed, 21 Oct 2015 07:28:00 GMT")), Some(Duration::ZERO));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let d = parse_retry_after(None, Some(&later)).unwrap();
        assert!(d > Duration::from_secs(25) && d <= Duration::from_secs(30), "{d:?}");
    }
}
