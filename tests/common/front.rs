//! Several ringcast nodes behind haproxy, as deploy/haproxy.cfg sets it
//! up: the proxy in front, nodes on fixed ports that can restart behind
//! it, and `ringcast.v1` clients that connect through the front.

use super::{scratch_dir, Server, Ws, WAIT};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// haproxy and its config's scratch directory: killed and removed on drop.
pub struct Haproxy(Child, PathBuf);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// deploy/haproxy.cfg (its WebSocket side, unchanged: health checks on
/// `/readyz` once a second, PROXY protocol v2, retries and redispatch,
/// its timeouts) listening on 127.0.0.1:`port`, in front of nodes at
/// `nodes` (WebSocket and API ports) in place of its two example servers,
/// with `maxconn` lowered to 4000. Fails the test if the file no longer
/// has the lines replaced here.
pub fn haproxy(port: u16, nodes: &[(u16, u16)]) -> Haproxy {
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/haproxy.cfg");
    let mut text = std::fs::read_to_string(source).unwrap();
    let servers: String = nodes
        .iter()
        .enumerate()
        .map(|(i, (ws, api))| {
            format!(
                "    server ringcast{} 127.0.0.1:{ws} check port {api}\n",
                i + 1
            )
        })
        .collect();
    for (from, to) in [
        ("bind :80", format!("bind 127.0.0.1:{port}")),
        ("maxconn 200000", "maxconn 4000".to_owned()),
        (
            "    server ringcast1 10.0.0.1:8080 check port 8081\n",
            servers,
        ),
        (
            "    server ringcast2 10.0.0.2:8080 check port 8081\n",
            String::new(),
        ),
    ] {
        assert!(
            text.contains(from),
            "deploy/haproxy.cfg no longer has {from:?}"
        );
        text = text.replace(from, &to);
    }
    let dir = scratch_dir("haproxy");
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, text).unwrap();
    let child = Command::new("haproxy")
        .args(["-db", "-f", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy is not installed: run scripts/install-test-deps.sh");
    Haproxy(child, dir)
}

/// A node behind [`haproxy`]: over the broker at URL `broker`, with 2
/// workers, history on `h.*` and the PROXY protocol, on fixed loopback
/// ports `(ws, api)` (so that it restarts where haproxy expects it), then
/// `extra` arguments.
pub fn node_at(broker: &str, (ws, api): (u16, u16), extra: &[&str]) -> Server {
    let (listen, api_listen) = (format!("127.0.0.1:{ws}"), format!("127.0.0.1:{api}"));
    let mut args = vec![
        "--workers",
        "2",
        "--history",
        "h.*=1000/10m",
        "--broker",
        broker,
        "--listen",
        &listen,
        "--api-listen",
        &api_listen,
        "--proxy-protocol",
    ];
    args.extend(extra);
    Server::start(&args)
}

/// A `ringcast.v1` WebSocket through the front at URL `front`, retrying
/// every 20 ms (each attempt bounded by [`WAIT`]) while haproxy is not yet
/// listening or has no node up. Fails the test if still not connected at
/// `deadline`: the client's own, so that one that keeps losing its
/// connection ends too.
pub async fn connect_front(front: &str, deadline: Instant) -> Ws {
    loop {
        assert!(
            Instant::now() < deadline,
            "client never finished: still connecting through {front}"
        );
        let mut request = front.into_client_request().unwrap();
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("ringcast.v1"),
        );
        let connected = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await;
        if let Ok(Ok((ws, _))) = connected {
            return ws;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
