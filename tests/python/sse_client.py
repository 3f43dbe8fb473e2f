"""An SSE client with Python's standard library against a running ringcast:
reads a two-topic stream, drops it, and resumes with Last-Event-ID, getting
every message published meanwhile exactly once, in order per topic.

Usage: sse_client.py WS_ADDR API_ADDR   (topics h.a and h.b keep history)
"""

import http.client
import json
import sys
import urllib.request

WS, API = sys.argv[1], sys.argv[2]
TOPICS = ("h.a", "h.b")


def publish(topic, n):
    request = urllib.request.Request(
        f"http://{API}/publish?topic={topic}",
        data=json.dumps({"n": n}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200


class Stream:
    """One SSE stream: events as (event, data, id), HTML 9.2.6 parsing."""

    def __init__(self, last_event_id=None):
        self.conn = http.client.HTTPConnection(WS, timeout=10)
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        query = "&".join(f"topic={t}" for t in TOPICS)
        self.conn.request("GET", f"/sse?{query}", headers=headers)
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.status
        assert self.response.getheader("Content-Type") == "text/event-stream"
        self.last_id = last_event_id

    def event(self):
        """The next event with data; the last event ID is kept."""
        kind, data = "message", []
        while True:
            line = self.response.fp.readline()
            assert line, "stream ended"
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
            elif field == "id":
                self.last_id = value

    def messages(self, count):
        """The next `count` deliveries' (topic, n)."""
        got = []
        while len(got) < count:
            kind, data = self.event()
            if kind == "message":
                message = json.loads(data)
                got.append((message["topic"], message["data"]["n"]))
            else:
                assert kind == "subscribed", kind
        return got

    def close(self):
        self.conn.close()


def by_topic(pairs):
    return {t: [n for topic, n in pairs if topic == t] for t in TOPICS}


first = Stream()
for n in range(1, 11):
    publish(TOPICS[n % 2], n)
seen = first.messages(10)
assert by_topic(seen) == {"h.a": [2, 4, 6, 8, 10], "h.b": [1, 3, 5, 7, 9]}, seen
last_id = first.last_id
assert last_id and "h.a:" in last_id and "h.b:" in last_id, last_id
first.close()

for n in range(11, 21):
    publish(TOPICS[n % 2], n)
second = Stream(last_id)
replayed = second.messages(10)
for n in range(21, 25):
    publish(TOPICS[n % 2], n)
live = second.messages(4)
second.close()
got = by_topic(replayed + live)
assert got == {
    "h.a": [12, 14, 16, 18, 20, 22, 24],
    "h.b": [11, 13, 15, 17, 19, 21, 23],
}, got
print("ok: resumed with Last-Event-ID", last_id)
