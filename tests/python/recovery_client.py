"""Independent client check of ringcast.v1 recovery: Python `websockets`
subscribes with the subprotocol, receives 1-5, disconnects; 6-15 are
published; it reconnects with `since` 5, recovers 6-15, then gets 16 live.
Also checks how JSON, text and binary publishes arrive. Exits non-zero on
any mismatch. Usage: recovery_client.py WS_ADDR API_ADDR"""

import asyncio
import base64
import json
import sys
import urllib.request

import websockets

WS, API = sys.argv[1], sys.argv[2]
TOPIC = "py.chat"


def publish(body, content_type="text/plain"):
    request = urllib.request.Request(
        f"http://{API}/publish?topic={TOPIC}", data=body, headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["offsets"][TOPIC]


async def recv(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout=10))


async def main():
    loop = asyncio.get_running_loop()

    async def post(body, content_type="text/plain"):
        return await loop.run_in_executor(None, publish, body, content_type)

    async with websockets.connect(f"ws://{WS}/ws", subprotocols=["ringcast.v1"]) as ws:
        assert ws.subprotocol == "ringcast.v1", ws.subprotocol
        await ws.send(json.dumps({"op": "subscribe", "topic": TOPIC}))
        reply = await recv(ws)
        assert reply["op"] == "subscribed" and reply["offset"] == 0, reply
        epoch = reply["epoch"]
        for i in range(1, 6):
            assert await post(f"m{i}".encode()) == i
        for i in range(1, 6):
            got = await recv(ws)
            assert got == {"op": "message", "topic": TOPIC, "offset": i, "epoch": epoch, "data": f"m{i}"}, got
        position = got["offset"]

    for i in range(6, 16):
        await post(f"m{i}".encode())

    async with websockets.connect(f"ws://{WS}/ws", subprotocols=["ringcast.v1"]) as ws:
        since = {"offset": position, "epoch": epoch}
        await ws.send(json.dumps({"op": "subscribe", "topic": TOPIC, "since": since}))
        reply = await recv(ws)
        assert reply == {"op": "subscribed", "topic": TOPIC, "offset": 15, "epoch": epoch, "recovered": True}, reply
        for i in range(6, 16):
            got = await recv(ws)
            assert (got["offset"], got["data"]) == (i, f"m{i}"), got
        assert await post(b"m16") == 16
        assert (await recv(ws))["offset"] == 16

        # Each content type arrives as documented.
        await post(b'{"k": [1, "x"]}', "application/json")
        await post("é".encode(), "text/plain; charset=utf-8")
        await post(b"\x00\xff", "application/octet-stream")
        assert (await recv(ws))["data"] == {"k": [1, "x"]}
        assert (await recv(ws))["data"] == "é"
        got = await recv(ws)
        assert "data" not in got and base64.b64decode(got["b64data"]) == b"\x00\xff", got
    print("python websockets recovery: ok")


asyncio.run(main())
