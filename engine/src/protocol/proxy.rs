//! The PROXY protocol header a load balancer puts in front of a
//! connection's first byte to pass on the client's address (HAProxy's
//! "The PROXY protocol", versions 1 and 2). A pure parser over the bytes
//! received so far, bounded in length.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest version 1 header, in bytes, CRLF included (spec §2.1).
pub const MAX_V1: usize = 107;

/// Longest version 2 header accepted, in bytes: the 16-byte fixed part and
/// up to 1024 bytes of addresses and TLVs. A longer one is refused.
pub const MAX_V2: usize = 16 + 1024;

/// Version 2 signature (spec §2.2).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What the header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The proxy relays a client at this address.
    Client(SocketAddr),
    /// The proxy speaks for itself (v2 LOCAL, e.g. a health check) or the
    /// address family is unknown (v1 UNKNOWN, v2 UNSPEC or UNIX): use the
    /// socket's own peer address.
    Local,
}

/// A header was malformed; the connection is refused (spec: the receiver
/// must not guess, and drops the connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// Parses a PROXY header at the start of `buf`.
///
/// Returns `Ok(None)` while more bytes are needed, else the source and the
/// header's length in bytes (the HTTP request starts there).
///
/// # Errors
/// [`Malformed`] with a reason when `buf` cannot start a valid v1 or v2
/// header, or the header passes [`MAX_V1`] / [`MAX_V2`] bytes.
pub fn parse(buf: &[u8]) -> Result<Option<(Source, usize)>, Malformed> {
    let v1 = b"PROXY ";
    let prefix = buf.len().min(V2_SIGNATURE.len());
    if buf[..prefix] == V2_SIGNATURE[..prefix] {
        return if buf.len() < 16 {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    let prefix = buf.len().min(v1.len());
    if buf[..prefix] == v1[..prefix] {
        return if buf.len() < v1.len() {
            Ok(None)
        } else {
            parse_v1(buf)
        };
    }
    Err(Malformed("no PROXY protocol header"))
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Source, usize)>, Malformed> {
    // The CR must leave room for the LF within MAX_V1 bytes.
    let window = &buf[..buf.len().min(MAX_V1 - 1)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        return if buf.len() >= MAX_V1 - 1 {
            Err(Malformed("v1 header longer than 107 bytes"))
        } else {
            Ok(None)
        };
    };
    match buf.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(Malformed("v1 header not ended by CRLF")),
    }
    let line = std::str::from_utf8(&buf[..cr]).map_err(|_| Malformed("v1 header not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let source = match fields[..] {
        ["PROXY", "UNKNOWN", ..] => Source::Local,
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| -> Result<IpAddr, Malformed> {
                let ip: IpAddr = s.parse().map_err(|_| Malformed("v1 bad address"))?;
                if ip.is_ipv4() != (family == "TCP4") {
                    return Err(Malformed("v1 address does not match its family"));
                }
                Ok(ip)
            };
            let port = |s: &str| -> Result<u16, Malformed> {
                if s.is_empty() || s.len() > 5 || (s.len() > 1 && s.starts_with('0')) {
                    return Err(Malformed("v1 bad port"));
                }
                s.parse().map_err(|_| Malformed("v1 bad port"))
            };
            let (src, _dst, sport, _dport) = (ip(src)?, ip(dst)?, port(sport)?, port(dport)?);
            Source::Client(SocketAddr::new(src, sport))
        }
        _ => return Err(Malformed("v1 header is not PROXY TCP4|TCP6|UNKNOWN")),
    };
    Ok(Some((source, cr + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Source, usize)>, Malformed> {
    let (ver_cmd, family) = (buf[12], buf[13]);
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(Malformed("v2 version is not 2"));
    }
    if 16 + len > MAX_V2 {
        return Err(Malformed("v2 header longer than 1040 bytes"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(Malformed("v2 command is neither LOCAL nor PROXY")),
    };
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let source = match (local, family) {
        (true, _) => Source::Local,
        // TCP over IPv4: source, destination addresses, then ports.
        (false, 0x11) if len >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Source::Client(SocketAddr::new(ip.into(), port))
        }
        (false, 0x21) if len >= 36 => {
            let octets: [u8; 16] = body[..16].try_into().expect("16 bytes");
            let port = u16::from_be_bytes([body[32], body[33]]);
            Source::Client(SocketAddr::new(Ipv6Addr::from(octets).into(), port))
        }
        (false, 0x11 | 0x21) => return Err(Malformed("v2 address block too short")),
        (false, 0x00 | 0x31) => Source::Local,
        (false, _) => return Err(Malformed("v2 family is not a TCP stream")),
    };
    Ok(Some((source, 16 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend_from_slice(&[cmd, family]);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let header = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET /";
        assert_eq!(
            parse(header),
            Ok(Some((
                Source::Client("192.0.2.7:56324".parse().unwrap()),
                header.len() - 5
            )))
        );
        let header = b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n";
        assert_eq!(
            parse(header).unwrap().unwrap().0,
            Source::Client("[2001:db8::1]:1".parse().unwrap())
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Some((Source::Local, 15))));
    }

    #[test]
    fn v2_proxy_and_local_with_tlvs_skipped() {
        let mut body = vec![198, 51, 100, 9, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb];
        body.extend_from_slice(&[0x04, 0x00, 0x02, b'h', b'i']); // a TLV
        let header = v2(0x21, 0x11, &body);
        assert_eq!(
            parse(&header),
            Ok(Some((
                Source::Client("198.51.100.9:8080".parse().unwrap()),
                header.len()
            )))
        );
        let mut body6 = [0u8; 36];
        body6[15] = 1;
        body6[32..34].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(
            parse(&v2(0x21, 0x21, &body6)).unwrap().unwrap().0,
            Source::Client("[::1]:9".parse().unwrap())
        );
        assert_eq!(parse(&v2(0x20, 0x00, &[])), Ok(Some((Source::Local, 16))));
    }

    #[test]
    fn every_prefix_of_a_good_header_asks_for_more() {
        let headers = [
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
            v2(0x21, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]),
        ];
        for header in headers {
            for end in 0..header.len() {
                assert_eq!(parse(&header[..end]), Ok(None), "{end} bytes");
            }
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        let bad: [&[u8]; 10] = [
            b"GET / HTTP/1.1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            &[b'P', b'R', b'O', b'X', b'Y', b' ', 0xff, b'\r', b'\n'],
            b"\r\n\r\n\0\r\nQUIT\n\x11\x11\x00\x00",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04\x01\x02\x03\x04",
        ];
        for header in bad {
            assert!(
                parse(header).is_err(),
                "{:?}",
                String::from_utf8_lossy(header)
            );
        }
        let long = format!("PROXY TCP4 {}", "1".repeat(MAX_V1));
        assert!(parse(long.as_bytes()).is_err());
        // CR as the 107th byte: with its LF the line would be 108 bytes.
        let mut over = format!("PROXY UNKNOWN{}", " ".repeat(MAX_V1 - 14));
        assert_eq!(over.len(), MAX_V1 - 1);
        assert_eq!(
            parse(over.as_bytes()),
            Err(Malformed("v1 header longer than 107 bytes"))
        );
        assert!(
            parse(format!("{over}\r\n").as_bytes()).is_err(),
            "108 bytes"
        );
        over.pop();
        over.push_str("\r\n");
        assert_eq!(parse(over.as_bytes()), Ok(Some((Source::Local, MAX_V1))));
        let mut huge = v2(0x21, 0x11, &[]);
        huge[14..16].copy_from_slice(&2000u16.to_be_bytes());
        assert!(parse(&huge).is_err());
        assert!(
            parse(&v2(0x21, 0x12, &[0; 12])).is_err(),
            "UDP is not a stream"
        );
    }
}
