//! Backend hooks against a real HTTP hook server written here (axum, on
//! a free loopback port): connect (admit with topics and permissions,
//! refuse, time out), publish (pass, rewrite, refuse), rpc, disconnect,
//! and an outage of the hook server.

mod common;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

const V1: (&str, &str) = ("sec-websocket-protocol", "ringcast.v1");

/// What the hook server saw.
#[derive(Default)]
struct Seen {
    connects: Mutex<Vec<Value>>,
    disconnects: Mutex<Vec<Value>>,
    disconnected: Notify,
}

/// The connect hook: the `session` cookie decides.
async fn on_connect(State(seen): State<Arc<Seen>>, Json(body): Json<Value>) -> Json<Value> {
    seen.connects.lock().unwrap().push(body.clone());
    let cookie = body["headers"]["cookie"].as_str().unwrap_or("");
    Json(match cookie {
        "session=alice" => json!({"result": {
            "user": "alice", "topics": ["room.1"], "publish": ["room.*"], "info": {"name": "Alice"}
        }}),
        "session=slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            json!({"result": {}})
        }
        "session=broken" => json!({"result": {"topics": ["not a topic"]}}),
        _ => json!({"error": {"status": 403, "reason": "unknown session"}}),
    })
}

/// The publish hook: rewrites `{"t":"rewrite"}`, refuses `{"t":"refuse"}`.
async fn on_publish(Json(body): Json<Value>) -> Json<Value> {
    Json(match body["data"]["t"].as_str() {
        Some("rewrite") => json!({"result": {"data": {"t": "REWRITTEN", "by": body["user"]}}}),
        Some("refuse") => json!({"error": {"reason": "not allowed here"}}),
        _ => json!({"result": {}}),
    })
}

/// The rpc hook: `add` sums its two arguments; anything else is an error.
async fn on_rpc(Json(body): Json<Value>) -> Json<Value> {
    Json(match body["method"].as_str() {
        Some("add") => {
            let sum = body["data"][0].as_i64().unwrap() + body["data"][1].as_i64().unwrap();
            json!({"result": {"data": {"sum": sum, "user": body["user"]}}})
        }
        _ => json!({"error": {"reason": "no such method"}}),
    })
}

async fn on_disconnect(State(seen): State<Arc<Seen>>, Json(body): Json<Value>) -> Json<Value> {
    let events = body["events"].as_array().unwrap().clone();
    seen.disconnects.lock().unwrap().extend(events);
    seen.disconnected.notify_waiters();
    Json(json!({"result": {}}))
}

/// A hook server on a free port, on its own thread and runtime; `stop`
/// drops the runtime, so its listener and every open connection close.
struct HookServer {
    url: String,
    seen: Arc<Seen>,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl HookServer {
    fn start() -> Self {
        let seen = Arc::new(Seen::default());
        let app = Router::new()
            .route("/hooks/connect", post(on_connect))
            .route("/hooks/publish", post(on_publish))
            .route("/hooks/rpc", post(on_rpc))
            .route("/hooks/disconnect", post(on_disconnect))
            .with_state(seen.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = axum::serve(listener, app);
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection task.
            runtime.shutdown_background();
        });
        Self {
            url,
            seen,
            stop: Mutex::new(Some(stop)),
            thread: Mutex::new(Some(thread)),
        }
    }

    fn stop(&self) {
        if let Some(stop) = self.stop.lock().unwrap().take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.lock().unwrap().take() {
            thread.join().unwrap();
        }
    }
}

fn start_server(hooks: &HookServer, extra: &[&str]) -> Server {
    let mut args = vec![
        "--hook-url",
        &hooks.url,
        "--hooks",
        "connect,publish,rpc,disconnect",
        "--hook-timeout",
        "500ms",
        "--workers",
        "2",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Alice through the connect hook, on `ringcast.v1`.
async fn alice(server: &Server) -> Ws {
    let mut ws = connect_with(&server.url("/ws"), &[V1, ("cookie", "session=alice")]).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"op": "subscribed", "topic": "room.1"})
    );
    ws
}

