"""Independent client check: Python `websockets` subscribes, publishes over
the HTTP API with urllib, and checks what arrives. Exits non-zero on any
mismatch. Usage: pubsub_client.py WS_ADDR API_ADDR"""

import asyncio
import json
import sys
import urllib.error
import urllib.request

import websockets

WS, API = sys.argv[1], sys.argv[2]


def post(path, body, content_type="text/plain"):
    request = urllib.request.Request(
        f"http://{API}{path}", data=body, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, None


async def recv(ws):
    return await asyncio.wait_for(ws.recv(), timeout=10)


async def main():
    loop = asyncio.get_running_loop()
    async with websockets.connect(f"ws://{WS}/ws?topic=py") as by_url, websockets.connect(
        f"ws://{WS}/ws", subprotocols=["chat"]
    ) as by_msg:
        assert by_msg.subprotocol == "chat", by_msg.subprotocol
        await by_msg.send(json.dumps({"op": "subscribe", "topic": "py"}))
        assert json.loads(await recv(by_msg)) == {"op": "subscribed", "topic": "py"}

        for i in range(50):
            status, body = await loop.run_in_executor(None, post, "/publish?topic=py", f"m{i}".encode())
            assert (status, body) == (200, {"subscribers": 2}), (status, body)
        for ws in (by_url, by_msg):
            got = [await recv(ws) for _ in range(50)]
            assert got == [f"m{i}" for i in range(50)], got

        status, _ = await loop.run_in_executor(None, post, "/publish?topic=py", b"\x00\x01", "application/octet-stream")
        assert status == 200
        assert await recv(by_url) == b"\x00\x01"

        await by_url.close()
        assert by_url.close_code == 1000, by_url.close_code

    # The server refuses a bad topic at the handshake with 400.
    try:
        async with websockets.connect(f"ws://{WS}/ws?topic=bad%20topic"):
            raise AssertionError("bad topic was accepted")
    except websockets.exceptions.InvalidStatus as error:
        assert error.response.status_code == 400, error.response.status_code
    print("python websockets client: ok")


asyncio.run(main())
