//! The engine embedded in another program: after `Runtime::wait` returns,
//! no io_uring operation is left in flight, even when connections were
//! mid-send (a client that stopped reading) or mid-receive at the end.

use ringcast_engine::{Config, Content, Runtime};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

/// Opens a WebSocket connection subscribed to `topic` and reads the 101.
fn subscriber(addr: std::net::SocketAddr, topic: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /ws?topic={topic} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    stream
}

#[test]
fn wait_returns_with_no_operation_in_flight() {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        max_outbound_bytes: 64 << 20,
        ..Config::default()
    };
    let runtime = Runtime::start(config).unwrap();
    let addr = runtime.local_addr();
    let handle = runtime.handle();
    // Idle subscribers (receives armed), and one that never reads, so a
    // send stays in flight on a full socket buffer.
    let idle: Vec<_> = (0..8).map(|_| subscriber(addr, "idle")).collect();
    let stuck = subscriber(addr, "stuck");
    let (tx, rx) = mpsc::channel();
    let payload = vec![b'x'; 1 << 20];
    for _ in 0..16 {
        let tx = tx.clone();
        handle.publish(
            vec!["stuck".into()],
            Vec::new(),
            Content::Binary,
            &payload,
            move |n| {
                tx.send(n).unwrap();
            },
        );
    }
    for _ in 0..16 {
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 1);
    }
    assert!(handle.stats().operations_in_flight >= 9);
    // A drain shorter than the close timeout ends with the stuck client's
    // send and every receive still armed: the workers must cancel them.
    handle.drain(Duration::from_millis(500));
    runtime.wait().unwrap();
    let stats = handle.stats();
    assert_eq!(stats.operations_in_flight, 0, "{stats:?}");
    assert_eq!(
        stats.slots_in_use, 0,
        "every fixed-file slot was closed: {stats:?}"
    );
    drop((idle, stuck));
}