fn rejects(scrape: &prometheus_parse::Scrape, reason: &str) -> f64 {
    metric(
        scrape,
        "ringcast_handshake_rejects_total",
        &[("reason", reason)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_hook_admits_refuses_and_times_out_at_once_without_touching_others() {
    let hooks = HookServer::start();
    let server = start_server(&hooks, &[]);
    // Admitted before: it must keep getting publishes meanwhile.
    let mut admitted = alice(&server).await;
    let request = |cookie: &str| {
        GOOD_HANDSHAKE.replace(
            "Host: test\r\n",
            &format!("Host: test\r\nCookie: {cookie}\r\n"),
        )
    };
    let slow = tokio::spawn(raw_head(server.ws, request("session=slow")));
    let refused = tokio::spawn(raw_head(server.ws, request("session=mallory")));
    let late = tokio::spawn({
        let url = server.url("/ws");
        async move {
            let mut ws = connect_with(&url, &[V1, ("cookie", "session=alice")]).await;
            let reply = next_json(&mut ws).await;
            (ws, reply)
        }
    });
    // While the slow hook hangs, the admitted connection works.
    for i in 0..5 {
        server.publish("topic=room.1", &format!("m{i}")).await;
        assert_eq!(next_json(&mut admitted).await["data"], format!("m{i}"));
    }
    assert!(refused.await.unwrap().starts_with("HTTP/1.1 403 "));
    let (_late, reply) = late.await.unwrap();
    assert_eq!(reply, json!({"op": "subscribed", "topic": "room.1"}));
    let head = slow.await.unwrap();
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    // A hook answer that breaks the rules is a 503, not an admission.
    let head = handshake_head(&server, "/ws", "Cookie: session=broken\r\n").await;
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    let scrape = server.metrics().await;
    assert_eq!(rejects(&scrape, "hook_refused"), 1.0);
    assert_eq!(rejects(&scrape, "hook_unavailable"), 2.0);
    assert_eq!(
        metric(
            &scrape,
            "ringcast_hook_calls_total",
            &[("hook", "connect"), ("outcome", "timeout")]
        ),
        1.0
    );
    // The hook saw the selected headers and the client's address.
    let connects = hooks.seen.connects.lock().unwrap().clone();
    let first = &connects[0];
    assert_eq!(first["headers"]["cookie"], "session=alice");
    assert_eq!(first["ip"], "127.0.0.1");
    assert!(first["client"].is_string() && first["headers"].get("host").is_none());
    // Alice's open connections are hers: the API reaches her by user id.
    let (status, body) = server.get("/users/alice").await;
    assert_eq!((status, body.contains("\"connections\":2")), (200, true));
}

/// Sends a raw upgrade request; returns the response head.
async fn raw_head(addr: std::net::SocketAddr, request: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("response timed out")
            .unwrap();
        assert!(n > 0, "closed before a response");
        head.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_hook_passes_rewrites_and_refuses_in_order() {
    let hooks = HookServer::start();
    let server = start_server(&hooks, &[]);
    let mut ws = alice(&server).await;
    for (id, t) in [(1, "rewrite"), (2, "refuse"), (3, "plain")] {
        send_json(
            &mut ws,
            json!({"op": "publish", "topic": "room.1", "data": {"t": t}, "id": id}),
        )
        .await;
    }
    let expected = [
        json!({"op": "message", "topic": "room.1", "from": "alice", "data": {"t": "REWRITTEN", "by": "alice"}}),
        json!({"op": "published", "id": 1}),
        json!({"op": "error", "id": 2, "reason": "not allowed here"}),
        json!({"op": "message", "topic": "room.1", "from": "alice", "data": {"t": "plain"}}),
        json!({"op": "published", "id": 3}),
    ];
    for want in expected {
        assert_eq!(next_json(&mut ws).await, want);
    }
    // The permission from the connect hook's answer applies: room.* only.
    send_json(
        &mut ws,
        json!({"op": "publish", "topic": "news", "data": 1, "id": 4}),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"op": "error", "id": 4, "reason": "forbidden"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_round_trips_and_errors_and_disconnects_are_reported() {
    let hooks = HookServer::start();
    let server = start_server(&hooks, &[]);
    let mut ws = alice(&server).await;
    send_json(
        &mut ws,
        json!({"op": "rpc", "id": 9, "method": "add", "data": [2, 3]}),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"op": "rpc_result", "id": 9, "data": {"sum": 5, "user": "alice"}})
    );
    send_json(&mut ws, json!({"op": "rpc", "id": 10, "method": "nope"})).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"op": "error", "id": 10, "reason": "no such method"})
    );
    // Closing reports a disconnect event with the user and code.
    let reported = hooks.seen.disconnected.notified();
    ws.close(None).await.unwrap();
    tokio::time::timeout(WAIT, reported)
        .await
        .expect("no disconnect event");
    let events = hooks.seen.disconnects.lock().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0]["user"].clone(), events[0]["code"].clone()),
        (json!("alice"), json!(1005))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_outage_costs_handshakes_and_rpcs_but_not_subscribers() {
    let hooks = HookServer::start();
    let server = start_server(&hooks, &[]);
    let mut ws = alice(&server).await;
    hooks.stop();
    // New handshakes get 503: the hook's port refuses connections.
    let head = handshake_head(&server, "/ws", "Cookie: session=alice\r\n").await;
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    send_json(
        &mut ws,
        json!({"op": "rpc", "id": 1, "method": "add", "data": [1, 1]}),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"op": "error", "id": 1, "reason": "rpc unavailable"})
    );
    // The established subscriber still gets API publishes.
    server.publish("topic=room.1", "still here").await;
    assert_eq!(next_json(&mut ws).await["data"], "still here");
}

/// Issue 20, finding 2: the connect hook admitted a long-poll
/// connection's first request only, so that request's answer says
/// `Connection: close`, the connection ends, and a request pipelined
/// behind it is never served unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_connect_hook_a_poll_connection_serves_one_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hooks = HookServer::start();
    let server = start_server(&hooks, &["--history", "room.*=10/1m"]);
    let poll = |cookie: &str| {
        format!("GET /poll?topic=room.1 HTTP/1.1\r\nHost: t\r\nCookie: session={cookie}\r\n\r\n")
    };
    let mut stream = tokio::net::TcpStream::connect(server.ws).await.unwrap();
    let two = poll("alice") + &poll("mallory");
    stream.write_all(two.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut all))
        .await
        .expect("the connection ends after one answer")
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
    assert_eq!(hooks.seen.connects.lock().unwrap().len(), 1);
}
