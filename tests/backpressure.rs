//! Back-pressure from both sides: subscribers that read too slowly, and a
//! receive buffer ring too small for what clients send.

mod common;

use common::{connect_many, next_text, subscribe, Server, WAIT};
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The payload of message `seq` on `topic`: its header names both, and the
/// filler is derived from them, so any received payload can be checked.
fn payload(topic: &str, seq: usize, len: usize) -> String {
    let mut p = format!("{topic} {seq} ");
    let fill = b'a' + (seq % 26) as u8;
    while p.len() < len {
        p.push(fill as char);
    }
    p
}

/// Whether `bytes` is exactly a payload published to `topic`.
fn is_published(topic: &str, bytes: &[u8]) -> bool {
    let text = std::str::from_utf8(bytes).expect("text frame is UTF-8");
    let mut words = text.splitn(3, ' ');
    if words.next() != Some(topic) {
        return false;
    }
    let Some(seq) = words.next().and_then(|s| s.parse::<usize>().ok()) else {
        return false;
    };
    text == payload(topic, seq, text.len())
}

/// A subscriber with a small receive buffer that reads a little at a time
/// until `done` is set, then as fast as it can (a closing connection gets
/// the close timeout, 5 s, to drain): parses every server frame, checks
/// each data frame is intact and from its topic, and returns the number
/// of data frames and the close code.
async fn slow_reader(server: &Server, topic: &str, done: &AtomicBool) -> (usize, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream: TcpStream = socket.connect(server.ws).await.unwrap();
    let request = format!(
        "GET /ws?topic={topic} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut frames = 0;
    loop {
        assert!(Instant::now() < deadline, "no close frame in time");
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("slow reader stalled")
            .unwrap();
        assert!(n > 0, "stream ended without a close frame");
        buf.extend_from_slice(&chunk[..n]);
        if frames == 0 {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            assert!(buf.starts_with(b"HTTP/1.1 101 "));
            buf.drain(..end + 4);
            frames = 1;
        }
        while let Some((opcode, body, used)) = server_frame(&buf) {
            match opcode {
                0x1 => assert!(
                    is_published(topic, body),
                    "a slow reader of {topic} got a frame that was not published there: {:?}",
                    String::from_utf8_lossy(&body[..body.len().min(40)])
                ),
                0x8 => return (frames - 1, u16::from_be_bytes([body[0], body[1]])),
                0x9 | 0xa => {}
                other => panic!("unexpected opcode {other}"),
            }
            frames += usize::from(opcode == 0x1);
            buf.drain(..used);
        }
        // Read slowly while publishing goes on: the server's queue for this
        // connection fills up.
        if !done.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// One unmasked server frame at the start of `buf`: opcode, payload and
/// bytes used; `None` while incomplete.
fn server_frame(buf: &[u8]) -> Option<(u8, &[u8], usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[0] & 0x70, 0, "RSV bits set");
    assert_eq!(buf[1] & 0x80, 0, "server frames are unmasked");
    let (len, head) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    (buf.len() >= head + len).then(|| (buf[0] & 0x0f, &buf[head..head + len], head + len))
}

/// Messages published to each topic in the slow-consumer test: 8 MB to
/// the slow topic, more than the kernel's socket buffers (4 MB at most)
/// and the queue limit together can hold.
const MESSAGES: usize = 600;

/// Every third message is large, the others small.
fn size(seq: usize) -> usize {
    if seq % 3 == 0 {
        40_000
    } else {
        120
    }
}

#[tokio::test]
async fn slow_subscribers_get_intact_frames_then_1008_while_fast_ones_get_everything() {
    // 1 MiB of queue: a fast reader on a loaded host never falls that far
    // behind, while a slow one, with 8 MB published to its topic, passes
    // it and the kernel's socket buffers (4 MB at most) together.
    let server = Server::start(&["--workers", "2", "--max-outbound-bytes", "1048576"]);
    let url = server.url("/ws?topic=fast");
    let mut fast = connect_many(&url, 4).await;
    let published = AtomicBool::new(false);
    let slow: Vec<_> = (0..4)
        .map(|_| slow_reader(&server, "slow", &published))
        .collect();
    let slow = futures_util::future::join_all(slow);
    // The fast subscribers read as fast as they can, and must get every
    // message of their topic, in order.
    let fast_readers = futures_util::future::join_all(fast.iter_mut().map(|ws| async move {
        for seq in 0..MESSAGES {
            assert_eq!(next_text(ws).await, payload("fast", seq, size(seq)));
        }
    }));
    let publisher = async {
        server.wait_for_stat("open", 8).await;
        for seq in 0..MESSAGES {
            for topic in ["slow", "fast"] {
                let body = payload(topic, seq, size(seq));
                let (status, reply) = server
                    .post(&format!("/publish?topic={topic}"), "text/plain", body)
                    .await;
                assert_eq!(status, 200, "{reply}");
            }
        }
        published.store(true, Ordering::Release);
    };
    let (slow, _, ()) = tokio::join!(slow, fast_readers, publisher);
    for (frames, code) in slow {
        assert_eq!(code, 1008, "slow consumer close after {frames} frames");
        assert!(frames < MESSAGES, "a slow reader got everything ({frames})");
    }
    // Both workers are alive and their counts add up.
    assert_eq!(server.publish("topic=fast", "still here").await, 4);
    for ws in &mut fast {
        assert_eq!(next_text(ws).await, "still here");
    }
    let stats = server.stats().await;
    assert_eq!(stats["slow_consumer_closes"], 4, "{stats}");
    assert_eq!(stats["open"], 4, "{stats}");
    server.wait_for_stat("connections", 4).await;
}

#[tokio::test]
async fn a_starved_buffer_ring_loses_nothing() {
    let server = Server::start(&["--workers", "2", "--echo", "--read-buffers", "2"]);
    let url = server.url("/echo");
    let mut clients = connect_many(&url, 64).await;
    let rounds = 8;
    let each = |c: usize, r: usize| payload(&format!("c{c}"), r, 6000);
    // Every client sends all its messages at once, then reads the echoes.
    futures_util::future::join_all(clients.iter_mut().enumerate().map(|(c, ws)| async move {
        for r in 0..rounds {
            ws.feed(Message::Text(each(c, r).into())).await.unwrap();
        }
        ws.flush().await.unwrap();
        for r in 0..rounds {
            match tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("echo timed out")
            {
                Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), each(c, r)),
                other => panic!("expected an echo, got {other:?}"),
            }
        }
    }))
    .await;
    let stats = server.stats().await;
    assert!(
        stats["buffer_ring_empty"].as_u64().unwrap() > 0,
        "the ring of 2 buffers never ran dry: {stats}"
    );
    // And the connections are still served afterwards.
    let mut ws = connect_many(&server.url("/ws"), 1).await.remove(0);
    subscribe(&mut ws, "t").await;
}
