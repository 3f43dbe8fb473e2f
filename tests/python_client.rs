//! The Python `websockets` library as an independent client.

mod common;

use common::*;

#[test]
fn python_websockets_client_subscribes_and_receives() {
    let server = Server::start(&["--subprotocol", "chat"]);
    run_python_client("pubsub_client.py", &server, &[]);
}

/// Presence on one node (issue 22) with Python `websockets` and PyJWT
/// tokens: queries, stats, join/leave with `first`/`last`, errors, SSE
/// and long-poll (see tests/python/presence_client.py).
#[test]
fn python_presence_client_lists_members_and_sees_joins_and_leaves() {
    let secret = scratch_dir("presence").join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let secret = secret.to_str().unwrap();
    let server = Server::start(&["--jwt-hmac-secret-file", secret, "--presence", "room.*"]);
    run_python_client("presence_client.py", &server, &[secret]);
}
