//! RFC 6455 conformance: the Autobahn test suite's cases 1.* to 10.*, run
//! by its Python 3 runner `kosoku` against `--echo`. Groups 12 and 13 need
//! permessage-deflate, which the server does not negotiate.

mod common;

use common::*;

#[test]
fn autobahn_cases_1_to_10_pass() {
    // Case 9.* sends messages of up to 16 MiB.
    let server = Server::start(&[
        "--echo",
        "--max-message-size",
        "67108864",
        "--max-outbound-bytes",
        "67108864",
    ]);
    let kosoku = venv_tool("RINGCAST_KOSOKU", "kosoku");
    let out = std::env::temp_dir().join(format!("ringcast-autobahn-{}", std::process::id()));
    let status = std::process::Command::new(kosoku)
        .args(["-x", "12.*", "-x", "13.*", "-o"])
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
                if matches!(verdict, "FAILED" | "ERROR" | "missing") {
                    failures.push(format!("{case} {field}={verdict}"));
                }
            }
        }
    }
    assert!(cases >= 300, "only {cases} cases ran");
    assert!(
        failures.is_empty(),
        "{} cases failed: {failures:?}",
        failures.len()
    );
    let _ = std::fs::remove_dir_all(out);
}
