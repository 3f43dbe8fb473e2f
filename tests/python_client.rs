//! The Python `websockets` library as an independent client.

mod common;

use common::*;

#[test]
fn python_websockets_client_subscribes_and_receives() {
    let server = Server::start(&["--subprotocol", "chat"]);
    run_python_client("pubsub_client.py", &server, &[]);
}
