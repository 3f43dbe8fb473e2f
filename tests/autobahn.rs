//! Conformance: the Autobahn test suite's cases, run by its Python 3
//! runner `kosoku` against `--echo`: RFC 6455 (1.* to 10.*), and
//! permessage-deflate, RFC 7692 (12.* and 13.*). The two runs are separate
//! tests, so that cargo runs them side by side.

mod common;

use common::*;

/// Runs kosoku with `selection` (its -i/-x flags) against a fresh echo
/// server; returns how many cases ran and the verdicts that are not OK
/// (FAILED, ERROR, or missing), as "case field=verdict".
fn kosoku(name: &str, selection: &[&str]) -> (usize, Vec<String>) {
    // Case 9.* sends messages of up to 16 MiB. A case ends (closes, and
    // fails if its messages are not all back) on the first ping it gets,
    // and some 12.* cases run longer than 30 s on a loaded host: no pings.
    let server = Server::start(&[
        "--echo",
        "--max-message-size",
        "67108864",
        "--max-outbound-bytes",
        "67108864",
        "--ping-interval",
        "1h",
        // 12.* and 13.* send 1,000 messages of up to 512 KiB each as fast
        // as they come back: far past the default inflate budget (16 MiB/s),
        // which tests/compression.rs checks. Conformance runs without it.
        "--max-inflate-bytes-per-sec",
        "0",
    ]);
    let kosoku = venv_tool("RINGCAST_KOSOKU", "kosoku");
    let out = std::env::temp_dir().join(format!("ringcast-autobahn-{name}-{}", std::process::id()));
    let status = std::process::Command::new(kosoku)
        .args(selection)
        .arg("-o")
        .arg(&out)
        .arg(server.url("/echo"))
        .status()
        .expect("run kosoku");
    let index = std::fs::read_to_string(out.join("index.json"))
        .unwrap_or_else(|e| panic!("kosoku (exit {status}) wrote no index.json: {e}"));
    let index: serde_json::Value = serde_json::from_str(&index).unwrap();
    let mut failures = Vec::new();
    let mut cases = 0;
    for results in index.as_object().unwrap().values() {
        for (case, result) in results.as_object().unwrap() {
            cases += 1;
            for field in ["behavior", "behaviorClose"] {
                let verdict = result[field].as_str().unwrap_or("missing");
                if matches!(verdict, "FAILED" | "ERROR" | "UNIMPLEMENTED" | "missing") {
                    failures.push(format!("{case} {field}={verdict}"));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(out);
    (cases, failures)
}

#[test]
fn autobahn_cases_1_to_10_pass() {
    let (cases, failures) = kosoku("rfc6455", &["-x", "12.*", "-x", "13.*"]);
    assert!(cases >= 300, "only {cases} cases ran");
    assert!(
        failures.is_empty(),
        "{} cases failed: {failures:?}",
        failures.len()
    );
}

#[test]
fn autobahn_compression_cases_12_and_13_pass() {
    // 216 cases of 1000 messages each, two at a time, against the debug
    // build: 7 minutes on 2 cores, 17.5 when they are shared (load 10).
    let (cases, failures) = kosoku("deflate", &["-i", "12.*", "-i", "13.*", "-p", "2"]);
    assert!(cases >= 216, "only {cases} cases ran");
    assert!(
        failures.is_empty(),
        "{} cases failed: {failures:?}",
        failures.len()
    );
}
