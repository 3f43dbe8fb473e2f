//! At startup: is another server already accepting connections on
//! `--listen`? Every worker binds it with SO_REUSEPORT, which the kernel
//! also grants to a second process of the same user, so a second
//! `ringcast serve` (a deploy script run twice, a forgotten instance)
//! would otherwise start silently and get half of the new connections.
//!
//! The probe connects to the address (loopback for a wildcard address),
//! sends one tiny HTTP request and reads the first lines of the answer:
//! ringcast's refusals carry `Server: ringcast`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// How long the probe waits to connect, and then for an answer.
const TIMEOUT: Duration = Duration::from_millis(500);

/// Most bytes of the answer read (its status line and headers).
const MAX_ANSWER: usize = 2048;

/// The request sent: a path no endpoint serves, so that a ringcast there
/// answers 404 (or 400 with `--proxy-protocol`) and logs nothing more.
const REQUEST: &[u8] =
    b"GET /ringcast-listen-probe HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n";

/// Who accepts connections on `addr`, in words for the refusal (e.g.
/// "it answered as ringcast"); `None` when nothing does (the connection
/// is refused or times out) or the port is 0 (a free port is picked).
pub fn who_listens(addr: SocketAddr) -> Option<String> {
    if addr.port() == 0 {
        return None;
    }
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let mut stream = TcpStream::connect_timeout(&SocketAddr::new(ip, addr.port()), TIMEOUT).ok()?;
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let _ = stream.write_all(REQUEST);
    let mut answer = Vec::with_capacity(MAX_ANSWER);
    let mut buf = [0u8; 512];
    while answer.len() < MAX_ANSWER && !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    Some(describe(&answer))
}

/// Words for what answered: ringcast by its `Server` header, else the
/// status line (printable ASCII, at most 80 characters), else silence.
fn describe(answer: &[u8]) -> String {
    let text = String::from_utf8_lossy(answer);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    let ringcast = lines.take_while(|l| !l.is_empty()).any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("server")
                && value.trim().split('/').next()
                    == Some(ringcast_engine::protocol::handshake::SERVER)
        })
    });
    if ringcast {
        return "it answered as ringcast".to_owned();
    }
    let status: String = status
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(80)
        .collect();
    match status.is_empty() {
        true => "it accepted a connection but sent no HTTP answer".to_owned(),
        false => format!("it answered {status:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ringcast_is_told_by_its_server_header() {
        let ours = b"HTTP/1.1 404 Not Found\r\nServer: ringcast\r\nContent-Length: 3\r\n\r\nno\n";
        assert_eq!(describe(ours), "it answered as ringcast");
        let other = b"HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\n";
        assert_eq!(describe(other), "it answered \"HTTP/1.1 200 OK\"");
        assert!(describe(b"").contains("no HTTP answer"));
        assert_eq!(who_listens("127.0.0.1:0".parse().unwrap()), None);
    }
}
