//! What can go wrong talking to a teacher, in the terms callers branch on.

use std::time::Duration;

/// One failed attempt (or, after the last retry, one failed request).
#[derive(Debug, Clone, thiserror::Error)]
pub enum TeacherError {
    /// 429 "too fast": the requests- or tokens-per-minute limit. Every worker pauses.
    #[error("rate limited (HTTP 429){}: {message}", fmt_after(.retry_after))]
    RateLimited { retry_after: Option<Duration>, message: String },
    /// "Too many at once": 503, or a 429 that names concurrency/overload. The client lowers
    /// its own concurrency.
    #[error("server overloaded (HTTP {status}){}: {message}", fmt_after(.retry_after))]
    Overloaded { status: u16, retry_after: Option<Duration>, message: String },
    /// The per-attempt timeout elapsed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A 5xx other than 503; worth retrying.
    #[error("server error (HTTP {status}): {message}")]
    Server { status: u16, retry_after: Option<Duration>, message: String },
    /// Could not connect, or the connection broke, or the reply was not an OpenAI response.
    #[error("transport: {0}")]
    Transport(String),
    /// A 4xx that retrying cannot fix (bad request, bad key, unknown model, no quota).
    #[error("HTTP {status}: {message}")]
    Http { status: u16, message: String },
    /// A Batch API batch failed as a whole (its input file was rejected): nothing in it was
    /// answered or billed.
    #[error("batch {batch_id} failed: {message}")]
    BatchFailed { batch_id: String, message: String },
    /// One line of a Batch API batch came back with an error, or never ran (expired,
    /// cancelled).
    #[error("batch {batch_id}: {code}: {message}")]
    BatchLine { batch_id: String, code: String, message: String },
    /// The reply was not valid JSON for the task's schema, even after one re-ask.
    #[error("unparseable reply: {0}")]
    Unparseable(String),
}

fn fmt_after(after: &Option<Duration>) -> String {
    after.map(|d| format!(", retry after {d:?}")).unwrap_or_default()
}

impl TeacherError {
    /// Whether another attempt could succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            TeacherError::Http { .. }
                | TeacherError::Unparseable(_)
                | TeacherError::BatchFailed { .. }
                | TeacherError::BatchLine { .. }
        )
    }

    /// The delay the server asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TeacherError::RateLimited { retry_after, .. }
            | TeacherError::Overloaded { retry_after, .. }
            | TeacherError::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Classify a non-success HTTP status and its body.
    pub fn from_status(status: u16, retry_after: Option<Duration>, body: &str) -> Self {
        let message = short(body);
        let lower = body.to_ascii_lowercase();
        let names_concurrency = ["concurren", "overload", "too many requests in flight", "no slot", "busy"]
            .iter()
            .any(|w| lower.contains(w));
        match status {
            // OpenAI's 429 "insufficient_quota" will not pass by waiting.
            429 if lower.contains("insufficient_quota") => TeacherError::Http { status, message },
            429 if names_concurrency => TeacherError::Overloaded { status, retry_after, message },
            429 => TeacherError::RateLimited { retry_after, message },
            503 => TeacherError::Overloaded { status, retry_after, message },
            408 => TeacherError::Server { status, retry_after, message },
            500..=599 => TeacherError::Server { status, retry_after, message },
            401 | 403 => TeacherError::Http {
                status,
                message: format!("{message} (check the API key environment variable, teacher.api_key_env)"),
            },
            _ => TeacherError::Http { status, message },
        }
    }
}

/// The first 300 chars of a body, on one line: enough to diagnose, small enough for a table.
fn short(body: &str) -> String {
    let one_line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(300) {
        Some((b, _)) => format!("{}…", &one_line[..b]),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let after = Some(Duration::from_secs(2));
        assert!(matches!(TeacherError::from_status(429, after, "{}"), TeacherError::RateLimited { .. }));
        assert!(matches!(
            TeacherError::from_status(429, None, "too many concurrent requests"),
            TeacherError::Overloaded { status: 429, .. }
        ));
        assert!(matches!(TeacherError::from_status(503, None, ""), TeacherError::Overloaded { .. }));
        assert!(matches!(TeacherError::from_status(502, None, ""), TeacherError::Server { .. }));
        let quota = TeacherError::from_status(429, None, r#"{"error":{"type":"insufficient_quota"}}"#);
        assert!(!quota.is_retryable());
        assert!(!TeacherError::from_status(400, None, "bad").is_retryable());
        assert_eq!(TeacherError::from_status(429, after, "").retry_after(), after);
        assert!(TeacherError::from_status(401, None, "no").to_string().contains("api_key_env"));
    }
}
