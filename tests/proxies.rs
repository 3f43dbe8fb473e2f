//! The published proxy configs (deploy/nginx.conf, deploy/haproxy.cfg)
//! with the real daemons from Debian (`scripts/install-test-deps.sh`) in
//! front of ringcast: upgrade, client address, drain and failover with no
//! accepted message lost.

mod common;

use common::*;
use futures_util::future::join_all;
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// A daemon started by a test; stopped on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: nginx's master then stops its workers,
        // which would otherwise outlive it holding the listening port.
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn binary(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is not installed: run scripts/install-test-deps.sh"))
}

/// `deploy/NAME` with each `(from, to)` replaced (each must occur) and
/// written to a scratch directory; returns the directory and the file.
fn deploy_config(name: &str, replacements: &[(&str, String)]) -> (PathBuf, PathBuf) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    let mut text = std::fs::read_to_string(&source).unwrap();
    for (from, to) in replacements {
        assert!(text.contains(from), "deploy/{name} no longer has {from:?}");
        text = text.replace(from, to);
    }
    let dir = std::env::temp_dir().join(format!(
        "ringcast-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn nginx_proxies_websockets_and_passes_the_client_address() {
    let server = Server::start_logged(&["--trusted-proxies", "127.0.0.1/32"]);
    let port = free_port();
    let (dir, conf) = deploy_config(
        "nginx.conf",
        &[
            ("listen 80;", format!("listen 127.0.0.1:{port};")),
            ("server 127.0.0.1:8080;", format!("server {};", server.ws)),
            ("worker_processes auto;", "worker_processes 1;".into()),
        ],
    );
    let globals = format!(
        "daemon off; pid {0}/nginx.pid; error_log {0}/error.log;",
        dir.display()
    );
    let _nginx = Daemon(
        Command::new(binary("nginx"))
            .args([
                "-p",
                dir.to_str().unwrap(),
                "-c",
                conf.to_str().unwrap(),
                "-g",
                &globals,
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start nginx"),
    );
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(front).await;

    let url = format!("ws://{front}/ws?topic=news");
    let mut ws = connect_from(ip("127.0.0.8"), front, &url).await;
    subscribe(&mut ws, "extra").await;
    assert_eq!(
        server
            .publish("topic=news&topic=extra", "through nginx")
            .await,
        1
    );
    assert_eq!(next_text(&mut ws).await, "through nginx");
    // nginx's X-Real-IP names the client, and nginx is trusted to say so.
    server
        .wait_for_log(|l| {
            l["fields"]["message"] == "connection open" && l["fields"]["peer"] == "127.0.0.8"
        })
        .await;
}

/// One client behind haproxy: reconnects and resubscribes (by query) on
/// every close until told to stop; returns the sequence numbers received.
async fn resilient_client(front: SocketAddr, stop: Arc<AtomicBool>) -> Vec<u64> {
    let url = format!("ws://{front}/ws?topic=feed");
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    'connect: loop {
        assert!(Instant::now() < deadline, "client never settled");
        let stream = tcp_from(ip("127.0.0.7"), front).await;
        let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
        let Ok(Ok((mut ws, _))) =
            tokio::time::timeout(WAIT, tokio_tungstenite::client_async(&url, stream)).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            match tokio::time::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "end" => {
                    assert!(stop.load(Ordering::Acquire));
                    return received;
                }
                Ok(Some(Ok(Message::Text(t)))) => received.push(t.parse().unwrap()),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    let code = frame.map(|f| u16::from(f.code));
                    assert_eq!(code, Some(1001), "closed other than by the drain");
                    continue 'connect;
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("client stream ended: {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_with_proxy_v2_fails_over_on_drain_without_losing_messages() {
    // The API needs a token: haproxy's health checks (GET /readyz) go
    // without one; the harness's publishes carry it.
    let token = scratch_dir("haproxy").join("api-token");
    std::fs::write(&token, "haproxy-test-token\n").unwrap();
    let args = [
        "--proxy-protocol",
        "--drain-period",
        "3s",
        "--workers",
        "1",
        "--api-token-file",
        token.to_str().unwrap(),
    ];
    let a = Server::start_logged(&args);
    let b = Server::start_logged(&args);
    let port = free_port();
    let (_dir, cfg) = deploy_config(
        "haproxy.cfg",
        &[
            ("bind :80", format!("bind 127.0.0.1:{port}")),
            // This host's open-file limit is 20000.
            ("maxconn 200000", "maxconn 4000".into()),
            (
                "10.0.0.1:8080 check port 8081",
                format!("{} check port {}", a.ws, a.api.port()),
            ),
            (
                "10.0.0.2:8080 check port 8081",
                format!("{} check port {}", b.ws, b.api.port()),
            ),
        ],
    );
    let _haproxy = Daemon(
        Command::new(binary("haproxy"))
            .args(["-db", "-f", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .spawn()
            .expect("start haproxy"),
    );
    let front = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(front).await;

    const CLIENTS: u64 = 20;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(resilient_client(front, stop.clone())))
        .collect();
    let open = |s: serde_json::Value| s["open"].as_u64().unwrap();
    let deadline = Instant::now() + WAIT;
    while open(a.stats().await) + open(b.stats().await) < CLIENTS {
        assert!(Instant::now() < deadline, "clients did not all connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        open(a.stats().await) > 0 && open(b.stats().await) > 0,
        "leastconn uses both"
    );
    // PROXY v2 carried the client's own address, not haproxy's.
    for server in [&a, &b] {
        server
            .wait_for_log(|l| {
                l["fields"]["message"] == "connection open" && l["fields"]["peer"] == "127.0.0.7"
            })
            .await;
    }

    // The backend publishes every message to both nodes, all through the
    // drain; each reply says how many subscribers it was queued to.
    let mut queued = BTreeMap::new();
    let mut seq = 0u64;
    let mut publish = async |seq: u64| {
        let n = a_or_zero(&a, seq).await + b.publish("topic=feed", &seq.to_string()).await;
        queued.insert(seq, n);
    };
    for _ in 0..20 {
        publish(seq).await;
        seq += 1;
    }
    let (status, _) = a.post("/drain", "text/plain", "").await;
    assert_eq!(status, 202);
    // Until every client has moved to b and a has exited.
    let deadline = Instant::now() + Duration::from_secs(30);
    while open(b.stats().await) < CLIENTS {
        assert!(Instant::now() < deadline, "clients did not all move to b");
        publish(seq).await;
        seq += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..20 {
        publish(seq).await;
        seq += 1;
    }
    stop.store(true, Ordering::Release);
    assert_eq!(b.publish("topic=feed", "end").await, CLIENTS);
    let received: Vec<Vec<u64>> = join_all(clients)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(
        a.exit_within(WAIT).await.success(),
        "the drained node exits 0"
    );

    // Every message was delivered to exactly as many clients as it was
    // queued to, and the ones after the move reached everyone.
    let mut delivered = BTreeMap::<u64, u64>::new();
    // A client that moves between the publish to a and the one to b gets
    // that message from both: at least once, in order.
    for client in &received {
        assert!(client.is_sorted(), "in order: {client:?}");
        for &s in client {
            *delivered.entry(s).or_default() += 1;
        }
    }
    for (&s, &n) in &queued {
        assert_eq!(delivered.get(&s).copied().unwrap_or(0), n, "message {s}");
    }
    for s in seq - 20..seq {
        assert_eq!(queued[&s], CLIENTS, "message {s} after the move");
    }
}

/// Publishes to a node that may have exited after its drain (0 then).
async fn a_or_zero(a: &Server, seq: u64) -> u64 {
    let response = a
        .api(reqwest::Method::POST, "/publish?topic=feed")
        .header("content-type", "text/plain")
        .body(seq.to_string())
        .send()
        .await;
    match response {
        Ok(r) if r.status() == 200 => r.json::<serde_json::Value>().await.unwrap()["subscribers"]
            .as_u64()
            .unwrap(),
        _ => 0,
    }
}
