//! `--config FILE`, `RINGCAST_*` variables and flags: precedence, errors,
//! and `ringcast config print`.

mod common;

use common::*;
use std::process::{Command, Output};

fn ringcast(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringcast"));
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run ringcast")
}

fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("ringcast-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn flags_beat_environment_beat_file_beat_defaults() {
    let file = config_file(
        "precedence",
        "workers = 3\nidle-timeout = \"50s\"\nping-interval = \"7s\"\necho = true\n\
         trusted-proxies = [\"10.0.0.0/8\"]\n",
    );
    let out = ringcast(
        &[
            "config",
            "print",
            "--config",
            file.to_str().unwrap(),
            "--workers",
            "1",
        ],
        &[("RINGCAST_WORKERS", "2"), ("RINGCAST_PING_INTERVAL", "9s")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert_eq!(printed["workers"].as_integer(), Some(1), "flag");
    assert_eq!(printed["ping-interval"].as_str(), Some("9s"), "environment");
    assert_eq!(printed["idle-timeout"].as_str(), Some("50s"), "file");
    assert_eq!(printed["echo"].as_bool(), Some(true), "file");
    assert_eq!(
        printed["trusted-proxies"].as_array().unwrap()[0].as_str(),
        Some("10.0.0.0/8")
    );
    assert_eq!(printed["path"].as_str(), Some("/ws"), "default");
    assert_eq!(printed["drain-period"].as_str(), Some("30s"), "default");
}

#[test]
fn config_file_mistakes_are_named() {
    let unknown = config_file("unknown", "idle_timeout = \"5s\"\n");
    let out = ringcast(&["serve", "--config", unknown.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown key \"idle_timeout\""), "{stderr}");

    let bad_value = config_file("bad-value", "workers = \"many\"\n");
    let out = ringcast(
        &["config", "print", "--config", bad_value.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--workers"));

    let out = ringcast(&["serve", "--config", "/nonexistent/ringcast.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ringcast.toml"));
}

#[tokio::test]
async fn the_server_runs_with_the_file_settings() {
    let file = config_file("serve", "path = \"/live\"\n");
    let server = Server::start(&["--config", file.to_str().unwrap()]);
    let mut ws = connect(&server.url("/live?topic=t")).await;
    assert_eq!(server.publish("topic=t", "from file").await, 1);
    assert_eq!(next_text(&mut ws).await, "from file");
}

#[test]
fn broker_passwords_never_reach_the_output() {
    let out = ringcast(
        &[
            "config",
            "print",
            "--broker",
            "redis://:hunter2@127.0.0.1:6379/0",
        ],
        &[],
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(
        printed.contains("redis://***@127.0.0.1:6379/0"),
        "{printed}"
    );
    // A value without a scheme is named as wrong without being echoed.
    let out = ringcast(&["serve", "--broker", ":hunter2@127.0.0.1:6379"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--broker must be a redis://"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn listen_addresses_take_the_port_only_and_localhost_forms() {
    let file = config_file(
        "listen",
        "listen = \":9000\"\napi-listen = \"localhost:9001\"\n",
    );
    let out = ringcast(
        &["config", "print", "--config", file.to_str().unwrap()],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let printed: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert_eq!(printed["listen"].as_str(), Some("0.0.0.0:9000"));
    assert_eq!(printed["api-listen"].as_str(), Some("127.0.0.1:9001"));

    let out = ringcast(
        &[
            "config",
            "print",
            "--listen",
            "LOCALHOST:7000",
            "--api-listen",
            ":7001",
        ],
        &[],
    );
    assert!(out.status.success());
    let printed: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert_eq!(printed["listen"].as_str(), Some("127.0.0.1:7000"));
    assert_eq!(printed["api-listen"].as_str(), Some("0.0.0.0:7001"));

    for bad in ["nowhere:80", ":http", "8080"] {
        let out = ringcast(&["serve", "--listen", bad], &[]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(":PORT (every IPv4 address) or localhost:PORT"),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn a_server_started_on_localhost_addresses_serves() {
    let server = Server::start(&["--listen", "localhost:0", "--api-listen", "localhost:0"]);
    assert_eq!(server.ws.ip(), ip("127.0.0.1"));
    assert_eq!(server.api.ip(), ip("127.0.0.1"));
    let mut ws = connect(&server.url("/ws?topic=t")).await;
    assert_eq!(server.publish("topic=t", "on loopback").await, 1);
    assert_eq!(next_text(&mut ws).await, "on loopback");
}

#[test]
fn bad_values_say_what_is_wrong_with_them() {
    let out = ringcast(&["serve", "--max-connections", "-5"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--max-connections"), "{stderr}");
    assert!(stderr.contains("-5 is negative"), "{stderr}");
    assert!(!stderr.contains("unexpected argument"), "{stderr}");

    let out = ringcast(&["serve", "--read-buffers", "70000"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("70000 is too large"), "{stderr}");

    let out = ringcast(&["serve", "--history", "chat.*=200/10"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TTL 10 has no unit"), "{stderr}");
    assert!(stderr.contains("chat.*=200/10m"), "{stderr}");
}

/// `ringcast serve --demo` on free loopback ports with `RUST_LOG=info`,
/// `NO_COLOR` unset, and stdout and stderr piped: each stderr line is
/// sent on the channel.
fn demo_server() -> (std::process::Child, u16, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--demo", "--listen", "127.0.0.1:0"])
        .args(["--api-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ringcast");
    let (tx, lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ws: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ws="))
        .unwrap_or_else(|| panic!("no ws= in {line:?}"))
        .parse()
        .unwrap();
    (child, ws.port(), lines)
}

#[test]
fn demo_logs_its_url_and_a_piped_log_has_no_colours() {
    let (mut child, port, lines) = demo_server();
    let want = format!("demo page: http://127.0.0.1:{port}/");
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains(&want)) {
        match lines.recv_timeout(WAIT) {
            Ok(line) => seen.push(line),
            Err(e) => panic!("no {want:?} ({e}) in {seen:#?}"),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.iter().all(|l| !l.contains('\x1b')), "{seen:#?}");
}

/// Logs on a terminal are coloured unless `NO_COLOR` is set. `script`
/// (util-linux) gives the server a pseudo-terminal; the server logs its
/// startup lines, then fails on an API port already taken, and exits.
#[test]
fn logs_on_a_terminal_are_coloured_unless_no_color_is_set() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let command = format!(
        "{} serve --workers 1 --listen 127.0.0.1:0 --api-listen {}",
        env!("CARGO_BIN_EXE_ringcast"),
        taken.local_addr().unwrap()
    );
    let on_a_terminal = |no_color: Option<&str>| {
        let mut script = Command::new("script");
        script
            .args(["-qec", &command, "/dev/null"])
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null());
        match no_color {
            Some(value) => script.env("NO_COLOR", value),
            None => script.env_remove("NO_COLOR"),
        };
        let out = script.output().expect("run script(1)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("auth is off"), "{text}");
        assert!(text.contains("cannot listen"), "{text}");
        text
    };
    assert!(
        on_a_terminal(None).contains("\x1b["),
        "no colours on a terminal"
    );
    assert!(
        !on_a_terminal(Some("1")).contains('\x1b'),
        "colours despite NO_COLOR"
    );
    // NO_COLOR set but empty does not count (no-color.org).
    assert!(on_a_terminal(Some("")).contains("\x1b["));
}

/// Issue 20, finding 10: a second server on the same `--listen` refuses to
/// start, with one line naming who answers there; `--listen-overlap` lets
/// it start on purpose (a zero-downtime upgrade), sharing the address.
#[tokio::test]
async fn a_second_server_on_the_same_listen_address_is_refused_unless_asked() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let first = Server::start(&["--listen", &listen, "--api-listen", "127.0.0.1:0"]);
    assert_eq!(first.ws.port(), port);
    let mut second = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["serve", "--listen", &listen, "--api-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            second.kill().unwrap();
            second.wait().unwrap();
            panic!("a second server started on {listen}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    let expected = format!(
        "ringcast: another server is already listening on {listen} (it answered as ringcast)"
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // On purpose: it starts, and both serve the address.
    let upgrade = Server::start(&[
        "--listen",
        &listen,
        "--api-listen",
        "127.0.0.1:0",
        "--listen-overlap",
    ]);
    assert_eq!(upgrade.ws.port(), port);
    for server in [&first, &upgrade] {
        assert_eq!(server.get("/healthz").await.0, 200);
    }
    let _ = connect(&first.url("/ws")).await;
}
