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
