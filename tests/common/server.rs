//! The server under test: start the built binary on free loopback ports,
//! call its API, read its logs and metrics, signal and stop it.

use super::WAIT;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
