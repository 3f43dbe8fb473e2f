#!/usr/bin/env bash
# SSE vs WebSocket: idle memory (soak) and fan-out latency, release builds
# (cargo build --release -p ringcast -p ringcast-bench first). Writes the
# results.json and plots beside this script.
set -euo pipefail
cd /work/wt-browser
bin=target/release
out=bench/results/sse
mkdir -p "$out"
run_server() {
  rm -f /tmp/bench-addr; mkfifo /tmp/bench-addr
  RUST_LOG=warn "$bin/ringcast" serve --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --workers 2 >/tmp/bench-addr &
  pid=$!
  read -r _ ws api </tmp/bench-addr
  ws=${ws#ws=}; api=${api#api=}
}
for t in websocket sse; do
  path=ws; [ "$t" = sse ] && path=sse
  run_server
  timeout 300 "$bin/ringcast-bench" soak --url "ws://$ws/$path?topic=t" --transport "$t" --connections 20000 \
    --hold 20s --server-pid "$pid" --quiet --out "$out/soak-20k-$t" | tail -14
  kill "$pid"; wait "$pid" 2>/dev/null || true
  run_server
  sub=(); [ "$t" = websocket ] && sub=(--subprotocol ringcast.v1)
  timeout 300 "$bin/ringcast-bench" fanout --url "ws://$ws/$path?topic=t" --publish-url "http://$api/publish?topic=t" \
    --transport "$t" "${sub[@]}" --subscribers 10000 --messages 100 --interval 100ms --quiet --out "$out/fanout-10k-$t" | tail -14
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
