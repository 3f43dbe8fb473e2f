#!/usr/bin/env bash
# Smoke run of every ringcast-bench subcommand at small scale against the
# debug builds: soak 2000 connections for 5 s, fanout to 500 subscribers
# for 20 messages (raw, ringcast.v1, then 1 KiB JSON with
# permessage-deflate), a reconnect storm of 500 clients recovering 100
# messages each, echo, a chat of 50 clients in a raw room, a soak of 500
# connections with a JWT each against a server with auth on, and compare
# with both peers; soak and fanout over SSE too. Checks that each
# results.json has its fields and that nothing failed, dropped or was lost.
# Bounded: every command runs under `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet -p ringcast -p ringcast-bench -p peer-tungstenite -p peer-fastwebsockets
bin=target/debug
out=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$out"
}
trap cleanup EXIT

# ringcast on free ports with the flags given; its first stdout line names
# them (sets server_pid, ws and api).
start_server() {
  rm -f "$out/addresses"
  mkfifo "$out/addresses"
  RUST_LOG=warn "$bin/ringcast" serve --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 "$@" \
    >"$out/addresses" &
  server_pid=$!
  read -r _ ws api <"$out/addresses"
  ws=${ws#ws=}
  api=${api#api=}
}
start_server --echo --history 'storm=200/10m' --room 'room.*'

bench() { timeout 180 "$bin/ringcast-bench" "$@" --quiet; }

bench soak --url "ws://$ws/ws?topic=t" --connections 2000 --hold 5s --ping-interval 1s \
  --server-pid "$server_pid" --out "$out/soak"
bench fanout --url "ws://$ws/ws?topic=t" --publish-url "http://$api/publish?topic=t" \
  --subscribers 500 --messages 20 --interval 20ms --out "$out/fanout"
bench fanout --url "ws://$ws/ws?topic=t" --publish-url "http://$api/publish?topic=t" \
  --subprotocol ringcast.v1 --subscribers 500 --messages 20 --interval 20ms --out "$out/fanout-v1"
bench soak --url "ws://$ws/sse?topic=t" --transport sse --connections 1000 --hold 2s \
  --server-pid "$server_pid" --out "$out/soak-sse"
bench fanout --url "ws://$ws/sse?topic=t" --publish-url "http://$api/publish?topic=t" \
  --transport sse --subscribers 500 --messages 20 --interval 20ms --out "$out/fanout-sse"
bench recover --url "ws://$ws/ws" --api "http://$api" --topic storm --connections 500 \
  --replay 100 --out "$out/recover"
bench fanout --url "ws://$ws/ws?topic=t" --publish-url "http://$api/publish?topic=t" \
  --subscribers 500 --messages 20 --interval 20ms --size 1024 --payload json --compression \
  --server-pid "$server_pid" --out "$out/fanout-deflate"
bench echo --url "ws://$ws/echo" --connections 50 --duration 3s --out "$out/echo"
bench chat --url "ws://$ws/ws?topic=room.1" --connections 50 --send-rate 2 --duration 3s \
  --out "$out/chat"
kill "$server_pid"
head -c 32 /dev/urandom | base64 >"$out/jwt-secret"
start_server --jwt-hmac-secret-file "$out/jwt-secret"
bench soak --url "ws://$ws/ws?topic=t" --connections 500 --hold 1s \
  --jwt-hmac-secret-file "$out/jwt-secret" --out "$out/soak-auth"
kill "$server_pid"
server_pid=
bench compare --connections 1000 --hold 1s --subscribers 200 --messages 5 --interval 20ms \
  --echo-connections 20 --echo-duration 1s --out "$out/compare"

python3 - "$out" <<'EOF'
import json, sys
out = sys.argv[1]

def load(path, *fields):
    with open(f"{out}/{path}") as f:
        r = json.load(f)
    missing = [k for k in fields if k not in r]
    assert not missing, f"{path}: missing {missing}"
    return r

soak = load("soak/results.json", "ramp", "handshake_latency", "memory", "dropped", "series")
assert soak["ramp"]["opened"] == 2000 and soak["ramp"]["failed"] == 0, soak["ramp"]
assert soak["dropped"] == 0 and soak["held_at_end"] == 2000
assert soak["pongs_received"] > 0 and soak["memory"]["server_rss_peak"] > 0
auth = load("soak-auth/results.json", "ramp")
assert auth["ramp"]["opened"] == 500 and auth["ramp"]["failed"] == 0, auth["failed_by_reason"]
fan = load("fanout/results.json", "latency", "per_message", "lost", "out_of_order", "expected")
assert fan["subscribers"] == 500 and fan["published"] == 20, fan["publish_errors"]
assert fan["expected"] == 10000 and fan["delivered"] == 10000, (fan["delivered"], fan["lost"])
assert fan["lost"] == 0 and fan["out_of_order"] == 0 and len(fan["per_message"]) == 20
chat = load("chat/results.json", "sent", "deliveries", "delivered_fraction", "latency")
assert chat["sent"] > 0 and chat["delivered_fraction"] == 1.0, chat
v1 = load("fanout-v1/results.json", "latency", "subprotocol")
assert v1["subprotocol"] == "ringcast.v1" and v1["delivered"] == 10000, v1["delivered"]
assert v1["lost"] == 0 and v1["out_of_order"] == 0 and v1["bad_messages"] == 0
ssesoak = load("soak-sse/results.json", "transport", "ramp")
assert ssesoak["transport"] == "sse" and ssesoak["held_at_end"] == 1000, ssesoak["ramp"]
sse = load("fanout-sse/results.json", "transport", "latency")
assert sse["transport"] == "sse" and sse["delivered"] == 10000, sse["delivered"]
assert sse["lost"] == 0 and sse["out_of_order"] == 0 and sse["bad_messages"] == 0
rec = load("recover/results.json", "reconnect_to_recovered", "expected", "delivered")
assert rec["ramp"]["opened"] == 500 and rec["delivered"] == rec["expected"] == 50000, rec["delivered"]
assert rec["bad_messages"] == 0 and rec["reconnect_to_recovered"]["count"] == 500
deflate = load("fanout-deflate/results.json", "wire_bytes_per_delivery", "server_cpu_us_per_delivery")
assert deflate["compression"] and deflate["delivered"] == 10000 and deflate["lost"] == 0
# 1 KiB of JSON events arrives compressed: well under half its size.
assert deflate["wire_bytes_per_delivery"] < 512, deflate["wire_bytes_per_delivery"]
assert fan["wire_bytes_per_delivery"] > 64, fan["wire_bytes_per_delivery"]
echo = load("echo/results.json", "messages_per_s", "round_trip")
assert echo["messages"] > 0 and echo["bad_messages"] == 0 and echo["dropped"] == 0
cmp = load("compare/compare.json", "entries", "ratios")
assert [e["server"] for e in cmp["entries"]] == ["ringcast", "tokio-tungstenite", "fastwebsockets"]
for e in cmp["entries"]:
    assert e["fanout"]["lost"] == 0 and e["soak"]["ramp"]["failed"] == 0, e["server"]
print("bench smoke: soak (WebSocket, SSE), fanout (raw, ringcast.v1, deflate, SSE), recover, echo, chat, soak with auth and compare passed")
EOF
