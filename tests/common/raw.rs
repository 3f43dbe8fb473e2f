//! A client speaking raw bytes: handshakes and frames no WebSocket
//! library would send, and the server's frames read as they are.

use super::{Server, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client speaking raw bytes, for input no WebSocket library will send.
pub struct Raw {
    pub stream: TcpStream,
}

pub const GOOD_HANDSHAKE: &str = "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

impl Raw {
    pub async fn connect(server: &Server) -> Self {
        Self {
            stream: TcpStream::connect(server.ws).await.unwrap(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads an HTTP response head; returns it as text.
    pub async fn response_head(&mut self) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut byte))
                .await
                .expect("response timed out")
                .unwrap();
            assert_eq!(
                n,
                1,
                "connection closed before a response; got {:?}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    }

    /// Completes a good handshake on `path`.
    pub async fn upgrade(server: &Server, path: &str) -> Self {
        let mut raw = Self::connect(server).await;
        raw.send(GOOD_HANDSHAKE.replace("/ws", path).as_bytes())
            .await;
        let head = raw.response_head().await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        raw
    }

    /// Reads one server frame (servers never mask): opcode and payload.
    pub async fn frame(&mut self) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        tokio::time::timeout(WAIT, self.stream.read_exact(&mut h))
            .await
            .expect("frame timed out")
            .unwrap();
        assert_eq!(h[1] & 0x80, 0, "server frames are unmasked");
        let len = match h[1] & 0x7f {
            126 => self.stream.read_u16().await.unwrap() as usize,
            127 => self.stream.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let mut payload = vec![0; len];
        self.stream.read_exact(&mut payload).await.unwrap();
        (h[0] & 0x0f, payload)
    }

    /// Reads frames until a close frame; returns its status code, after
    /// checking the server then ends the TCP stream.
    pub async fn close_code(&mut self) -> u16 {
        loop {
            let (opcode, payload) = self.frame().await;
            if opcode == 0x8 {
                let mut rest = Vec::new();
                let eof = tokio::time::timeout(WAIT, self.stream.read_to_end(&mut rest)).await;
                assert!(
                    eof.is_ok(),
                    "server did not end the TCP stream after its close frame"
                );
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }
}

/// A masked client frame: first byte `b0` (FIN, RSV, opcode) and payload.
pub fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0xa1, 0xb2, 0xc3, 0xd4];
    let mut out = vec![b0];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// Sends a raw upgrade request for `target` (path and query) with `extra`
/// header lines; returns the response head and the connection.
pub async fn handshake(server: &Server, target: &str, extra: &str) -> (String, Raw) {
    let request = GOOD_HANDSHAKE
        .replace("GET /ws ", &format!("GET {target} "))
        .replace("Host: test\r\n", &format!("Host: test\r\n{extra}"));
    let mut raw = Raw::connect(server).await;
    raw.send(request.as_bytes()).await;
    (raw.response_head().await, raw)
}

/// The response head of [`handshake`].
pub async fn handshake_head(server: &Server, target: &str, extra: &str) -> String {
    handshake(server, target, extra).await.0
}
