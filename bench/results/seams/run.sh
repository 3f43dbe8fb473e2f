#!/usr/bin/env bash
# Old against new, alternated in one sitting (issue 21's no-regression
# table): fan-out to 15k at --workers 2 (p50, p99, server CPU per
# delivery), idle RSS per connection at 15k (anonymous, then with auth on
# and a JWT of its own user per connection), echo messages/s, and chat
# 200x5 and 300x10 in a raw room. Each round runs every figure on OLD then on NEW, so both see the
# same host load; ROUNDS rounds (default 2). Every connection from its own
# client address (the bench's default).
#
#   bench/results/seams/run.sh OLD_BIN_DIR NEW_BIN_DIR [ROUNDS [OUT_DIR]]
#
# Each BIN_DIR holds a release `ringcast` and `ringcast-bench` (cargo build
# --release -p ringcast -p ringcast-bench, at the two commits). Writes each
# run's results.json in OUT_DIR (default: beside this script), then
# summary.txt.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OLD_BIN_DIR NEW_BIN_DIR [ROUNDS [OUT_DIR]]" >&2; exit 2; }
old=$1 new=$2 rounds=${3:-2}
out=$(cd "${4:-$(dirname "$0")}" && pwd)
fifo=$(mktemp -u)
pid=''
stop_server() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=''; fi
}
secret=$(mktemp)
head -c 32 /dev/urandom | base64 >"$secret"
trap 'stop_server; rm -f "$fifo" "$secret"' EXIT

# start_server BIN_DIR ARGS...: sets pid, ws and api.
start_server() {
  local bin=$1; shift
  rm -f "$fifo"; mkfifo "$fifo"
  RUST_LOG=warn NO_COLOR=1 "$bin/ringcast" serve --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --workers 2 "$@" >"$fifo" &
  pid=$!
  read -r _ ws api <"$fifo"
  ws=${ws#ws=}; api=${api#api=}
}

bench() { timeout 300 nice -n 5 "$1/ringcast-bench" "${@:2}" --quiet | tail -3; }

for round in $(seq 1 "$rounds"); do
  for side in old new; do
    bin=$old; [ "$side" = new ] && bin=$new
    tag="$side-$round"
    start_server "$bin"
    bench "$bin" soak --url "ws://$ws/ws?topic=t" --connections 15000 --hold 15s \
      --server-pid "$pid" --out "$out/soak-15k-$tag"
    stop_server
    start_server "$bin" --jwt-hmac-secret-file "$secret"
    bench "$bin" soak --url "ws://$ws/ws?topic=t" --connections 15000 --hold 15s \
      --jwt-hmac-secret-file "$secret" --server-pid "$pid" --out "$out/soak-auth-15k-$tag"
    stop_server
    start_server "$bin"
    bench "$bin" fanout --url "ws://$ws/ws?topic=t" --publish-url "http://$api/publish?topic=t" \
      --subscribers 15000 --messages 20 --interval 1s --server-pid "$pid" --out "$out/fanout-15k-$tag"
    stop_server
    start_server "$bin" --echo
    bench "$bin" echo --url "ws://$ws/echo" --connections 100 --size 32 --duration 10s --out "$out/echo-$tag"
    stop_server
    start_server "$bin" --room 'room.*'
    bench "$bin" chat --url "ws://$ws/ws?topic=room.1" --connections 200 --send-rate 5 --duration 10s \
      --out "$out/chat-200x5-$tag"
    bench "$bin" chat --url "ws://$ws/ws?topic=room.1" --connections 300 --send-rate 10 --duration 10s \
      --out "$out/chat-300x10-$tag"
    stop_server
  done
done

python3 - "$out" "$rounds" >"$out/summary.txt" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(name):
    with open(f"{out}/{name}/results.json") as f:
        return json.load(f)
print("| figure | round | old | new |")
print("|---|---|---|---|")
for r in range(1, rounds + 1):
    row = lambda label, f: print(f"| {label} | {r} | {f(load(label_dir(label, 'old', r)))} | {f(load(label_dir(label, 'new', r)))} |")
    def label_dir(label, side, r):
        return {"idle RSS per connection, 15k": "soak-15k", "fan-out 15k p50 / p99": "fanout-15k",
                "fan-out 15k server CPU per delivery": "fanout-15k", "echo messages/s": "echo",
                "chat 200x5 p50 / p99": "chat-200x5", "chat 300x10 p50 / p99": "chat-300x10",
                "idle RSS per connection with a JWT each, 15k": "soak-auth-15k"}[label] + f"-{side}-{r}"
    row("idle RSS per connection, 15k", lambda d: f"{d['memory']['server_rss_per_connection']:.0f} B")
    row("idle RSS per connection with a JWT each, 15k", lambda d: f"{d['memory']['server_rss_per_connection']:.0f} B")
    row("fan-out 15k p50 / p99", lambda d: f"{d['latency']['p50_us']/1000:.1f} / {d['latency']['p99_us']/1000:.1f} ms (lost {d['lost']})")
    row("fan-out 15k server CPU per delivery", lambda d: f"{d['server_cpu_us_per_delivery']:.2f} µs")
    row("echo messages/s", lambda d: f"{d['messages_per_s']:,.0f}")
    chat = lambda d: f"{d['latency']['p50_us']/1000:.2f} / {d['latency']['p99_us']/1000:.1f} ms, delivered {d['delivered_fraction']:.4f}"
    row("chat 200x5 p50 / p99", chat)
    row("chat 300x10 p50 / p99", chat)
PY
cat "$out/summary.txt"
