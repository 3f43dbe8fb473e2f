//! Shared harness for the black-box tests: start the built `ringcast`
//! binary on free loopback ports, and talk to it as independent clients do.
#![allow(dead_code)] // each test binary uses a different part of the harness
pub mod redis_ha;

use futures_util::{SinkExt, StreamExt};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Upper bound for any single awaited event in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A running `ringcast serve`; killed on drop.
pub struct Server {
    child: Option<Child>,
    pub ws: SocketAddr,
    pub api: SocketAddr,
    /// JSON log lines, for servers started with [`Server::start_logged`];
    /// raw stderr lines (as JSON strings) for [`Server::start_stderr`].
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
    /// The API token, when the server was started with `--api-token-file`:
    /// the harness's API requests carry it.
    pub api_token: Option<String>,
}

/// What a test keeps of the server's stderr.
#[derive(Clone, Copy, PartialEq)]
enum Stderr {
    /// Inherited, at `RUST_LOG=warn`.
    Inherit,
    /// Debug logs in JSON, each line parsed (a line that is not JSON fails
    /// the test).
    Json,
    /// Every line as text (panic messages are not JSON).
    Raw,
}

impl Server {
    /// Starts the binary with `args` on free ports and waits for its
    /// `listening ws=… api=…` line.
    pub fn start(args: &[&str]) -> Self {
        Self::spawn(args, Stderr::Inherit)
    }

    /// As [`Server::start`], with debug logs in JSON collected for
    /// [`Server::wait_for_log`].
    pub fn start_logged(args: &[&str]) -> Self {
        Self::spawn(args, Stderr::Json)
    }

    /// As [`Server::start`], keeping every stderr line as a JSON string
    /// for [`Server::wait_for_log`].
    pub fn start_stderr(args: &[&str]) -> Self {
        Self::spawn(args, Stderr::Raw)
    }

