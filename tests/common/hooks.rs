//! A webhook receiver for the presence and channels hooks (`--hook-url`
//! its [`HookReceiver::url`]): keeps each hook's events from the POSTs it
//! answered 200, in the order received, and can answer 500 to the first
//! presence POSTs (to test retries).

use super::WAIT;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// What the receiver got.
#[derive(Default)]
struct Received {
    /// The events of each hook (`presence`, `channels`), from the POSTs
    /// answered 200, in the order received.
    events: Mutex<HashMap<String, Vec<Value>>>,
    /// POSTs per hook, answered 200 or not.
    posts: Mutex<HashMap<String, usize>>,
    /// Presence POSTs still to be answered 500.
    fail_presence: AtomicUsize,
    changed: Notify,
}

/// Answers 500 while `fail_presence` says so (presence only), else keeps
/// the batch's events (never an empty batch) and answers 200.
async fn on_hook(
    State(received): State<Arc<Received>>,
    Path(hook): Path<String>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    *received
        .posts
        .lock()
        .unwrap()
        .entry(hook.clone())
        .or_default() += 1;
    let fail = hook == "presence"
        && received
            .fail_presence
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    if fail {
        received.changed.notify_waiters();
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({})));
    }
    let batch = body[&hook]
        .as_array()
        .unwrap_or_else(|| panic!("a {hook} hook body without a {hook:?} array: {body}"))
        .clone();
    assert!(!batch.is_empty(), "an empty {hook} batch: {body}");
    received
        .events
        .lock()
        .unwrap()
        .entry(hook)
        .or_default()
        .extend(batch);
    received.changed.notify_waiters();
    (StatusCode::OK, Json(json!({"result": {}})))
}

/// The hook receiver, on a free port of the test's runtime.
pub struct HookReceiver {
    /// The `--hook-url` to give the server.
    pub url: String,
    received: Arc<Received>,
}

impl HookReceiver {
    /// Starts a receiver that answers 500 to the first `fail_presence`
    /// presence POSTs.
    pub async fn start(fail_presence: usize) -> Self {
        let received = Arc::new(Received::default());
        received
            .fail_presence
            .store(fail_presence, Ordering::SeqCst);
        let app = Router::new()
            .route("/hooks/{hook}", post(on_hook))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, received }
    }

    /// Answers 200 to every POST from now on.
    pub fn stop_failing(&self) {
        self.received.fail_presence.store(0, Ordering::SeqCst);
    }

    /// `hook`'s events so far.
    pub fn events(&self, hook: &str) -> Vec<Value> {
        let events = self.received.events.lock().unwrap();
        events.get(hook).cloned().unwrap_or_default()
    }

    /// POSTs to `hook` so far, answered 200 or not.
    pub fn posts(&self, hook: &str) -> usize {
        let posts = self.received.posts.lock().unwrap();
        posts.get(hook).copied().unwrap_or(0)
    }

    /// Waits until `hook`'s events satisfy `done`, or `limit` has
    /// passed; returns them either way.
    pub async fn settle(
        &self,
        hook: &str,
        limit: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.received.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let events = self.events(hook);
            if done(&events) || tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.events(hook);
            }
        }
    }

    /// Waits (up to `limit`) until `hook`'s events satisfy `done`;
    /// returns them.
    ///
    /// # Panics
    /// Past `limit`.
    pub async fn wait_until(
        &self,
        hook: &str,
        limit: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let events = self.settle(hook, limit, &done).await;
        assert!(
            done(&events),
            "{hook} hook: not within {limit:?}; got {events:?}"
        );
        events
    }

    /// Waits (up to [`WAIT`]) until `hook` got an event `done` accepts;
    /// returns all its events so far.
    pub async fn wait_for(&self, hook: &str, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.wait_until(hook, WAIT, |events| events.iter().any(&done))
            .await
    }
}

/// An event for `done` in [`HookReceiver::wait_for`]: equal to `want`.
pub fn is(want: Value) -> impl Fn(&Value) -> bool {
    move |event| *event == want
}
