//! The JavaScript client's own tests (`clients/js/test/`, Node's test
//! runner): unit tests, the client in Node against the real binary, and
//! headless Debian Chromium driven by playwright-core (`*.browser.test.js`).
//! `./test.sh` installs their npm packages (`npm ci`); the binary comes
//! from cargo (`RINGCAST_BIN`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `node --test` on `files` (under clients/js/test), bounded in time.
fn node_tests(files: &[&str]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients/js");
    assert!(
        dir.join("node_modules/ws").exists(),
        "clients/js/node_modules is missing: run ./test.sh (npm ci in clients/js)"
    );
    let mut node = Command::new("node");
    node.current_dir(&dir)
        .args(["--test", "--test-concurrency=1", "--test-timeout=120000"])
        .args(files.iter().map(|f| format!("test/{f}")))
        .env("RINGCAST_BIN", env!("CARGO_BIN_EXE_ringcast"))
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1");
    let started = Instant::now();
    let out = node.output().expect("node runs");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "node --test failed: see above");
    assert!(started.elapsed() < Duration::from_secs(600));
}

#[test]
fn client_in_node() {
    node_tests(&["client.test.js"]);
}

#[test]
fn demo_and_client_in_chromium() {
    node_tests(&["demo.browser.test.js"]);
}

/// Two nodes over Debian's redis-server behind nginx: the page survives a
/// drain and restart of each node.
#[test]
fn demo_over_a_cluster_in_chromium() {
    node_tests(&["cluster.browser.test.js"]);
}

/// Presence in ringcast.js (`presence()`, `presenceStats()`, join and
/// leave callbacks) against the binary in Node.
#[test]
fn presence_in_node() {
    node_tests(&["presence.test.js"]);
}
