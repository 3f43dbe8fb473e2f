//! The HTTP transports on the WebSocket listener: SSE streams (head, events,
//! positions, heartbeats, resume with Last-Event-ID from curl and Python,
//! drain, auth, admission, CORS, slow consumers) and long-poll (Python, 100+
//! polls on one keep-alive connection), and the embedded JavaScript client.

mod common;

use common::*;
use std::process::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens `GET target` with `extra` header lines and reads the head.
async fn get(server: &Server, target: &str, extra: &str) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(server.ws).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: test\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Raw { stream };
    let head = raw.response_head().await;
    (head, raw.stream)
}

/// Reads until the text read so far contains `needle` (or EOF); returns it.
async fn read_until(stream: &mut TcpStream, seen: &mut String, needle: &str) {
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {seen:?}"))
            .unwrap();
        assert!(n > 0, "stream ended before {needle:?}: {seen:?}");
        seen.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
}

fn history() -> [&'static str; 2] {
    ["--history", "h.*=1000/10m"]
}

#[tokio::test]
async fn an_sse_stream_carries_deliveries_positions_and_heartbeats() {
    let server = Server::start(&[&history()[..], &["--ping-interval", "300ms"]].concat());
    let origin = "Origin: http://app.example\r\n";
    let (head, mut stream) = get(&server, "/sse?topic=h.a&topic=x", origin).await;
    for line in [
        "HTTP/1.1 200 OK\r\n",
        "Content-Type: text/event-stream\r\n",
        "Cache-Control: no-cache\r\n",
        "X-Accel-Buffering: no\r\n",
        "Access-Control-Allow-Origin: http://app.example\r\n",
    ] {
        assert!(head.contains(line), "{line} in {head}");
    }
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "\nid: h.a:0:").await;
    assert!(seen.starts_with("retry: 2000\n\n"), "{seen}");
    assert!(seen.contains("event: subscribed\ndata: {\"op\":\"subscribed\",\"topic\":\"x\"}\n\n"));
    // One delivery per topic, as in ringcast.v1.
    assert_eq!(server.publish("topic=h.a&topic=x", "hi").await, 2);
    read_until(
        &mut stream,
        &mut seen,
        "\"topic\":\"x\",\"data\":\"hi\"}\n\n",
    )
    .await;
    let epoch = seen.split("id: h.a:0:").nth(1).unwrap()[..8].to_owned();
    assert!(
        seen.contains(&format!(
            "id: h.a:1:{epoch}\ndata: {{\"op\":\"message\",\"topic\":\"h.a\",\"offset\":1,\"epoch\":\"{epoch}\",\"data\":\"hi\"}}\n\n"
        )),
        "{seen}"
    );
    // A topic without history has no position: its event has no id.
    assert!(seen.contains("\n\ndata: {\"op\":\"message\",\"topic\":\"x\",\"data\":\"hi\"}\n\n"));
    // Pretty-printed JSON stays one data line.
    let body = "{\n  \"k\": 1\n}";
    server
        .post("/publish?topic=x", "application/json", body)
        .await;
    read_until(&mut stream, &mut seen, "\"data\":{   \"k\": 1 }}\n\n").await;
    // Heartbeats at --ping-interval, and no idle timeout.
    read_until(&mut stream, &mut seen, ":\n\n:\n\n").await;
}

#[tokio::test]
async fn curl_resumes_a_stream_with_last_event_id() {
    let server = Server::start(&history());
    let curl = |extra: &[&str], query: &str| {
        let url = format!("http://{}/sse?topic=h.a&topic=h.b{query}", server.ws);
        let out = Command::new("curl")
            .args(["-sN", "--max-time", "1"])
            .args(extra)
            .arg(url)
            .output()
            .expect("curl runs");
        String::from_utf8(out.stdout).unwrap()
    };
    let first = curl(&[], "");
    let id = first
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("an id line")
        .to_owned();
    assert!(id.starts_with("h.a:0:") && id.contains(";h.b:0:"), "{id}");
    for n in 1..=3 {
        server.publish("topic=h.a", &format!("a{n}")).await;
    }
    server.publish("topic=h.b", "b1").await;
    let header = format!("Last-Event-ID: {id}");
    let resumed = curl(&["-H", &header], "");
    let data: Vec<&str> = resumed
        .lines()
        .filter(|l| l.starts_with("data: {\"op\":\"message\""))
        .collect();
    assert_eq!(data.len(), 4, "{resumed}");
    assert!(data[0].contains("\"data\":\"a1\"") && data[2].contains("\"data\":\"a3\""));
    assert!(data[3].contains("\"data\":\"b1\""));
    assert!(!resumed.contains("event: reset"), "{resumed}");
    // The same from the query, as a page that builds its own URL sends it;
    // a wrong epoch is a reset naming the topic.
    let (_, b) = id.split_once(';').unwrap();
    let stale = format!(
        "&last_event_id={}",
        urlencode(&format!("h.a:1:zzzzzzzz;{b}"))
    );
    let reset = curl(&[], &stale);
    assert!(
        reset.contains("event: reset\ndata: {\"topics\":[\"h.a\"]}"),
        "{reset}"
    );
    assert_eq!(reset.matches("\"data\":\"b1\"").count(), 1, "{reset}");
}

