#!/usr/bin/env bash
# Fan-out latency: one node alone, one node over Redis, three nodes over
# Redis (subscribers spread over the nodes, publishes to the first). The
# README's "Cluster over Redis" figures come from this script.
#   bench/cluster/run.sh [SUBSCRIBERS] [MESSAGES]   (release build first)
set -euo pipefail
cd "$(dirname "$0")/../.."
SUBS=${1:-3000}; MSGS=${2:-50}
R=target/release
OUT=bench/results/cluster
mkdir -p "$OUT"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_port() { for _ in $(seq 200); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
node() { # WS API [--broker URL]
  $R/ringcast serve --listen 127.0.0.1:"$1" --api-listen 127.0.0.1:"$2" --workers 1 "${@:3}" >/dev/null 2>&1 & pids+=($!)
  wait_port "$2"
}
fanout() { # NAME PUBLISH_API URLS...
  local name=$1 api=$2; shift 2
  local urls=(); for u in "$@"; do urls+=(--url "ws://127.0.0.1:$u/ws?topic=t"); done
  $R/ringcast-bench fanout "${urls[@]}" --publish-url "http://127.0.0.1:$api/publish?topic=t" \
    --subscribers "$SUBS" --messages "$MSGS" --interval 100ms --workers 3 --quiet --out "$OUT/$name" | tail -n 20
}
RP=$(port); redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no >/dev/null & pids+=($!)
wait_port "$RP"
W1=$(port); A1=$(port); node "$W1" "$A1"
echo "== single node, no broker"; fanout single "$A1" "$W1" "$W1" "$W1"
kill "${pids[-1]}"
W2=$(port); A2=$(port); node "$W2" "$A2" --broker redis://127.0.0.1:"$RP"
echo "== one node over Redis"; fanout one-node-redis "$A2" "$W2" "$W2" "$W2"
W3=$(port); A3=$(port); node "$W3" "$A3" --broker redis://127.0.0.1:"$RP"
W4=$(port); A4=$(port); node "$W4" "$A4" --broker redis://127.0.0.1:"$RP"
echo "== three nodes over Redis"; fanout three-nodes-redis "$A2" "$W2" "$W3" "$W4"
