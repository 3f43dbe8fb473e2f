#!/usr/bin/env bash
# Capacity doctor: can this host hold N concurrent connections, which limit
# binds first, and what to change. Usage: tuning/check.sh --target N [--workers W]
# Exits 0 when N is reachable, 1 when not. Runs `ringcast doctor`, which
# shares the server's own capacity computation.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

if [ -n "${RINGCAST_BIN:-}" ]; then
  bin=$RINGCAST_BIN
elif [ -x "$root/target/release/ringcast" ]; then
  bin=$root/target/release/ringcast
elif command -v ringcast >/dev/null 2>&1; then
  bin=$(command -v ringcast)
else
  echo "check.sh: building ringcast (cargo build --release -p ringcast)..." >&2
  (cd "$root" && cargo build --release --quiet -p ringcast)
  bin=$root/target/release/ringcast
fi
exec "$bin" doctor "$@"