fn urlencode(s: &str) -> String {
    s.replace(':', "%3A").replace(';', "%3B")
}

#[tokio::test]
async fn python_sse_client_resumes_every_message_once() {
    let server = Server::start(&history());
    run_python_client("sse_client.py", &server, &[]);
}

#[tokio::test]
async fn python_long_poll_loses_nothing_over_100_polls() {
    let server = Server::start(&["--history", "h.*=1000/10m", "--poll-timeout", "2s"]);
    run_python_client("poll_client.py", &server, &["300"]);
}

#[tokio::test]
async fn a_poll_waits_for_a_message_or_its_timeout() {
    let server = Server::start(&["--poll-timeout", "300ms"]);
    let started = std::time::Instant::now();
    let (head, mut stream) = get(&server, "/poll?topic=x", "").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, r#"{"messages":[],"next":""}"#).await;
    // The same connection polls again; a publish answers it.
    let request = "GET /poll?topic=x HTTP/1.1\r\nHost: test\r\n\r\n";
    let (head, mut stream) = {
        let mut stream = stream;
        stream.write_all(request.as_bytes()).await.unwrap();
        let subscribed = async {
            while server.publish("topic=x", "now").await == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(WAIT, subscribed).await.unwrap();
        let mut raw = Raw { stream };
        (raw.response_head().await, raw.stream)
    };
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, r#""data":"now"}],"next":""}"#).await;
}

#[tokio::test]
async fn a_drain_ends_a_stream_with_a_close_event() {
    let server = Server::start(&["--drain-period", "2s"]);
    let (_, mut stream) = get(&server, "/sse?topic=a", "").await;
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "event: subscribed").await;
    let (status, _) = server.post("/drain?period=1s", "text/plain", "").await;
    assert_eq!(status, 202);
    read_until(
        &mut stream,
        &mut seen,
        "event: close\ndata: {\"code\":1001,",
    )
    .await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await;
    assert!(read.unwrap().is_ok(), "the server closes the stream");
}

/// A long-poll connection speaks plain HTTP: a drain ends a waiting poll
/// by closing it, with no WebSocket close frame in the stream.
#[tokio::test]
async fn a_drain_closes_a_waiting_poll_without_stray_bytes() {
    let server = Server::start(&["--drain-period", "2s", "--poll-timeout", "30s"]);
    let mut stream = TcpStream::connect(server.ws).await.unwrap();
    let request = "GET /poll?topic=x HTTP/1.1\r\nHost: test\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    // Admitted and subscribed: the poll is waiting.
    server.wait_for_stat("topics", 1).await;
    let (status, _) = server.post("/drain?period=200ms", "text/plain", "").await;
    assert_eq!(status, 202);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await;
    assert!(read.unwrap().is_ok(), "the server closes the poll");
    assert!(rest.is_empty(), "stray bytes: {rest:?}");
}

