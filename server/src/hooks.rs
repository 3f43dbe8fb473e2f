//! The backend's HTTP hooks, called on the server's tokio runtime: a POST
//! of JSON to `--hook-url` + `/connect`, `/publish`, `/rpc` or
//! `/disconnect`, with `--hook-timeout` and at most `--hook-concurrency`
//! requests in flight.
//!
//! An answer is `{"result":{...}}` or `{"error":{"status":403,"reason":"..."}}`
//! (HTTP 2xx). Anything else (a timeout, a refused connection, a non-2xx
//! status, a body over the limit or not of that shape) is a [`Failure`]:
//! hook answers are hostile until checked. Redirects are not followed: a
//! 3xx is a failed hook, so a hook cannot send the request (with the
//! client's cookie) to a third party.

use prometheus::IntCounterVec;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// A hook's answer.
#[derive(Debug)]
pub enum Answer {
    /// `{"result":{...}}`: the object.
    Result(Map<String, Value>),
    /// `{"error":{"status":N,"reason":"..."}}`.
    Error {
        /// `status`, if given.
        status: Option<u16>,
        /// `reason`, at most 256 bytes (longer ones are cut).
        reason: String,
    },
}

/// Why a hook gave no answer.
#[derive(Debug)]
pub enum Failure {
    /// No answer within `--hook-timeout`.
    Timeout,
    /// The request failed or the status was not 2xx.
    Unavailable(String),
    /// The body was not an answer.
    Invalid(String),
    /// The work was dropped before the request was sent (its connection
    /// closed while it waited for a permit).
    Unwanted,
}

impl Failure {
    fn label(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Unavailable(_) => "unavailable",
            Failure::Invalid(_) => "invalid",
            Failure::Unwanted => "dropped",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("no answer in time"),
            Failure::Unavailable(why) => write!(f, "unavailable: {why}"),
            Failure::Invalid(why) => write!(f, "invalid answer: {why}"),
            Failure::Unwanted => f.write_str("dropped: its connection closed"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    result: Option<Map<String, Value>>,
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    status: Option<u16>,
    reason: Option<String>,
}

/// Longest error reason passed on, in bytes.
const MAX_REASON: usize = 256;

/// The hook client.
pub struct Hooks {
    client: reqwest::Client,
    url: String,
    timeout: Duration,
    permits: Arc<Semaphore>,
    /// Largest answer body read, in bytes.
    max_answer: usize,
    /// Calls by hook and outcome (`result`, `error`, `timeout`,
    /// `unavailable`, `invalid`).
    pub calls: IntCounterVec,
    /// Webhook events dropped, by hook (see `crate::webhooks`).
    pub dropped: IntCounterVec,
}

impl Hooks {
    /// A client for `url` (no trailing slash needed).
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        url: &str,
        timeout: Duration,
        concurrency: usize,
        max_answer: usize,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("hook client: {e}"))?;
        let calls = IntCounterVec::new(
            prometheus::Opts::new(
                "ringcast_hook_calls_total",
                "Backend hook calls, by hook and outcome",
            ),
            &["hook", "outcome"],
        )
        .expect("valid counter");
        let dropped = IntCounterVec::new(
            prometheus::Opts::new(
                "ringcast_hook_events_dropped_total",
                "Webhook events (presence, channels) dropped: queue full, or every attempt failed",
            ),
            &["hook"],
        )
        .expect("valid counter");
        Ok(Self {
            dropped,
            client,
            url: url.trim_end_matches('/').to_owned(),
            timeout,
            permits: Arc::new(Semaphore::new(concurrency)),
            max_answer,
            calls,
        })
    }

    /// Counts `n` events of webhook `hook` dropped.
    pub fn events_dropped(&self, hook: &str, n: u64) {
        self.dropped.with_label_values(&[hook]).inc_by(n);
    }

