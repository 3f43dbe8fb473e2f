#!/usr/bin/env python3
"""Presence join storm and query cost against a running ringcast (no broker).

Stdlib only (raw WebSocket by hand), bounded: N joiners, a fixed number of
pages, one v1 query.

  storm.py --ws 127.0.0.1:8080 --api 127.0.0.1:8081 --topic room.storm \
           --clients 10000 --listeners 10000 [--sources 127.0.0.1,127.0.0.2]

- Opens --clients ringcast.v1 connections (at most --concurrency handshakes
  in flight); each subscribes to --topic; the first --listeners of them with
  "join_leave":true, the rest without.
- Polls GET /presence_stats every --poll seconds from the storm's start
  until it reports every connection: `stats_exact_s`, against
  `last_subscribed_s` (the last `subscribed` reply a client got).
- Counts the `join` events the listeners receive until they have been quiet
  for --quiet seconds (`join_events`).
- Then pages GET /presence?limit=1000 through the topic (time and bytes per
  page), and sends one v1 {"op":"presence"} (answer time and size).
Prints one JSON object.
"""
import argparse
import asyncio
import http.client
import json
import os
import struct
import time

JOIN = b'"op":"join"'
SUBSCRIBED = b'"op":"subscribed"'


def frame(text: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(text)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    return head + mask + body


async def handshake(host, port, path, source):
    reader, writer = await asyncio.open_connection(
        host, port, local_addr=(source, 0) if source else None, limit=1 << 20)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ringcast.v1\r\n\r\n"
        .encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
    return reader, writer


async def read_frame(reader):
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return b0 & 0x0F, await reader.readexactly(n)


class Client:
    def __init__(self):
        self.joins = 0
        self.subscribed_at = None
        self.last_byte_at = None
        self.reader = self.writer = None


async def run_client(c, a, i, sem, t0):
    source = a.sources[i % len(a.sources)] if a.sources else None
    async with sem:
        c.reader, c.writer = await handshake(a.ws_host, a.ws_port, a.path, source)
        sub = {"op": "subscribe", "topic": a.topic}
        if i < a.listeners:
            sub["join_leave"] = True
        c.writer.write(frame(json.dumps(sub).encode()))
        await c.writer.drain()
    tail = b""
    while True:
        data = await c.reader.read(1 << 16)
        if not data:
            return
        now = time.monotonic() - t0
        c.last_byte_at = now
        buf = tail + data
        c.joins += buf.count(JOIN) - tail.count(JOIN)
        if c.subscribed_at is None and SUBSCRIBED in buf:
            c.subscribed_at = now
        tail = buf[-24:]


def api_get(a, path):
    conn = http.client.HTTPConnection(a.api_host, a.api_port, timeout=30)
    t = time.monotonic()
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body, time.monotonic() - t


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ws", default="127.0.0.1:8080")
    p.add_argument("--api", default="127.0.0.1:8081")
    p.add_argument("--path", default="/ws")
    p.add_argument("--topic", default="room.storm")
    p.add_argument("--clients", type=int, default=10000)
    p.add_argument("--listeners", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=500)
    p.add_argument("--sources", default="")
    p.add_argument("--poll", type=float, default=0.01)
    p.add_argument("--quiet", type=float, default=2.0)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--no-presence", action="store_true",
                   help="baseline on a topic without presence: only time the subscribes")
    a = p.parse_args()
    a.ws_host, a.ws_port = a.ws.rsplit(":", 1)
    a.api_host, a.api_port = a.api.rsplit(":", 1)
    a.sources = [s for s in a.sources.split(",") if s]

    sem = asyncio.Semaphore(a.concurrency)
    clients = [Client() for _ in range(a.clients)]
    t0 = time.monotonic()
    tasks = [asyncio.create_task(run_client(c, a, i, sem, t0))
             for i, c in enumerate(clients)]
    stats_exact = None
    polls = 0
    loop = asyncio.get_running_loop()
    while not a.no_presence and time.monotonic() - t0 < a.timeout:
        failed = [t for t in tasks if t.done() and t.exception()]
        if failed:
            raise failed[0].exception()
        _, body, _ = await loop.run_in_executor(
            None, api_get, a, f"/presence_stats?topic={a.topic}")
        polls += 1
        if json.loads(body).get("clients") == a.clients:
            stats_exact = time.monotonic() - t0
            break
        await asyncio.sleep(a.poll)
    # Wait for every subscribed reply, then for the listeners to go quiet.
    while time.monotonic() - t0 < a.timeout:
        now = time.monotonic() - t0
        done = all(c.subscribed_at is not None for c in clients)
        last = max((c.last_byte_at or 0) for c in clients)
        if done and now - last >= a.quiet:
            break
        await asyncio.sleep(0.2)
    subscribed = [c.subscribed_at for c in clients if c.subscribed_at is not None]
    joins = sum(c.joins for c in clients)
    if a.no_presence:
        print(json.dumps({
            "clients": a.clients,
            "last_subscribed_s": round(max(subscribed), 3) if subscribed else None,
            "subscribed": len(subscribed),
        }))
        return
    _, stats_body, _ = api_get(a, f"/presence_stats?topic={a.topic}")

    # Query cost: page through GET /presence, 1000 a page.
    pages, cursor, listed, page_bytes, page_s = 0, None, 0, 0, []
    while pages < a.clients // 1000 + 2:
        path = f"/presence?topic={a.topic}&limit=1000" + (f"&cursor={cursor}" if cursor else "")
        status, body, dt = api_get(a, path)
        assert status == 200, (status, body[:200])
        page = json.loads(body)
        pages += 1
        listed += len(page["clients"])
        page_bytes += len(body)
        page_s.append(dt)
        cursor = page.get("next")
        if not cursor:
            break

    # v1 presence op on a subscribed connection of its own.
    r, w = await handshake(a.ws_host, a.ws_port, a.path, None)
    w.write(frame(json.dumps({"op": "subscribe", "topic": a.topic}).encode()))
    while True:
        _, payload = await read_frame(r)
        if SUBSCRIBED in payload:
            break
    t = time.monotonic()
    w.write(frame(json.dumps({"op": "presence", "topic": a.topic}).encode()))
    while True:
        _, payload = await read_frame(r)
        if payload.startswith(b'{"op":"presence"'):
            break
    op_s = time.monotonic() - t
    answer = json.loads(payload)
    w.close()

    print(json.dumps({
        "clients": a.clients,
        "listeners": a.listeners,
        "last_subscribed_s": round(max(subscribed), 3) if subscribed else None,
        "subscribed": len(subscribed),
        "stats_exact_s": round(stats_exact, 3) if stats_exact else None,
        "stats_polls": polls,
        "stats_after": json.loads(stats_body),
        "join_events": joins,
        "http_pages": pages,
        "http_listed": listed,
        "http_bytes": page_bytes,
        "http_page_ms_mean": round(1000 * sum(page_s) / len(page_s), 2),
        "http_page_ms_max": round(1000 * max(page_s), 2),
        "http_total_ms": round(1000 * sum(page_s), 1),
        "v1_presence_ms": round(1000 * op_s, 2),
        "v1_presence_bytes": len(payload),
        "v1_presence_members": len(answer.get("clients", [])),
        "v1_presence_truncated": answer.get("truncated", False),
    }))
    for c in clients:
        if c.writer:
            c.writer.close()
    for t in tasks:
        t.cancel()


if __name__ == "__main__":
    asyncio.run(main())
