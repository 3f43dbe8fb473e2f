"""A long-poll client with Python's standard library against a running
ringcast: one keep-alive connection, at least 100 polls while a publisher
sends numbered messages, and every message exactly once, in order.

Usage: poll_client.py WS_ADDR API_ADDR COUNT   (topic h.p keeps history)
"""

import http.client
import json
import sys
import threading
import time
import urllib.parse
import urllib.request

WS, API, COUNT = sys.argv[1], sys.argv[2], int(sys.argv[3])


def publisher():
    for n in range(1, COUNT + 1):
        request = urllib.request.Request(
            f"http://{API}/publish?topic=h.p",
            data=json.dumps({"n": n}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 200
        time.sleep(0.005)


conn = http.client.HTTPConnection(WS, timeout=30)
conn.connect()
sock = conn.sock


def poll(since):
    query = urllib.parse.urlencode({"topic": "h.p", **({"since": since} if since else {})})
    conn.request("GET", f"/poll?{query}")
    response = conn.getresponse()
    assert response.status == 200, response.status
    assert response.getheader("Connection", "keep-alive") != "close"
    body = json.loads(response.read())
    assert "reset" not in body, body
    return body


since = poll(None)["next"]  # where the topic stands now
thread = threading.Thread(target=publisher)
thread.start()
got, polls = [], 0
deadline = time.monotonic() + 60
while len(got) < COUNT:
    assert time.monotonic() < deadline, f"{len(got)} of {COUNT} after {polls} polls"
    body = poll(since)
    polls += 1
    got.extend(m["data"]["n"] for m in body["messages"])
    since = body["next"]
thread.join()
assert conn.sock is sock, "one keep-alive connection for every poll"
assert got == list(range(1, COUNT + 1)), got
assert polls >= 100, polls
print(f"ok: {COUNT} messages in {polls} polls on one connection")