    /// POSTs `body` to the `hook` (`connect`, `publish`, `rpc`,
    /// `disconnect`) and reads its answer, all within the timeout.
    ///
    /// # Errors
    /// A [`Failure`]; it is counted and logged at debug level.
    pub async fn call(&self, hook: &'static str, body: &Value) -> Result<Answer, Failure> {
        self.call_while(hook, body, &|| true).await
    }

    /// As [`Hooks::call`], but only while `wanted()` holds once a permit
    /// is taken (checked just before the request is sent).
    ///
    /// # Errors
    /// A [`Failure`]; [`Failure::Unwanted`] when `wanted()` was false.
    pub async fn call_while(
        &self,
        hook: &'static str,
        body: &Value,
        wanted: &(dyn Fn() -> bool + Sync),
    ) -> Result<Answer, Failure> {
        let outcome = tokio::time::timeout(self.timeout, self.exchange(hook, body, wanted))
            .await
            .unwrap_or(Err(Failure::Timeout));
        let label = match &outcome {
            Ok(Answer::Result(_)) => "result",
            Ok(Answer::Error { .. }) => "error",
            Err(failure) => {
                tracing::debug!(hook, %failure, "hook failed");
                failure.label()
            }
        };
        self.calls.with_label_values(&[hook, label]).inc();
        outcome
    }

    async fn exchange(
        &self,
        hook: &str,
        body: &Value,
        wanted: &(dyn Fn() -> bool + Sync),
    ) -> Result<Answer, Failure> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Failure::Unavailable("shutting down".into()))?;
        if !wanted() {
            return Err(Failure::Unwanted);
        }
        let mut response = self
            .client
            .post(format!("{}/{hook}", self.url))
            .json(body)
            .send()
            .await
            .map_err(|e| match e.is_timeout() {
                true => Failure::Timeout,
                false => Failure::Unavailable(e.to_string()),
            })?;
        // Redirects are not followed: a 3xx lands here as a failure.
        if !response.status().is_success() {
            return Err(Failure::Unavailable(format!("HTTP {}", response.status())));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Failure::Unavailable(e.to_string()))?
        {
            if bytes.len() + chunk.len() > self.max_answer {
                return Err(Failure::Invalid(format!("over {} bytes", self.max_answer)));
            }
            bytes.extend_from_slice(&chunk);
        }
        parse(&bytes)
    }
}

/// Reads an answer body.
fn parse(body: &[u8]) -> Result<Answer, Failure> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| Failure::Invalid(e.to_string()))?;
    match (envelope.result, envelope.error) {
        (Some(result), None) => Ok(Answer::Result(result)),
        (None, Some(error)) => {
            let mut reason = error.reason.unwrap_or_else(|| "refused".to_owned());
            if reason.len() > MAX_REASON {
                let mut end = MAX_REASON;
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                reason.truncate(end);
            }
            Ok(Answer::Error {
                status: error.status,
                reason,
            })
        }
        _ => Err(Failure::Invalid(
            "expected exactly one of result and error".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked() {
        assert!(matches!(parse(br#"{"result":{}}"#), Ok(Answer::Result(m)) if m.is_empty()));
        match parse(br#"{"error":{"status":403,"reason":"no"}}"#) {
            Ok(Answer::Error { status, reason }) => {
                assert_eq!((status, &*reason), (Some(403), "no"))
            }
            other => panic!("{other:?}"),
        }
        let long = format!(r#"{{"error":{{"reason":"{}"}}}}"#, "é".repeat(200));
        match parse(long.as_bytes()) {
            Ok(Answer::Error { reason, .. }) => assert!(reason.len() <= MAX_REASON),
            other => panic!("{other:?}"),
        }
        for bad in [
            &b""[..],
            b"[]",
            br#"{"result":1}"#,
            br#"{}"#,
            br#"{"result":{},"error":{}}"#,
            br#"{"result":{},"x":1}"#,
        ] {
            assert!(matches!(parse(bad), Err(Failure::Invalid(_))), "{bad:?}");
        }
    }
}
