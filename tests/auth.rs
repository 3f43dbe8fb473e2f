//! Identity and access: JWT connection auth (tokens minted by Python
//! PyJWT, never by the server's code), topic permissions over the URL and
//! the socket, expiry and refresh, push to users and their disconnection,
//! JWKS reload on SIGHUP, and the API token.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Key files for a test: an HMAC secret, RSA keys a and b, JWKS files.
struct Keys {
    dir: PathBuf,
}

impl Keys {
    fn new(rsa: bool) -> Self {
        let dir = scratch_dir("auth");
        std::fs::write(dir.join("secret"), "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::write(dir.join("other-secret"), "fedcba9876543210fedcba9876543210").unwrap();
        if rsa {
            make_keys(&dir);
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }

    /// An HS256 token signed with the secret.
    fn hs256(&self, claims: Value) -> String {
        mint(&json!([{"alg": "HS256", "key": self.path("secret"), "claims": claims}])).remove(0)
    }
}

fn rejects(scrape: &prometheus_parse::Scrape, reason: &str) -> f64 {
    metric(
        scrape,
        "ringcast_handshake_rejects_total",
        &[("reason", reason)],
    )
}

async fn expect_json(ws: &mut Ws, expected: Value) {
    let got: Value = serde_json::from_str(&next_text(ws).await).unwrap();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn good_tokens_are_accepted_and_bad_ones_get_401_counted_and_never_logged() {
    let keys = Keys::new(false);
    let secret = keys.path("secret");
    let server = Server::start_logged(&[
        "--jwt-hmac-secret-file",
        &secret,
        "--jwt-audience",
        "ringcast",
        "--jwt-leeway",
        "0s",
    ]);
    let now = unix_now();
    let claims = |extra: Value| {
        let mut c = json!({"sub": "42", "aud": "ringcast", "exp": now + 300});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    let hs = |key: &str, c: Value| json!({"alg": "HS256", "key": key, "claims": c});
    let specs = json!([
        hs(&secret, claims(json!({}))),
        hs(&secret, claims(json!({"exp": now - 60}))),
        hs(&secret, claims(json!({"nbf": now + 60}))),
        hs(&keys.path("other-secret"), claims(json!({}))),
        hs(&secret, claims(json!({"aud": "someone-else"}))),
        {"alg": "none", "claims": claims(json!({}))},
        // Algorithm confusion: labelled RS256, signed with the HMAC secret.
        {"alg": "RS256", "key": secret, "forge": true, "claims": claims(json!({}))},
    ]);
    let tokens = mint(&specs);
    let good = &tokens[0];

    // Each source works: header, query parameter, cookie.
    let mut ws = connect_bearer(&server.url("/ws?topic=news"), good).await;
    let mut by_query = connect(&server.url(&format!("/ws?topic=news&token={good}"))).await;
    let cookie = format!("Cookie: a=b; ringcast_token={good}\r\n");
    let (head, mut by_cookie) = handshake(&server, "/ws?topic=news", &cookie).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(server.publish("topic=news", "hello").await, 3);
    assert_eq!(by_cookie.frame().await, (1, b"hello".to_vec()));
    assert_eq!(next_text(&mut ws).await, "hello");
    assert_eq!(next_text(&mut by_query).await, "hello");

    let truncated = good[..good.len() - 5].to_owned();
    let mut bad: Vec<&str> = tokens[1..].iter().map(String::as_str).collect();
    bad.push(&truncated);
    for token in &bad {
        let head = handshake_head(&server, &format!("/ws?token={token}"), "").await;
        assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
        assert!(
            head.contains("WWW-Authenticate: Bearer error=\"invalid_token\"\r\n"),
            "{head}"
        );
    }
    // No token at all, and a token in a head over 8 KiB.
    assert!(handshake_head(&server, "/ws", "")
        .await
        .starts_with("HTTP/1.1 401 "));
    let huge = format!("/ws?token={}", "a".repeat(9000));
    assert!(handshake_head(&server, &huge, "")
        .await
        .starts_with("HTTP/1.1 431 "));

    let scrape = server.metrics().await;
    assert_eq!(rejects(&scrape, "unauthorized"), bad.len() as f64 + 1.0);
    assert_eq!(rejects(&scrape, "headers_too_large"), 1.0);
    // Refusals are logged with their reason, and no token ever is.
    server
        .wait_for_log(|l| l["fields"]["why"] == "expired (exp)")
        .await;
    let logs = serde_json::to_string(&server.logs()).unwrap();
    for token in bad.iter().chain([&good.as_str()]) {
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            signature.is_empty() || !logs.contains(signature),
            "a token was logged"
        );
    }
}

#[tokio::test]
async fn an_rs256_key_accepts_rs256_and_refuses_hmac_signed_with_the_public_key() {
    let keys = Keys::new(true);
    let server = Server::start(&["--jwt-public-key", &keys.path("a-public.pem")]);
    let claims = json!({"sub": "7", "exp": unix_now() + 300});
    let tokens = mint(&json!([
        {"alg": "RS256", "key": keys.path("a-private.pem"), "claims": claims},
        {"alg": "RS256", "key": keys.path("b-private.pem"), "claims": claims},
        // Algorithm confusion: HS256 keyed with the server's public PEM.
        {"alg": "HS256", "key": keys.path("a-public.pem"), "forge": true, "claims": claims},
    ]));
    let mut ws = connect_bearer(&server.url("/ws?topic=t"), &tokens[0]).await;
    assert_eq!(server.publish("user=7", "to seven").await, 1);
    assert_eq!(next_text(&mut ws).await, "to seven");
    for token in &tokens[1..] {
        let head = handshake_head(&server, &format!("/ws?token={token}"), "").await;
        assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    }
    assert_eq!(rejects(&server.metrics().await, "unauthorized"), 2.0);
}

#[tokio::test]
async fn claims_limit_topics_in_the_url_and_over_the_socket() {
    let keys = Keys::new(false);
    let server = Server::start(&["--jwt-hmac-secret-file", &keys.path("secret")]);
    let topics = json!(["news", "chat.*"]);
    let t42 = keys.hs256(json!({"sub": "42", "topics": topics}));
    let t44 = keys.hs256(json!({"sub": "44", "topics": topics}));

    let head = handshake_head(&server, &format!("/ws?topic=secret&token={t42}"), "").await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    // dialog#42,43 is for users 42 and 43 only, whatever the topics claim.
    let dialog = "topic=dialog%2342%2C43";
    let head = handshake_head(&server, &format!("/ws?{dialog}&token={t44}"), "").await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    assert_eq!(rejects(&server.metrics().await, "forbidden"), 2.0);
    let mut w42 = connect(&server.url(&format!("/ws?{dialog}&topic=chat.1&token={t42}"))).await;

    let mut w44 = connect_bearer(&server.url("/ws"), &t44).await;
    for topic in ["secret", "dialog#42,43"] {
        send_json(&mut w44, json!({"op": "subscribe", "topic": topic})).await;
        expect_json(
            &mut w44,
            json!({"op": "error", "topic": topic, "reason": "forbidden"}),
        )
        .await;
    }
    // Still usable.
    subscribe(&mut w44, "news").await;
    assert_eq!(
        server
            .publish("topic=news&topic=dialog%2342%2C43", "m")
            .await,
        2
    );
    assert_eq!(next_text(&mut w44).await, "m");
    assert_eq!(next_text(&mut w42).await, "m");
}

/// A `topics` claim may name a user-limited topic: the token stays valid,
/// and the topic's own user list still decides who gets it.
#[tokio::test]
async fn a_topics_claim_listing_a_user_limited_topic_is_valid() {
    let keys = Keys::new(false);
    let server = Server::start(&["--jwt-hmac-secret-file", &keys.path("secret")]);
    let specs: Vec<Value> = ["42", "43", "44"]
        .iter()
        .map(|sub| {
            let claims = json!({"sub": sub, "topics": ["dialog#42,43", "t.*"]});
            json!({"alg": "HS256", "key": keys.path("secret"), "claims": claims})
        })
        .collect();
    let [t42, t43, t44]: [String; 3] = mint(&json!(specs)).try_into().unwrap();
    let dialog = "topic=dialog%2342%2C43";

    let mut w42 = connect(&server.url(&format!("/ws?{dialog}&token={t42}"))).await;
    let mut w43 = connect_bearer(&server.url("/ws?topic=t.1"), &t43).await;
    subscribe(&mut w43, "dialog#42,43").await;
    let head = handshake_head(&server, &format!("/ws?{dialog}&token={t44}"), "").await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let mut w44 = connect(&server.url(&format!("/ws?topic=t.1&token={t44}"))).await;
    send_json(
        &mut w44,
        json!({"op": "subscribe", "topic": "dialog#42,43"}),
    )
    .await;
    expect_json(
        &mut w44,
        json!({"op": "error", "topic": "dialog#42,43", "reason": "forbidden"}),
    )
    .await;
    assert_eq!(server.publish(dialog, "for 42 and 43").await, 2);
    assert_eq!(next_text(&mut w42).await, "for 42 and 43");
    assert_eq!(next_text(&mut w43).await, "for 42 and 43");
    assert_eq!(server.publish("topic=t.1", "for all").await, 2);
    assert_eq!(next_text(&mut w44).await, "for all");
    assert_eq!(next_text(&mut w43).await, "for all");
    assert_eq!(rejects(&server.metrics().await, "unauthorized"), 0.0);
}

#[tokio::test]
async fn an_expired_token_closes_4001_unless_refreshed_for_the_same_user() {
    let keys = Keys::new(false);
    let server = Server::start(&[
        "--jwt-hmac-secret-file",
        &keys.path("secret"),
        "--jwt-leeway",
        "0s",
    ]);
    // Minted in one go: a cold Python start may take a second or two.
    let now = unix_now();
    let hs = |sub: &str, exp: u64| json!({"alg": "HS256", "key": keys.path("secret"), "claims": {"sub": sub, "exp": exp}});
    let tokens = mint(&json!([
        hs("42", now + 4),
        hs("42", now + 300),
        hs("43", now + 300)
    ]));
    let (short, tokens) = (&tokens[0], &tokens[1..]);
    let url = server.url("/ws?topic=t");
    let mut expiring = connect_bearer(&url, short).await;
    let mut refreshed = connect_bearer(&url, short).await;
    let mut wrong_user = connect_bearer(&url, short).await;
    send_json(&mut refreshed, json!({"op": "refresh", "token": tokens[0]})).await;
    expect_json(&mut refreshed, json!({"op": "refreshed"})).await;
    send_json(
        &mut wrong_user,
        json!({"op": "refresh", "token": tokens[1]}),
    )
    .await;
    expect_json(
        &mut wrong_user,
        json!({"op": "error", "reason": "a refresh must keep the same sub"}),
    )
    .await;
    // The refused refresh kept the old token, which expires too, within a
    // tick or two of its exp.
    expect_close(&mut expiring, 4001).await;
    expect_close(&mut wrong_user, 4001).await;
    let closed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    assert!(
        closed_at < Duration::from_secs(now + 5),
        "closed late: {closed_at:?}"
    );
    drop((expiring, wrong_user));
    // The refreshed connection is still open after the first exp.
    assert_eq!(server.publish("topic=t", "still here").await, 1);
    assert_eq!(next_text(&mut refreshed).await, "still here");
    server.wait_for_stat("closed", 2).await;
    let closed = server.stats().await["closed_by_code"]["4001"].as_u64();
    assert_eq!(closed, Some(2));
}

/// Connects three clients of user 42 so that both workers hold some: a
/// connection SO_REUSEPORT placed with the others is replaced.
async fn three_over_two_workers(server: &Server, token: &str) -> Vec<Ws> {
    let url = server.url(&format!("/ws?token={token}"));
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(connect(&url).await);
        let deadline = Instant::now() + WAIT;
        let per_worker = loop {
            let stats = server.stats().await;
            let per: Vec<u64> =
                serde_json::from_value(stats["worker_connections"].clone()).unwrap();
            if per.iter().sum::<u64>() == clients.len() as u64 {
                break per;
            }
            assert!(
                Instant::now() < deadline,
                "connections not counted: {per:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if clients.len() == 3 {
            if per_worker.iter().all(|&n| n > 0) {
                return clients;
            }
            clients.pop().unwrap().close(None).await.unwrap();
        }
    }
    panic!("40 connects all landed on one worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_to_a_user_reaches_all_its_connections_and_disconnect_closes_them() {
    let keys = Keys::new(false);
    let server = Server::start(&[
        "--workers",
        "2",
        "--jwt-hmac-secret-file",
        &keys.path("secret"),
    ]);
    let specs: Value = ["42", "43", "44"]
        .iter()
        .map(|sub| json!({"alg": "HS256", "key": keys.path("secret"), "claims": {"sub": sub}}))
        .collect();
    let tokens = mint(&specs);
    let mut user42 = three_over_two_workers(&server, &tokens[0]).await;
    let mut user43 = connect(&server.url(&format!("/ws?topic=t&token={}", tokens[1]))).await;
    let mut user44 = connect_bearer(&server.url("/ws"), &tokens[2]).await;
    subscribe(&mut user42[0], "t").await;

    assert_eq!(
        server.get("/users/42").await,
        (200, r#"{"connections":3}"#.into())
    );
    assert_eq!(server.publish("user=42", "for 42").await, 3);
    // Once per connection, by user and by topic together.
    assert_eq!(server.publish("user=42&topic=t", "both").await, 4);
    for ws in &mut user42 {
        assert_eq!(next_text(ws).await, "for 42");
        assert_eq!(next_text(ws).await, "both");
    }
    assert_eq!(server.publish("user=43&user=44", "others").await, 2);
    assert_eq!(next_text(&mut user43).await, "both");
    assert_eq!(next_text(&mut user43).await, "others");
    assert_eq!(
        next_text(&mut user44).await,
        "others",
        "44 got nothing before"
    );

    let (status, body) = server.post("/disconnect?user=42", "text/plain", "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"disconnected":3}"#));
    for ws in &mut user42 {
        expect_close(ws, 4003).await;
    }
    assert_eq!(
        server.get("/users/42").await,
        (200, r#"{"connections":0}"#.into())
    );
    assert_eq!(server.publish("topic=t&user=43", "after").await, 1);
    let (status, _) = server
        .post("/disconnect?user=43&code=999", "text/plain", "")
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_jwks_is_reloaded_on_sighup_and_a_bad_file_keeps_the_old_keys() {
    let keys = Keys::new(true);
    let jwks = keys.dir.join("jwks.json");
    std::fs::copy(keys.dir.join("jwks-a.json"), &jwks).unwrap();
    let server = Server::start_logged(&["--jwt-jwks", jwks.to_str().unwrap()]);
    let specs = json!([
        {"alg": "RS256", "key": keys.path("a-private.pem"), "kid": "a", "claims": {"sub": "1"}},
        {"alg": "RS256", "key": keys.path("b-private.pem"), "kid": "b", "claims": {"sub": "2"}},
    ]);
    let tokens = mint(&specs);
    let verdict =
        async |token: &str| handshake_head(&server, &format!("/ws?token={token}"), "").await;
    assert!(verdict(&tokens[0]).await.starts_with("HTTP/1.1 101 "));
    assert!(verdict(&tokens[1]).await.starts_with("HTTP/1.1 401 "));

    std::fs::copy(keys.dir.join("jwks-ab.json"), &jwks).unwrap();
    server.signal(libc::SIGHUP);
    reloaded(&server, "SIGHUP: JWT keys reloaded").await;
    assert!(verdict(&tokens[1]).await.starts_with("HTTP/1.1 101 "));

    std::fs::write(&jwks, "{").unwrap();
    server.signal(libc::SIGHUP);
    reloaded(&server, "SIGHUP: JWT keys not reloaded").await;
    assert!(verdict(&tokens[1]).await.starts_with("HTTP/1.1 101 "));
}

async fn reloaded(server: &Server, prefix: &str) {
    server
        .wait_for_log(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(prefix))
        })
        .await;
}

#[tokio::test]
async fn without_auth_flags_the_server_says_so_and_user_limited_topics_are_closed() {
    let server = Server::start_logged(&[]);
    reloaded(&server, "auth is off").await;
    let head = handshake_head(&server, "/ws?topic=notifications%2342&token=x", "").await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let mut ws = connect(&server.url("/ws?topic=a")).await;
    send_json(&mut ws, json!({"op": "refresh", "token": "x"})).await;
    expect_json(
        &mut ws,
        json!({"op": "error", "reason": "auth is off: there is no token to refresh"}),
    )
    .await;
}

async fn status(server: &Server, method: reqwest::Method, path: &str, token: Option<&str>) -> u16 {
    let request = reqwest::Client::new().request(method, format!("http://{}{}", server.api, path));
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn the_api_token_guards_everything_but_health_checks_and_metrics() {
    let dir = scratch_dir("api-token");
    let file = dir.join("token");
    std::fs::write(&file, "s3cret-api-token\n").unwrap();
    let server = Server::start(&["--api-token-file", file.to_str().unwrap()]);
    use reqwest::Method;
    let guarded = [
        (Method::POST, "/publish?topic=a"),
        (Method::POST, "/broadcast"),
        (Method::POST, "/disconnect?user=1"),
        (Method::GET, "/users/1"),
        (Method::POST, "/rebalance?fraction=0.5"),
        (Method::GET, "/stats"),
        (Method::POST, "/drain"),
    ];
    for (method, path) in &guarded {
        for token in [None, Some("wrong"), Some("s3cret-api-token-and-more")] {
            let got = status(&server, method.clone(), path, token).await;
            assert_eq!(got, 401, "{method} {path} with {token:?}");
        }
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            status(&server, Method::GET, path, None).await,
            200,
            "{path}"
        );
    }
    let token = Some("s3cret-api-token");
    for ((method, path), want) in guarded.iter().zip([200, 200, 200, 200, 202, 200, 202]) {
        assert_eq!(
            status(&server, method.clone(), path, token).await,
            want,
            "{path}"
        );
    }
}

#[test]
fn a_python_websockets_client_with_a_pyjwt_token_gets_a_push_to_its_user() {
    let keys = Keys::new(false);
    let server = Server::start(&["--jwt-hmac-secret-file", &keys.path("secret")]);
    let token = keys.hs256(json!({"sub": "42", "topics": ["news"]}));
    let python = venv_tool("RINGCAST_PYTHON", "python");
    let url = format!("ws://{}/ws?topic=news&token={token}", server.ws);
    // As the README's example, with the client in a script so that it
    // publishes only once connected.
    let script = format!(
        "import asyncio, websockets, urllib.request\n\
         async def main():\n\
         \x20   async with websockets.connect({url:?}) as ws:\n\
         \x20       req = urllib.request.Request('http://{api}/publish?user=42', data=b'hi', method='POST', headers={{'Content-Type': 'text/plain'}})\n\
         \x20       assert urllib.request.urlopen(req).read() == b'{{\"subscribers\":1}}'\n\
         \x20       assert await ws.recv() == 'hi'\n\
         asyncio.run(main())\n",
        api = server.api
    );
    let out = std::process::Command::new(python)
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_ringcast_v1_connection_gets_its_user_messages_as_message_ops() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let keys = Keys::new(false);
    let server = Server::start(&["--jwt-hmac-secret-file", &keys.path("secret")]);
    let specs = json!([{"alg": "HS256", "key": keys.path("secret"), "claims": {"sub": "42"}}]);
    let token = mint(&specs).remove(0);
    let mut request = server.url("/ws?topic=t").into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    headers.insert("sec-websocket-protocol", "ringcast.v1".parse().unwrap());
    let (mut ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect timed out")
        .expect("connect");
    assert_eq!(response.headers()["sec-websocket-protocol"], "ringcast.v1");
    expect_json(&mut ws, json!({"op": "subscribed", "topic": "t"})).await;
    assert_eq!(server.publish("user=42", "for 42").await, 1);
    expect_json(&mut ws, json!({"op": "message", "data": "for 42"})).await;
    // Reached by its topic and as the user's: the topic delivery only.
    assert_eq!(server.publish("user=42&topic=t", "both").await, 1);
    expect_json(
        &mut ws,
        json!({"op": "message", "topic": "t", "data": "both"}),
    )
    .await;
    assert_eq!(server.publish("user=42", "again").await, 1);
    expect_json(&mut ws, json!({"op": "message", "data": "again"})).await;
}
