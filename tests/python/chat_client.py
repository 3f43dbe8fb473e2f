"""Raw rooms as a browser chat uses them, with the Python `websockets`
library: N clients on ws://HOST/ws?topic=room.1, each sending K text
messages with a plain `send`. With echo on, every client must receive all
N*K messages, and each sender's messages in the order sent.

    chat_client.py WS_ADDR API_ADDR [CLIENTS] [MESSAGES]

After the last expected message, an API publish of "end" to room.1 must be
each client's next message: nothing extra came in between.

Exits non-zero (with a reason) on a missing, extra or reordered message, or
after 20 s.
"""

import asyncio
import sys
import urllib.request

from websockets.asyncio.client import connect


async def main(addr: str, api: str, clients: int, messages: int) -> None:
    url = f"ws://{addr}/ws?topic=room.1"
    sockets = [await connect(url) for _ in range(clients)]
    # A ping round trip per client: each has been admitted and subscribed
    # (subscription at the handshake happens before the 101 is answered).
    for ws in sockets:
        await (await ws.ping())

    async def send(i: int, ws) -> None:
        for k in range(messages):
            await ws.send(f"c{i}-{k}")

    async def receive(ws) -> dict:
        seen: dict = {}
        for _ in range(clients * messages):
            text = await ws.recv()
            sender, number = text.split("-")
            seen.setdefault(sender, []).append(int(number))
        return seen

    receivers = [asyncio.create_task(receive(ws)) for ws in sockets]
    await asyncio.gather(*(send(i, ws) for i, ws in enumerate(sockets)))
    results = await asyncio.gather(*receivers)
    for j, seen in enumerate(results):
        for i in range(clients):
            got = seen.get(f"c{i}", [])
            if got != list(range(messages)):
                sys.exit(f"client {j} got {got} from c{i}")
    # Nothing more arrived: the API's "end" is each client's next message.
    request = urllib.request.Request(
        f"http://{api}/publish?topic=room.1", data=b"end", method="POST",
        headers={"Content-Type": "text/plain"},
    )
    await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
    for j, ws in enumerate(sockets):
        extra = await ws.recv()
        if extra != "end":
            sys.exit(f"client {j} got an extra message {extra!r}")
    for ws in sockets:
        await ws.close()
    print(f"ok: {clients} clients x {messages} messages, all delivered in order")


if __name__ == "__main__":
    addr, api = sys.argv[1], sys.argv[2]
    clients = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    messages = int(sys.argv[4]) if len(sys.argv) > 4 else 50
    asyncio.run(asyncio.wait_for(main(addr, api, clients, messages), 20))
