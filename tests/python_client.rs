//! The Python `websockets` library as an independent client.

mod common;

use common::*;

#[test]
fn python_websockets_client_subscribes_and_receives() {
    let server = Server::start(&["--subprotocol", "chat"]);
    let python = venv_tool("RINGCAST_PYTHON", "python");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/pubsub_client.py"
    );
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(server.ws.to_string())
        .arg(server.api.to_string())
        .output()
        .expect("run the python client");
    assert!(
        output.status.success(),
        "python client failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
