"""Presence on one node (issue 22), with the Python `websockets` library,
PyJWT tokens and the standard library's HTTP client, against a running
ringcast:

    presence_client.py WS_ADDR API_ADDR SECRET_FILE

The server runs with `--jwt-hmac-secret-file SECRET_FILE --presence 'room.*'`
(HS256; `news` is a topic without presence, and no topic here keeps
history). Each user's token is minted here from SECRET_FILE (stripped, as
tests/python/mint_jwt.py does).

1. Three clients of users 42 (with `info`), 42 and 7 on room.1:
   `presence` lists 3 clients, `presence_stats` gives 3 clients and 2
   users; so does the HTTP API, whose pages (limit 2) give the same
   members once each; 400 for a topic without presence or none.
2. On another topic (room.2), an observer subscribed with `join_leave`
   (itself a member) sees the same three clients join with `first`
   true, false, true, never its own join, then, as they close, leave with
   `last` false, true, true, each leave naming its join's client.
3. A non-subscriber's `presence` and `presence_stats` get `forbidden`; a
   subscribed topic without presence answers `presence is off for this
   topic`; the connection stays usable.
4. SSE with `join_leave=1` is a member and gets `event: join` and
   `event: leave` with the same objects.
5. A waiting long-poll is not a member.

Exits non-zero (with a reason) on any difference, or after 40 s.
"""

import asyncio
import http.client
import json
import pathlib
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import jwt
from websockets.asyncio.client import connect

WS, API, SECRET_FILE = sys.argv[1], sys.argv[2], sys.argv[3]
SECRET = pathlib.Path(SECRET_FILE).read_bytes().strip()


def token(sub, info=None):
    claims = {"sub": sub, "exp": int(time.time()) + 3600}
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, SECRET, algorithm="HS256")


def check(ok, what):
    if not ok:
        sys.exit(f"FAIL: {what}")


async def client(sub, info=None):
    query = urllib.parse.urlencode({"token": token(sub, info)})
    ws = await connect(f"ws://{WS}/ws?{query}", subprotocols=["ringcast.v1"])
    check(ws.subprotocol == "ringcast.v1", f"ringcast.v1 not accepted: {ws.subprotocol}")
    return ws


