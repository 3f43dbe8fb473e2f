"""permessage-deflate from independent clients. Python `websockets` with
compression on (its default) must negotiate the extension and receive
compressed publishes; raw-socket clients check the wire: RSV1 set on the
frame a compressing subscriber gets, clear on the one a plain subscriber
gets, and the same payload for both. On /echo, a client that asks for
server_max_window_bits=8 gets echoes it can inflate with a 256-byte window.
ringcast.v1 subscribers get their JSON deliveries compressed too.
Exits non-zero on any mismatch. Usage: deflate_client.py WS_ADDR API_ADDR"""

import asyncio
import base64
import json
import os
import socket
import struct
import sys
import urllib.request
import zlib

import websockets

WS, API = sys.argv[1], sys.argv[2]
HOST, PORT = WS.rsplit(":", 1)
TRAILER = b"\x00\x00\xff\xff"


def post(path, body, content_type="application/json"):
    request = urllib.request.Request(
        f"http://{API}{path}", data=body, headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


class Raw:
    """A blocking raw-socket WebSocket client."""

    def __init__(self, path, extensions=None, protocol=None):
        self.sock = socket.create_connection((HOST, int(PORT)), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        head = (
            f"GET {path} HTTP/1.1\r\nHost: {WS}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        )
        if extensions:
            head += f"Sec-WebSocket-Extensions: {extensions}\r\n"
        if protocol:
            head += f"Sec-WebSocket-Protocol: {protocol}\r\n"
        self.sock.sendall((head + "\r\n").encode())
        response = b""
        while not response.endswith(b"\r\n\r\n"):
            response += self.sock.recv(1)
        self.response = response.decode()
        assert self.response.startswith("HTTP/1.1 101 "), self.response

    def header(self, name):
        for line in self.response.split("\r\n"):
            if line.lower().startswith(name.lower() + ":"):
                return line.split(":", 1)[1].strip()
        return None

    def exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "connection closed"
            data += chunk
        return data

    def frame(self):
        """The next frame that is not a ping: (first byte, payload)."""
        while True:
            b0, b1 = self.exact(2)
            length = b1 & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self.exact(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self.exact(8))
            payload = self.exact(length)
            if b0 & 0x0F != 0x9:
                return b0, payload

    def send(self, b0, payload):
        mask = os.urandom(4)
        header = bytes([b0])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        else:
            header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)


def inflate(payload, window_bits=15):
    """Inflates with a window of 2**window_bits bytes. The output comes 64
    bytes at a time, so that back-references reach into zlib's window, not
    into the output so far: a distance beyond the window then fails."""
    inflater = zlib.decompressobj(-window_bits)
    out, rest = b"", payload + TRAILER
    while rest:
        out += inflater.decompress(rest, 64)
        rest = inflater.unconsumed_tail
    return out


async def main():
    loop = asyncio.get_running_loop()
    # A 1 KiB JSON message, as a push server sends.
    message = json.dumps(
        [{"id": i, "symbol": "BTC-USD", "price": 60000 + i, "side": "buy"} for i in range(16)]
    ).encode()
    assert len(message) > 1000

    compressed = Raw("/ws?topic=z", "permessage-deflate; client_max_window_bits")
    extensions = compressed.header("Sec-WebSocket-Extensions")
    assert extensions == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    ), extensions
    plain = Raw("/ws?topic=z")
    assert plain.header("Sec-WebSocket-Extensions") is None, plain.response

    async with websockets.connect(f"ws://{WS}/ws?topic=z", max_size=None) as library:
        names = [e.name for e in library.protocol.extensions]
        assert names == ["permessage-deflate"], names
        offered = library.response.headers["Sec-WebSocket-Extensions"]
        assert "server_no_context_takeover" in offered, offered

        reply = await loop.run_in_executor(None, post, "/publish?topic=z", message)
        assert reply == {"subscribers": 3}, reply
        got = await asyncio.wait_for(library.recv(decode=False), timeout=10)
        assert got == message, got

    b0, payload = compressed.frame()
    assert b0 == 0xC1, f"compressing subscriber got first byte {b0:#x}"
    assert len(payload) * 2 < len(message), (len(payload), len(message))
    assert inflate(payload) == message
    b0, payload = plain.frame()
    assert b0 == 0x81, f"plain subscriber got first byte {b0:#x}"
    assert payload == message

    # Under --compression-min-size (256 bytes): RSV1 clear even when negotiated.
    post("/publish?topic=z", b'{"short":true}')
    assert compressed.frame() == (0x81, b'{"short":true}')
    assert plain.frame() == (0x81, b'{"short":true}')

    # ringcast.v1 deliveries are compressed once per topic too: a raw v1
    # client gets RSV1 and the same JSON the library's v1 client reads.
    v1 = Raw("/ws?topic=v", "permessage-deflate", protocol="ringcast.v1")
    assert v1.header("Sec-WebSocket-Protocol") == "ringcast.v1", v1.response
    assert v1.frame() == (0x81, b'{"op":"subscribed","topic":"v"}')
    async with websockets.connect(
        f"ws://{WS}/ws?topic=v", subprotocols=["ringcast.v1"], max_size=None
    ) as library:
        assert json.loads(await asyncio.wait_for(library.recv(), timeout=10))["op"] == "subscribed"
        await loop.run_in_executor(None, post, "/publish?topic=v", message)
        got = json.loads(await asyncio.wait_for(library.recv(), timeout=10))
    assert got["op"] == "message" and got["topic"] == "v", got
    assert got["data"] == json.loads(message), got
    b0, payload = v1.frame()
    assert b0 == 0xC1, f"compressing v1 subscriber got first byte {b0:#x}"
    assert json.loads(inflate(payload)) == got

    # A compressed subscribe from the client is inflated and acted on.
    request = json.dumps({"op": "subscribe", "topic": "other"}).encode()
    packed = zlib.compressobj(wbits=-15)
    body = packed.compress(request) + packed.flush(zlib.Z_SYNC_FLUSH)
    compressed.send(0xC1, body[: -len(TRAILER)])
    assert compressed.frame() == (0x81, b'{"op":"subscribed","topic":"other"}')

    # /echo with server_max_window_bits=8: a 256-byte window inflates it.
    narrow = Raw("/echo", "permessage-deflate; server_max_window_bits=8")
    assert narrow.header("Sec-WebSocket-Extensions").endswith("; server_max_window_bits=8")
    text = b"abcdefghijklmnopqrstuvwxyz;" * 5
    narrow.send(0x81, text[:125])  # under the minimum size: back plain
    assert narrow.frame() == (0x81, text[:125])
    # Each block repeats at distance 120 (in reach of a narrow window) and
    # again 3 blocks later (about 720 bytes back: in reach of a full window
    # only, so a full-window compressor would break a 256-byte inflater).
    blocks = [os.urandom(120) for _ in range(20)]
    data = b"".join(b + b + blocks[max(i - 3, 0)] for i, b in enumerate(blocks))
    packed = zlib.compressobj(wbits=-15)
    body = packed.compress(data) + packed.flush(zlib.Z_SYNC_FLUSH)
    narrow.send(0xC2, body[: -len(TRAILER)])
    b0, payload = narrow.frame()
    assert b0 == 0xC2, f"{b0:#x}"
    assert inflate(payload, 8) == data
    print("python deflate clients: ok")


asyncio.run(main())