    fn spawn(args: &[&str], mode: Stderr) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringcast"));
        command.arg("serve");
        // Free ports, unless the test names its own (a node restarted on
        // the same ports).
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"]);
        }
        command.args(args).stdout(Stdio::piped());
        match mode {
            Stderr::Json => {
                command
                    .args(["--log-format", "json"])
                    .env("RUST_LOG", "info,ringcast_engine=debug")
                    .stderr(Stdio::piped());
            }
            Stderr::Raw => {
                command.env("RUST_LOG", "warn").stderr(Stdio::piped());
            }
            Stderr::Inherit => {
                command.env("RUST_LOG", "warn");
            }
        }
        let api_token = args.iter().position(|a| *a == "--api-token-file").map(|i| {
            std::fs::read_to_string(args[i + 1])
                .unwrap()
                .trim()
                .to_owned()
        });
        let mut child = command.spawn().expect("start ringcast");
        let logs = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let line = line.expect("read a log line");
                    let value = if mode == Stderr::Json {
                        serde_json::from_str(&line)
                            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"))
                    } else {
                        serde_json::Value::String(line)
                    };
                    logs.lock().unwrap().push(value);
                }
            });
        }
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read listening line");
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .parse()
                .unwrap()
        };
        let (ws, api) = (field("ws="), field("api="));
        Self {
            child: Some(child),
            ws,
            api,
            logs,
            api_token,
        }
    }

    /// All log lines so far.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.logs.lock().unwrap().clone()
    }

    /// An API request to `path`, with the API token if the server has one.
    pub fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request =
            reqwest::Client::new().request(method, format!("http://{}{}", self.api, path));
        match &self.api_token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Waits (up to [`WAIT`]) for a JSON log line `matches` accepts.
    pub async fn wait_for_log(
        &self,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.logs.lock().unwrap().iter().find(|l| matches(l)) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no such log line in {:?}",
                self.logs.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server's resident memory (VmRSS), in bytes.
    pub fn rss(&self) -> u64 {
        let pid = self.child.as_ref().unwrap().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    /// Sends `signal` to the server.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid, signal) };
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits up to `limit` for the process to exit; returns its status.
    pub async fn exit_within(mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("ringcast did not exit within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GETs `path` on the API; returns the status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .api(reqwest::Method::GET, path)
            .send()
            .await
            .expect("API request");
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Scrapes `/metrics` and parses it as Prometheus text.
    pub async fn metrics(&self) -> prometheus_parse::Scrape {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200);
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
            .expect("/metrics is Prometheus text")
    }

    /// Polls `/stats` (up to [`WAIT`]) until `field` is at least `value`.
    pub async fn wait_for_stat(&self, field: &str, value: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let now = self.stats().await[field].as_u64();
            if now >= Some(value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "stats {field} stayed {now:?}, wanted {value}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.ws, path)
    }

    /// POSTs `body` to the API at `path` with a content type; returns the
    /// status and the body.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, String) {
        let response = self
            .api(reqwest::Method::POST, path)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("API request");
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Publishes text and returns the subscriber count from the 200 reply.
    pub async fn publish(&self, topics: &str, text: &str) -> u64 {
        let (status, body) = self
            .post(&format!("/publish?{topics}"), "text/plain", text.to_owned())
            .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["subscribers"]
            .as_u64()
            .unwrap()
    }

    pub async fn stats(&self) -> serde_json::Value {
        self.api(reqwest::Method::GET, "/stats")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The value of a counter or gauge in a scrape, by name and labels.
pub fn metric(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name} is not a counter or gauge: {other:?}"),
    }
}

/// A TCP connection to `to` from source address `from` (any 127.0.0.0/8
/// address on loopback).
pub async fn tcp_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.expect("TCP connect")
}

/// A WebSocket client connecting to `url` (on `to`) from address `from`.
pub async fn connect_from(from: IpAddr, to: SocketAddr, url: &str) -> Ws {
    let stream = tcp_from(from, to).await;
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("connect timed out")
        .expect("connect")
        .0
}

/// An IP address from its text.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `n` clients connected to `url`, opened 100 at a time.
pub async fn connect_many(url: &str, n: usize) -> Vec<Ws> {
    let mut clients = Vec::with_capacity(n);
    while clients.len() < n {
        let batch = (n - clients.len()).min(100);
        clients.extend(futures_util::future::join_all((0..batch).map(|_| connect(url))).await);
    }
    clients
}

pub async fn connect(url: &str) -> Ws {
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
        .expect("connect")
        .0
}

/// The next text message, skipping pings; panics on anything else.
pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("message timed out")
        {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

pub async fn send_json(ws: &mut Ws, value: serde_json::Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

/// Subscribes over the connection and waits for the ack.
pub async fn subscribe(ws: &mut Ws, topic: &str) {
    send_json(ws, serde_json::json!({"op": "subscribe", "topic": topic})).await;
    let ack: serde_json::Value = serde_json::from_str(&next_text(ws).await).unwrap();
    assert_eq!(ack, serde_json::json!({"op": "subscribed", "topic": topic}));
}

/// Expects a close frame with `code`, then the end of the stream.
pub async fn expect_close(ws: &mut Ws, code: u16) {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close timed out")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(
                    u16::from(frame.code),
                    code,
                    "close reason {:?}",
                    frame.reason
                );
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected close {code}, got {other:?}"),
        }
    }
}

/// A client speaking raw bytes, for input no WebSocket library will send.
pub struct Raw {
    pub stream: TcpStream,
}

pub const GOOD_HANDSHAKE: &str = "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

impl Raw {
    pub async fn connect(server: &Server) -> Self {
        Self {
            stream: TcpStream::connect(server.ws).await.unwrap(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads an HTTP response head; returns it as text.
    pub async fn response_head(&mut self) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut byte))
                .await
                .expect("response timed out")
                .unwrap();
            assert_eq!(
                n,
                1,
                "connection closed before a response; got {:?}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    }

    /// Completes a good handshake on `path`.
    pub async fn upgrade(server: &Server, path: &str) -> Self {
        let mut raw = Self::connect(server).await;
        raw.send(GOOD_HANDSHAKE.replace("/ws", path).as_bytes())
            .await;
        let head = raw.response_head().await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        raw
    }

    /// Reads one server frame (servers never mask): opcode and payload.
    pub async fn frame(&mut self) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        tokio::time::timeout(WAIT, self.stream.read_exact(&mut h))
            .await
            .expect("frame timed out")
            .unwrap();
        assert_eq!(h[1] & 0x80, 0, "server frames are unmasked");
        let len = match h[1] & 0x7f {
            126 => self.stream.read_u16().await.unwrap() as usize,
            127 => self.stream.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let mut payload = vec![0; len];
        self.stream.read_exact(&mut payload).await.unwrap();
        (h[0] & 0x0f, payload)
    }

    /// Reads frames until a close frame; returns its status code, after
    /// checking the server then ends the TCP stream.
    pub async fn close_code(&mut self) -> u16 {
        loop {
            let (opcode, payload) = self.frame().await;
            if opcode == 0x8 {
                let mut rest = Vec::new();
                let eof = tokio::time::timeout(WAIT, self.stream.read_to_end(&mut rest)).await;
                assert!(
                    eof.is_ok(),
                    "server did not end the TCP stream after its close frame"
                );
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }
}

/// A masked client frame: first byte `b0` (FIN, RSV, opcode) and payload.
pub fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0xa1, 0xb2, 0xc3, 0xd4];
    let mut out = vec![b0];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// A tool from the test venv that `./test.sh` installs (`.venv/bin/NAME`),
/// or the path in environment variable `var`.
pub fn venv_tool(var: &str, name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(var) {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.venv/bin")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run ./test.sh, which installs the Python test venv, or set {var}",
        path.display()
    );
    path
}

/// Runs the Python client `tests/python/NAME` (in the test venv) with the
/// server's WebSocket and API addresses, then `args`, as its arguments,
/// and fails the test with the script's output unless it exits 0.
pub fn run_python_client(name: &str, server: &Server, args: &[&str]) {
    let python = venv_tool("RINGCAST_PYTHON", "python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/python")
        .join(name);
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(server.ws.to_string())
        .arg(server.api.to_string())
        .args(args)
        .output()
        .expect("run the python client");
    assert!(
        output.status.success(),
        "python client {name} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A fresh scratch directory for this test process.
pub fn scratch_dir(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ringcast-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn mint_script(args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/mint_jwt.py");
    let mut child = Command::new(venv_tool("RINGCAST_PYTHON", "python"))
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tests/python/mint_jwt.py");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "mint_jwt.py {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Writes RSA keys a and b and JWKS files into `dir` with PyJWT's script
/// (see tests/python/mint_jwt.py).
pub fn make_keys(dir: &std::path::Path) {
    mint_script(&["keys", dir.to_str().unwrap()], "");
}

/// Tokens minted by PyJWT, one per spec (see tests/python/mint_jwt.py).
pub fn mint(specs: &serde_json::Value) -> Vec<String> {
    serde_json::from_str(&mint_script(&["mint"], &specs.to_string())).unwrap()
}

/// Seconds since the Unix epoch, for token claims.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A WebSocket client for `url` with `token` as `Authorization: Bearer`.
pub async fn connect_bearer(url: &str, token: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect timed out")
        .expect("connect")
        .0
}

/// Sends a raw upgrade request for `target` (path and query) with `extra`
/// header lines; returns the response head and the connection.
pub async fn handshake(server: &Server, target: &str, extra: &str) -> (String, Raw) {
    let request = GOOD_HANDSHAKE
        .replace("GET /ws ", &format!("GET {target} "))
        .replace("Host: test\r\n", &format!("Host: test\r\n{extra}"));
    let mut raw = Raw::connect(server).await;
    raw.send(request.as_bytes()).await;
    (raw.response_head().await, raw)
}

/// The response head of [`handshake`].
pub async fn handshake_head(server: &Server, target: &str, extra: &str) -> String {
    handshake(server, target, extra).await.0
}

/// A client for `url` with extra request headers (e.g.
/// `("sec-websocket-protocol", "ringcast.v1")`, `("cookie", "...")`).
pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect timed out")
        .expect("connect")
        .0
}

/// The next text message as JSON.
pub async fn next_json(ws: &mut Ws) -> serde_json::Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
}