async def recv(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def ask(ws, body):
    """Sends `body` and returns the next message."""
    await ws.send(json.dumps(body))
    return await recv(ws)


async def subscribe(ws, topic, join_leave=False):
    body = {"op": "subscribe", "topic": topic}
    if join_leave:
        body["join_leave"] = True
    reply = await ask(ws, body)
    check(reply.get("op") == "subscribed" and reply.get("topic") == topic, f"subscribe {topic}: {reply}")


async def presence(ws, topic):
    reply = await ask(ws, {"op": "presence", "topic": topic})
    check(reply.get("op") == "presence" and reply.get("topic") == topic, f"presence {topic}: {reply}")
    check(reply.get("truncated", False) is False, f"truncated: {reply}")
    for m in reply["clients"]:
        check(set(m) == {"client", "user", "info"} and isinstance(m["client"], str), f"a member: {m}")
    return reply["clients"]


async def stats(ws, topic):
    """presence_stats as (clients, users): also shows that nothing else was pending."""
    reply = await ask(ws, {"op": "presence_stats", "topic": topic})
    check(reply.get("op") == "presence_stats" and reply.get("topic") == topic, f"presence_stats {topic}: {reply}")
    return reply["clients"], reply["users"]


def api_get(path):
    """(status, JSON body) of a GET on the API listener."""
    try:
        with urllib.request.urlopen(f"http://{API}{path}", timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def publish(topic, data):
    request = urllib.request.Request(
        f"http://{API}/publish?topic={topic}", data=json.dumps(data).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        check(reply.status == 200, f"publish: {reply.status}")


async def three_on_room_1():
    three = [await client("42", {"name": "Ann"}), await client("42"), await client("7")]
    for ws in three:
        await subscribe(ws, "room.1")
    members = await presence(three[2], "room.1")
    check(len(members) == 3, f"3 members: {members}")
    check(sorted(m["user"] for m in members) == ["42", "42", "7"], f"users: {members}")
    check(len({m["client"] for m in members}) == 3, f"distinct clients: {members}")
    check([m["info"] for m in members if m["info"] is not None] == [{"name": "Ann"}], f"info: {members}")
    check(await stats(three[0], "room.1") == (3, 2), "stats: 3 clients, 2 users")

    status, body = api_get("/presence?topic=room.1")
    check(status == 200 and body["next"] is None, f"GET /presence: {status} {body}")
    check(sorted(m["client"] for m in body["clients"]) == sorted(m["client"] for m in members), f"GET /presence: {body}")
    everyone = body["clients"]
    status, first = api_get("/presence?topic=room.1&limit=2")
    check(status == 200 and len(first["clients"]) == 2 and first["next"], f"page 1: {status} {first}")
    cursor = urllib.parse.quote(first["next"])
    status, second = api_get(f"/presence?topic=room.1&limit=2&cursor={cursor}")
    check(status == 200 and len(second["clients"]) == 1 and second["next"] is None, f"page 2: {status} {second}")
    check(first["clients"] + second["clients"] == everyone, f"pages in the order of the whole: {first} {second} {everyone}")
    check(api_get("/presence_stats?topic=room.1") == (200, {"clients": 3, "users": 2}), "GET /presence_stats")
    for path in ["/presence?topic=news", "/presence", "/presence_stats?topic=news", "/presence_stats"]:
        status, body = api_get(path)
        check(status == 400 and "error" in body, f"GET {path}: {status} {body}")
    print("ok: room.1 lists 3 clients of 2 users (ops and HTTP API)")
    return three


async def observer_on_room_2(three):
    observer = await client("observer")
    await subscribe(observer, "room.2", join_leave=True)
    joins = []
    for ws in three:
        await subscribe(ws, "room.2")
        joins.append(await recv(observer))
    for j in joins:
        check(set(j) == {"op", "topic", "client", "user", "info", "first"}, f"a join: {j}")
        check(j["op"] == "join" and j["topic"] == "room.2", f"a join: {j}")
    check([(j["user"], j["first"]) for j in joins] == [("42", True), ("42", False), ("7", True)], f"joins: {joins}")
    check([j["info"] for j in joins] == [{"name": "Ann"}, None, None], f"join info: {joins}")
    members = await presence(observer, "room.2")
    check(len(members) == 4, f"the three and the observer: {members}")
    own = [m["client"] for m in members if m["user"] == "observer"]
    check(len(own) == 1 and own[0] not in [j["client"] for j in joins], f"no join of its own: {members} {joins}")
    check(await stats(observer, "room.2") == (4, 3), "stats of room.2 with the observer")

    leaves = []
    for ws in three:
        await ws.close()
        leaves.append(await recv(observer))
    for leave in leaves:
        check(set(leave) == {"op", "topic", "client", "user", "last"}, f"a leave: {leave}")
        check(leave["op"] == "leave" and leave["topic"] == "room.2", f"a leave: {leave}")
    check([(x["user"], x["last"]) for x in leaves] == [("42", False), ("42", True), ("7", True)], f"leaves: {leaves}")
    check([x["client"] for x in leaves] == [j["client"] for j in joins], f"each leave names its join: {leaves} {joins}")
    # Nothing else came: the next message is the answer.
    check(await stats(observer, "room.2") == (1, 1), "only the observer is left")
    await observer.close()
    print("ok: joins first true/false/true, leaves last false/true/true")


async def refusals():
    ws = await client("9")
    await subscribe(ws, "room.3")
    await subscribe(ws, "news")
    for op in ["presence", "presence_stats"]:
        reply = await ask(ws, {"op": op, "topic": "room.1"})
        check(reply == {"op": "error", "topic": "room.1", "reason": "forbidden"}, f"{op} of a non-subscriber: {reply}")
        reply = await ask(ws, {"op": op, "topic": "news"})
        check(reply == {"op": "error", "topic": "news", "reason": "presence is off for this topic"}, f"{op} on news: {reply}")
    check(await stats(ws, "room.3") == (1, 1), "still usable")
    await ws.close()
    print("ok: forbidden for a non-subscriber, an error for a topic without presence")


class Stream:
    """An SSE stream: its named events as (event, data), HTML 9.2.6 parsing."""

    def __init__(self, path):
        self.conn = http.client.HTTPConnection(WS, timeout=10)
        self.conn.request("GET", path, headers={"Accept": "text/event-stream"})
        self.response = self.conn.getresponse()
        check(self.response.status == 200, f"GET {path}: {self.response.status}")

    def event(self):
        kind, data = "message", []
        while True:
            line = self.response.fp.readline()
            check(line, "the SSE stream ended")
            line = line.decode().rstrip("\n")
            if line == "":
                if data:
                    return kind, "\n".join(data)
                kind = "message"
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "event":
                kind = value

    def close(self):
        self.conn.close()


async def sse_events():
    query = urllib.parse.urlencode({"topic": "room.4", "join_leave": "1", "token": token("sse")})
    stream = await asyncio.to_thread(Stream, f"/sse?{query}")
    kind, data = await asyncio.to_thread(stream.event)
    check(kind == "subscribed" and json.loads(data)["topic"] == "room.4", f"subscribed: {kind} {data}")
    ws = await client("42", {"name": "Ann"})
    await subscribe(ws, "room.4")
    members = await presence(ws, "room.4")
    check(sorted(m["user"] for m in members) == ["42", "sse"], f"the SSE stream is a member: {members}")
    kind, data = await asyncio.to_thread(stream.event)
    join = json.loads(data)
    check(kind == "join", f"event: join, not {kind}: {data}")
    check(join["op"] == "join" and join["topic"] == "room.4" and join["user"] == "42", f"join: {join}")
    check(join["info"] == {"name": "Ann"} and join["first"] is True, f"join: {join}")
    await ws.close()
    kind, data = await asyncio.to_thread(stream.event)
    leave = json.loads(data)
    check(kind == "leave", f"event: leave, not {kind}: {data}")
    check(leave == {"op": "leave", "topic": "room.4", "client": join["client"], "user": "42", "last": True}, f"leave: {leave}")
    stream.close()
    print("ok: SSE join_leave=1 gets event: join and event: leave")


async def poll_is_not_member():
    query = urllib.parse.urlencode({"topic": "room.5", "token": token("poller")})
    answer = {}

    def poll():
        conn = http.client.HTTPConnection(WS, timeout=30)
        conn.request("GET", f"/poll?{query}")
        reply = conn.getresponse()
        answer["status"], answer["body"] = reply.status, json.loads(reply.read())
        conn.close()

    poller = threading.Thread(target=poll)
    poller.start()
    ws = await client("5")
    await subscribe(ws, "room.5")
    await asyncio.sleep(0.5)  # the poll waits meanwhile (room.5 keeps no history)
    members = await presence(ws, "room.5")
    check([m["user"] for m in members] == ["5"], f"the poll is not a member: {members}")
    await asyncio.to_thread(publish, "room.5", "end")
    await asyncio.to_thread(poller.join, 15)
    check(not poller.is_alive(), "the poll ended")
    messages = answer["body"]["messages"]
    check(answer["status"] == 200 and [m["data"] for m in messages] == ["end"], f"the poll was waiting: {answer}")
    await ws.close()
    print("ok: a waiting long-poll is not a member")


async def main():
    three = await three_on_room_1()
    await observer_on_room_2(three)
    await refusals()
    await sse_events()
    await poll_is_not_member()


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), 40))
