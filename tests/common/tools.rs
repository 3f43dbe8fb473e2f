//! Tools beside the server: the Python test venv and its scripts, JWTs
//! minted by PyJWT, scratch directories and free ports.

use super::Server;
use std::path::PathBuf;
use std::process::{Command, Stdio};

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

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