#[tokio::test]
async fn sse_takes_the_same_auth_admission_and_origin_rules() {
    let dir = scratch_dir("sse-auth");
    std::fs::write(dir.join("secret"), "an-sse-test-secret-of-32-bytes!!").unwrap();
    let secret = dir.join("secret");
    let server = Server::start(&[
        "--jwt-hmac-secret-file",
        secret.to_str().unwrap(),
        "--max-connections",
        "2",
        "--allowed-origins",
        "http://good.example",
    ]);
    let token = mint(&serde_json::json!([{
        "alg": "HS256", "key": secret.to_str().unwrap(), "claims": {"sub": "42"}
    }]))
    .remove(0);
    let (head, _) = get(&server, "/sse?topic=a", "").await;
    assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    let (head, _) = get(
        &server,
        "/sse?topic=dialog%2343,44",
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let (head, _) = get(
        &server,
        &format!("/sse?topic=a&token={token}"),
        "Origin: http://evil.example\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let cookie = format!("Cookie: ringcast_token={token}\r\nOrigin: http://good.example\r\n");
    let (head, mut one) = get(&server, "/sse?topic=dialog%2342,43", &cookie).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let mut seen = String::new();
    read_until(&mut one, &mut seen, "event: subscribed").await;
    // A waiting poll holds a connection too (its head comes later).
    let mut two = TcpStream::connect(server.ws).await.unwrap();
    let poll = format!("GET /poll?topic=x&token={token} HTTP/1.1\r\nHost: t\r\n\r\n");
    two.write_all(poll.as_bytes()).await.unwrap();
    server.wait_for_stat("open", 2).await;
    let (head, _) = get(&server, &format!("/sse?topic=a&token={token}"), "").await;
    assert!(
        head.starts_with("HTTP/1.1 503 "),
        "over --max-connections: {head}"
    );
}

#[tokio::test]
async fn a_slow_sse_consumer_is_closed_as_on_websocket() {
    let server = Server::start(&["--max-outbound-bytes", "65536"]);
    let (_, mut stream) = get(&server, "/sse?topic=a", "").await;
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "event: subscribed").await;
    let big = "x".repeat(60_000);
    for _ in 0..200 {
        server.publish("topic=a", &big).await;
        if server.stats().await["slow_consumer_closes"].as_u64() == Some(1) {
            break;
        }
    }
    assert_eq!(server.stats().await["slow_consumer_closes"], 1);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await;
    assert!(read.unwrap().is_ok());
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains("event: close\ndata: {\"code\":1008,"),
        "ends with the close event"
    );
}

#[tokio::test]
async fn the_listener_serves_the_client_and_the_transports_can_be_off() {
    let server = Server::start(&["--no-sse", "--no-poll"]);
    let (head, mut stream) = get(&server, "/ringcast.js", "").await;
    assert!(head.contains("Content-Type: text/javascript"), "{head}");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    assert!(body.contains("export class Ringcast"));
    for path in ["/sse?topic=a", "/poll?topic=a", "/"] {
        let (head, _) = get(&server, path, "").await;
        assert!(head.starts_with("HTTP/1.1 404 "), "{path}: {head}");
    }
}

