#!/usr/bin/env python3
"""Writes the fuzz seed corpus, fuzz/seeds/<target>/, from the inputs of the
engine's unit tests (engine/src/protocol/{decoder,handshake,proxy}.rs and
engine/src/control.rs). Deterministic: rerun it after changing a seed and
commit the result. Usage: scripts/fuzz-seeds.py"""

import hashlib
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent / "fuzz" / "seeds"
KEY = bytes([0x11, 0x22, 0x33, 0x44])


def masked(b0, payload, key=KEY):
    """A client frame (RFC 6455 §5.2, §5.3), as frame::encode_masked."""
    n = len(payload)
    if n < 126:
        head = bytes([b0, 0x80 | n])
    elif n < 65536:
        head = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def decoder_input(stream, limit=1024, lens=(), stop_after=0):
    """The decoder target's layout: limit byte, flags, chunk lengths, stream."""
    limit_byte = 255 if limit is None else limit // 16
    assert limit_byte < 255 and len(lens) < 16 or limit is None
    flags = len(lens) | (stop_after << 5)
    return bytes([limit_byte, flags]) + bytes(lens) + stream


def structured(specs, limit=1024, lens=()):
    """Structured mode: frame specs (b0, payload), masked by the target."""
    body = b""
    for b0, payload in specs:
        if len(payload) < 255:
            body += bytes([b0, len(payload)]) + payload
        else:
            body += bytes([b0, 255]) + struct.pack(">H", len(payload)) + payload
    limit_byte = 255 if limit is None else limit // 16
    return bytes([limit_byte, 0x10 | len(lens)]) + bytes(lens) + body


def decoder_seeds():
    seeds = []
    # single_frames_in_one_chunk
    seeds.append(decoder_input(masked(0x81, b"hello") + masked(0x82, b"\1\2\3") + masked(0x89, b"p")))
    # fragmented_message_with_interleaved_ping_at_every_split
    frag = (masked(0x01, b"frag") + masked(0x89, b"ping") + masked(0x00, "mént".encode())
            + masked(0x8A, b"") + masked(0x80, b"!"))
    seeds.append(decoder_input(frag))
    seeds.append(decoder_input(frag, lens=(3,)))
    seeds.append(decoder_input(frag, lens=(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)))
    seeds.append(structured([(0x01, b"frag"), (0x89, b"ping"), (0x00, "mént".encode()),
                             (0x8A, b""), (0x80, b"!")], lens=(7, 5)))
    # idle_decoder_holds_nothing
    seeds.append(decoder_input(masked(0x82, bytes([9]) * 300), lens=(100,)))
    # close_stops_decoding
    seeds.append(decoder_input(masked(0x88, b"\x03\xe8") + masked(0x81, b"after")))
    seeds.append(decoder_input(masked(0x81, b"a") + masked(0x81, b"b") + masked(0x81, b"c"), stop_after=2))
    # protocol_violations
    for stream in [
        b"\x81\x01a",  # unmasked
        masked(0xC1, b"a"),  # RSV1
        masked(0x83, b"a"),  # opcode 3
        masked(0x09, b"a"),  # fragmented ping
        masked(0x89, bytes(126)),  # control over 125 bytes
        masked(0x80, b"a"),  # stray continuation
        masked(0x01, b"a") + masked(0x81, b"b"),  # two starts
        masked(0x88, b"\x03"),  # 1-byte close
        masked(0x88, b"\x03\xed"),  # close code 1005
        masked(0x88, b"\x03\xe8\xff"),  # close reason not UTF-8
        masked(0x81, b"\xff"),  # text not UTF-8
        masked(0x82, bytes(1025)),  # over the limit
        masked(0x02, bytes(1000)) + masked(0x80, bytes(100)),  # grows over the limit
        bytes([0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0]),  # 64-bit length overflow
    ]:
        seeds.append(decoder_input(stream))
    # invalid_utf8_fails_before_the_frame_ends
    seeds.append(decoder_input(masked(0x81, b"ok\xf4\x90\x80\x80 and much more text follows")[:12]))
    seeds.append(structured([(0x81, b"ok\xf4\x90\x80\x80 and much more text follows")], lens=(8, 1)))
    # large_message_split_in_many_chunks (smaller, no limit, 16- and 64-bit lengths)
    payload = bytes(i % 256 for i in range(5000))
    seeds.append(decoder_input(masked(0x82, payload), limit=None, lens=(200, 255, 7, 64)))
    seeds.append(structured([(0x01, "ü€𝄞".encode() * 30), (0x80, "ü€𝄞".encode() * 40)], lens=(3, 200)))
    seeds.append(decoder_input(masked(0x82, bytes(70000))[:300], limit=None, lens=(1, 9, 4)))
    return seeds


