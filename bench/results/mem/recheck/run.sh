#!/usr/bin/env bash
# Echo and fan-out again, old and new alternated in 3 rounds, with the
# seams script's settings (bench/results/seams/run.sh): the host was
# overloaded during the first set of bench/results/mem/.
#
#   bench/results/mem/recheck/run.sh OLD_BIN_DIR NEW_BIN_DIR OUT_DIR
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 OLD_BIN_DIR NEW_BIN_DIR OUT_DIR" >&2; exit 2; }
ulimit -n 20000
old=$1 new=$2 out=$3
fifo=$(mktemp -u)
trap 'rm -f "$fifo"' EXIT
start() { rm -f $fifo; mkfifo $fifo; RUST_LOG=warn NO_COLOR=1 "$1/ringcast" serve --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --workers 2 "${@:2}" >$fifo & pid=$!; read -r _ ws api <$fifo; ws=${ws#ws=}; api=${api#api=}; }
stop() { kill $pid; wait $pid 2>/dev/null || true; }
for r in 1 2 3; do for side in old new; do
  bin=$old; [ $side = new ] && bin=$new
  start $bin --echo
  timeout 300 nice -n 5 $bin/ringcast-bench echo --url "ws://$ws/echo" --connections 100 --size 32 --duration 10s --out $out/echo-$side-$r --quiet | tail -1
  stop
  start $bin
  timeout 300 nice -n 5 $bin/ringcast-bench fanout --url "ws://$ws/ws?topic=t" --publish-url "http://$api/publish?topic=t" --subscribers 15000 --messages 20 --interval 1s --server-pid $pid --out $out/fanout-15k-$side-$r --quiet | tail -1
  stop
done; done
