#!/usr/bin/env bash
# Runs every test: unit tests, black-box tests against the built binary
# (tokio-tungstenite and Python websockets clients, ringcast.js in Node
# and headless Chromium), the Autobahn conformance cases 1-10, 12 and 13
# (permessage-deflate) via kosoku, nginx and haproxy in front of the
# server with the configs in deploy/, then the tuning/ scripts' tests
# (root, for a network namespace). Installs the Python test venv (.venv),
# clients/js's npm packages and, as root, Debian's nginx, haproxy,
# redis-server, redis-sentinel and chromium on first use.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv 2>/dev/null; then
    echo "test.sh: python3 -m venv failed; on Debian: apt-get install python3-venv" >&2
    exit 1
  fi
fi
# (Re)install the pinned tools whenever the requirements change.
if ! cmp -s tests/python/requirements.txt .venv/requirements.txt; then
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
  cp tests/python/requirements.txt .venv/requirements.txt
fi
# kosoku 0.1.0 hands uncompressed messages on a permessage-deflate
# connection to Autobahn's 12.*/13.* cases as latin-1 str, not bytes; see
# the script for the evidence and the two-line fix (idempotent).
.venv/bin/python tests/python/patch_kosoku.py

# nginx, haproxy, redis-server, redis-sentinel and chromium from Debian
# (apt-get, as root).
scripts/install-test-deps.sh

# The JavaScript client's test packages (ws, playwright-core driving
# Debian's chromium; never a downloaded browser), from the lockfile.
(cd clients/js && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)

export RINGCAST_PYTHON="$PWD/.venv/bin/python"
export RINGCAST_KOSOKU="$PWD/.venv/bin/kosoku"
# fault-injection adds a test-only route (POST /debug/panic) that
# tests/failures.rs uses; release builds never enable it.
cargo test --workspace --features ringcast/fault-injection "$@"

# Host tuning scripts: dry run, capacity doctor, apply/revert in a netns.
RINGCAST_BIN="$PWD/target/debug/ringcast" tuning/tests/run.sh