/// One HTTP response on a keep-alive connection: head, and the body read
/// by its `Content-Length`.
async fn response(stream: &mut TcpStream) -> (String, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .unwrap_or_else(|_| panic!("no response; got {:?}", String::from_utf8_lossy(&head)))
            .unwrap();
        assert_eq!(n, 1, "closed; got {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap_or_else(|| panic!("no Content-Length in {head}"))
        .parse()
        .unwrap();
    let mut body = vec![0; len];
    tokio::time::timeout(WAIT, stream.read_exact(&mut body))
        .await
        .expect("body timed out")
        .unwrap();
    (head, String::from_utf8(body).unwrap())
}

/// Expects the server to end the connection with nothing more.
async fn expect_end(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await;
    assert!(read.expect("no close").is_ok());
    assert!(
        rest.is_empty(),
        "more: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

/// `GET /poll?QUERY` with `extra` header lines.
fn poll_request(query: &str, extra: &str) -> String {
    format!("GET /poll?{query} HTTP/1.1\r\nHost: t\r\n{extra}\r\n")
}

/// Issue 20, finding 2: each request on a keep-alive poll connection is
/// authenticated by itself. Topics under `h.` keep history, so a poll
/// without `since` is answered at once (with its position).
#[tokio::test]
async fn every_poll_on_a_keep_alive_connection_is_authenticated_by_itself() {
    let dir = scratch_dir("poll-auth");
    std::fs::write(dir.join("secret"), "a-poll-test-secret-of-32-bytes!!").unwrap();
    let secret = dir.join("secret");
    let secret = secret.to_str().unwrap();
    let auth = ["--jwt-hmac-secret-file", secret];
    let server = Server::start(&[&history()[..], &auth, &["--allow-anonymous"]].concat());
    let strict = Server::start(&[&history()[..], &auth].concat());
    let claims =
        |sub: &str| serde_json::json!({"alg": "HS256", "key": secret, "claims": {"sub": sub}});
    let tokens = mint(&serde_json::json!([claims("42"), claims("43")]));
    let bearer = |t: &String| format!("Authorization: Bearer {t}\r\n");
    let (as42, as43) = (bearer(&tokens[0]), bearer(&tokens[1]));

    // User 42, then user 43 on the same connection: served as 43.
    let mut c = TcpStream::connect(server.ws).await.unwrap();
    for (query, who) in [("topic=h.x%2342", &as42), ("topic=h.x%2343", &as43)] {
        c.write_all(poll_request(query, who).as_bytes())
            .await
            .unwrap();
        let (head, body) = response(&mut c).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{query}: {head}");
        assert!(body.contains(r#""next":"h.x#4"#), "{body}");
    }
    // User 43 asking for user 42's topic: refused, and the connection ends.
    c.write_all(poll_request("topic=h.x%2342", &as43).as_bytes())
        .await
        .unwrap();
    let (head, _) = response(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    expect_end(&mut c).await;

    // No token after user 42's request: anonymous (403 for 42's topic),
    // or 401 where a token is required, as a first request would be.
    for (server, status) in [(&server, "403"), (&strict, "401")] {
        let mut c = TcpStream::connect(server.ws).await.unwrap();
        c.write_all(poll_request("topic=h.x%2342", &as42).as_bytes())
            .await
            .unwrap();
        assert!(response(&mut c).await.0.starts_with("HTTP/1.1 200 "));
        c.write_all(poll_request("topic=h.x%2342", "").as_bytes())
            .await
            .unwrap();
        let (head, _) = response(&mut c).await;
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
        expect_end(&mut c).await;
    }
}

/// Issue 20, finding 2: a body is never read as a request. A head that
/// announces one (`Content-Length`, `Transfer-Encoding`) gets 400 and the
/// connection ends, first request or later.
#[tokio::test]
async fn a_poll_body_is_refused_never_parsed_as_a_request() {
    let server = Server::start(&history());
    let smuggled = poll_request("topic=h.b", "");
    for (first, announce) in [
        (true, format!("Content-Length: {}\r\n", smuggled.len())),
        (false, format!("Content-Length: {}\r\n", smuggled.len())),
        (false, "Transfer-Encoding: chunked\r\n".to_owned()),
    ] {
        let mut c = TcpStream::connect(server.ws).await.unwrap();
        if !first {
            c.write_all(poll_request("topic=h.a", "").as_bytes())
                .await
                .unwrap();
            assert!(response(&mut c).await.0.starts_with("HTTP/1.1 200 "));
        }
        let request = poll_request("topic=h.a", &announce) + &smuggled;
        c.write_all(request.as_bytes()).await.unwrap();
        let (head, _) = response(&mut c).await;
        assert!(head.starts_with("HTTP/1.1 400 "), "{announce}: {head}");
        expect_end(&mut c).await;
    }
}

/// Issue 20, finding 3: pipelined polls are answered in order, and a
/// request sent while a poll waits first ends that poll (an answer with no
/// message), then gets its own answer.
#[tokio::test]
async fn pipelined_polls_are_answered_in_order() {
    let server = Server::start(&[&history()[..], &["--poll-timeout", "30s"]].concat());
    let mut c = TcpStream::connect(server.ws).await.unwrap();
    let two = poll_request("topic=h.one", "") + &poll_request("topic=h.two", "");
    c.write_all(two.as_bytes()).await.unwrap();
    for topic in ["h.one", "h.two"] {
        let (head, body) = response(&mut c).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(body.contains(&format!(r#""next":"{topic}:0:"#)), "{body}");
    }
    // `x` keeps no history: this poll waits (up to 30 s).
    c.write_all(poll_request("topic=x", "").as_bytes())
        .await
        .unwrap();
    server.wait_for_stat("topics", 1).await;
    let started = std::time::Instant::now();
    c.write_all(poll_request("topic=h.three", "").as_bytes())
        .await
        .unwrap();
    let (_, waited) = response(&mut c).await;
    assert_eq!(waited, r#"{"messages":[],"next":""}"#);
    let (_, next) = response(&mut c).await;
    assert!(next.contains(r#""next":"h.three:0:"#), "{next}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
