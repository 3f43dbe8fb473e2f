#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS_PER_TARGET (default 20),
# one after the other, each on fuzz/corpus/<target>/ (ignored by git), which
# starts as a copy of the committed seeds in fuzz/seeds/<target>/ and keeps
# what earlier runs found. Exits non-zero on the first crash, timeout or
# leak, printing the artifact that reproduces it.
#
# Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz --locked
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]
#   FUZZ_TARGETS="decoder proxy" scripts/fuzz.sh 60   # a subset
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-20}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [SECONDS_PER_TARGET]" >&2
  exit 2
fi
read -r -a targets <<<"${FUZZ_TARGETS:-decoder handshake proxy control}"

# Longest input per target: past each parser's own limits, small enough to
# keep executions fast.
max_len() {
  case $1 in
    decoder) echo 16384 ;;
    handshake) echo 9000 ;; # MAX_REQUEST_HEAD is 8192
    proxy) echo 2048 ;;     # MAX_V2 is 1040
    *) echo 4096 ;;
  esac
}

# -a: debug assertions (arithmetic overflow checks) in the fuzzed code.
cargo +nightly fuzz build -a

logs=fuzz/artifacts/logs
mkdir -p "$logs"
for target in "${targets[@]}"; do
  corpus=fuzz/corpus/$target
  mkdir -p "$corpus"
  # Seeds are named by their SHA-1: copying over a kept corpus changes nothing.
  cp "fuzz/seeds/$target/"* "$corpus/"
  log=$logs/$target.log
  echo "== fuzz $target for ${seconds}s (log: $log)"
  status=0
  cargo +nightly fuzz run -a "$target" "$corpus" -- \
    -max_total_time="$seconds" -max_len="$(max_len "$target")" \
    -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
  # The closing lines: executions, exec/s, corpus size, peak memory.
  grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log" || true
  echo "corpus: $(find "$corpus" -type f | wc -l) files"
  if ((status != 0)); then
    tail -n 40 "$log" >&2
    artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | cut -d' ' -f5- || true)
    echo "fuzz: $target FAILED (exit $status)" >&2
    if [[ -n $artifact ]]; then
      echo "fuzz: crash artifact: $artifact" >&2
      echo "fuzz: reproduce: cargo +nightly fuzz run -a $target $artifact" >&2
      echo "fuzz: minimise:  cargo +nightly fuzz tmin -a $target $artifact" >&2
    fi
    exit 1
  fi
done
echo "fuzz: ${targets[*]}: no crash in ${seconds}s each"