GOOD = (b"GET /ws?topic=a HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\n"
        b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\n\r\n")


def handshake_seeds():
    seeds = [GOOD, GOOD + b"\x81\x80", GOOD + b"superchat,x", GOOD[:-1], b"GARBAGE\r\n\r\n"]
    for old, new in [
        (b"GET", b"POST"),
        (b"HTTP/1.1", b"HTTP/1.0"),
        (b"Host: x\r\n", b""),
        (b"WebSocket", b"h2c"),
        (b"keep-alive, Upgrade", b"close"),
        (b"Version: 13", b"Version: 8"),
        (b"dGhlIHNhbXBsZSBub25jZQ==", b"c2hvcnQ="),
        (b"Sec-WebSocket-Key", b"X-Key"),
    ]:
        seeds.append(GOOD.replace(old, new))
    seeds.append(GOOD.replace(b"Host: x\r\n", b"Host: x\r\nOrigin: https://a.example\r\n"
                              b"X-Forwarded-For: 192.0.2.1, 10.0.0.1\r\nX-Real-IP: 192.0.2.1\r\n"))
    seeds.append(b"GET /ws HTTP/1.1\r\nX-Big: " + b"a" * 8192 + b"\r\n")
    return seeds


def v2(cmd, family, body):
    return b"\r\n\r\n\0\r\nQUIT\n" + bytes([cmd, family]) + struct.pack(">H", len(body)) + body


def proxy_seeds():
    body6 = bytearray(36)
    body6[15] = 1
    body6[32:34] = struct.pack(">H", 9)
    seeds = [
        b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET /",
        b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n",
        b"PROXY UNKNOWN\r\n",
        v2(0x21, 0x11, bytes([198, 51, 100, 9, 10, 0, 0, 1, 0x1F, 0x90, 0x01, 0xBB, 0x04, 0x00, 0x02]) + b"hi"),
        v2(0x21, 0x21, bytes(body6)),
        v2(0x20, 0x00, b""),
        v2(0x21, 0x11, bytes([1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2])) + b"GET / HTTP/1.1\r\n",
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
        b"PROXY \xff\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x11\x11\x00\x00",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04\x01\x02\x03\x04",
        b"PROXY TCP4 " + b"1" * 107,
        v2(0x21, 0x12, bytes(12)),
    ]
    huge = bytearray(v2(0x21, 0x11, b""))
    huge[14:16] = struct.pack(">H", 2000)
    seeds.append(bytes(huge))
    return seeds


def control_seeds():
    return [s.encode() for s in [
        '{"op":"subscribe","topic":"a"}',
        '{"topic":"a","op":"unsubscribe"}',
        "", "{", '{"op":"dance"}', '{"op":"subscribe"}', "[1]",
        '{"op":"subscribe","topic":"news.eu-1","extra":true}',
        '{"op":"subscribe","topic":"\\u00e9\\ud83d\\ude00"}',
    ]]


def main():
    for target, seeds in [
        ("decoder", decoder_seeds()),
        ("handshake", handshake_seeds()),
        ("proxy", proxy_seeds()),
        ("control", control_seeds()),
    ]:
        folder = ROOT / target
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for seed in seeds:
            # Named like libFuzzer's own corpus files: the content's SHA-1.
            (folder / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        print(f"{target}: {len(seeds)} seeds in {folder}")


if __name__ == "__main__":
    main()
