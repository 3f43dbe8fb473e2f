#!/usr/bin/env bash
# Tests of tuning/: the dry run touches nothing, the doctor's verdict on this
# host, and apply + --revert inside a network namespace of its own leaves
# every value as it was. Prints "N passed, N failed".
set -uo pipefail
tuning=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
ns=ringcast-tuning-$$
passed=0
failed=0
cleanup() { ip netns del "$ns" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

check() { # name, then a command that must succeed
  local name=$1; shift
  if "$@"; then echo "ok      $name"; passed=$((passed + 1)); else echo "FAILED  $name"; failed=$((failed + 1)); fi
}

keys() { sed -e 's/#.*//' -e '/^[[:space:]]*$/d' -e 's/[[:space:]]*=.*//' "$tuning/sysctl.d/90-ringcast.conf"; }
# Every key's current value (or "absent"), one per line; run with a prefix
# command (e.g. ip netns exec NS) to read another namespace.
snapshot() { local k; for k in $(keys); do echo "$k=$("$@" sysctl -n "$k" 2>/dev/null | tr -s ' \t' ' ' || echo absent)"; done; }

dry_run_touches_nothing() {
  local before after
  before=$(snapshot env)
  RINGCAST_TUNING_STATE=$work/dry-state RINGCAST_TUNING_ETC=$work/dry-etc "$tuning/apply.sh" --dry-run > "$work/dry.out" || return 1
  after=$(snapshot env)
  [ "$before" = "$after" ] && [ ! -e "$work/dry-state" ] && [ ! -e "$work/dry-etc" ] &&
    grep -q -- '->' "$work/dry.out" && grep -q '^install ' "$work/dry.out"
}

doctor_verdict_on_this_host() {
  local hard cores status
  hard=$(ulimit -Hn); cores=$(nproc)
  "$tuning/check.sh" --target 1000000 > "$work/doctor.out"; status=$?
  cat "$work/doctor.out"
  if [ "$hard" != unlimited ] && [ $((hard * cores)) -lt 1000000 ]; then
    # The fixed-file tables cap this host at workers x RLIMIT_NOFILE.
    [ "$status" -eq 1 ] && grep -q 'NOT reachable' "$work/doctor.out" &&
      grep -q "ceiling: $((hard * cores)) concurrent connections" "$work/doctor.out" &&
      grep -q 'bound by RLIMIT_NOFILE hard' "$work/doctor.out"
  else
    [ "$status" -eq 0 ] || grep -q 'NOT reachable' "$work/doctor.out"
  fi
}

in_ns() { ip netns exec "$ns" "$@"; }
apply_in_ns() {
  in_ns env RINGCAST_TUNING_STATE="$work/state" RINGCAST_TUNING_ETC="$work/etc" "$tuning/apply.sh" --only net.core.,net.ipv4. "$@"
}

apply_then_revert_restores_a_namespace() {
  local before host_before applied again after
  ip netns add "$ns" || return 1
  before=$(snapshot in_ns)
  host_before=$(snapshot env)
  apply_in_ns > "$work/apply.out" || { cat "$work/apply.out"; return 1; }
  cat "$work/apply.out"
  applied=$(in_ns sysctl -n net.core.somaxconn)
  [ "$applied" = 65535 ] || { echo "somaxconn in the namespace is $applied"; return 1; }
  [ "$(snapshot env)" = "$host_before" ] || { echo "the host's values changed"; return 1; }
  grep -q '^LimitNOFILE=' "$work/etc/systemd/system/ringcast.service.d/90-limits.conf" || return 1
  cmp -s "$tuning/limits.d/ringcast.conf" "$work/etc/security/limits.d/ringcast.conf" || return 1
  again=$(apply_in_ns) || return 1
  if echo "$again" | grep -q '^set '; then echo "second apply changed values again:"; echo "$again"; return 1; fi
  apply_in_ns --revert > "$work/revert.out" || { cat "$work/revert.out"; return 1; }
  cat "$work/revert.out"
  after=$(snapshot in_ns)
  [ "$before" = "$after" ] || { diff <(echo "$before") <(echo "$after"); return 1; }
  [ ! -e "$work/state" ] && [ -z "$(find "$work/etc" -type f)" ]
}

check "apply.sh --dry-run prints changes and touches nothing" dry_run_touches_nothing
check "check.sh --target 1000000 names the binding limit" doctor_verdict_on_this_host
if [ "$(id -u)" -eq 0 ] && command -v ip >/dev/null; then
  check "apply.sh then --revert in a network namespace leaves every value as it was" apply_then_revert_restores_a_namespace
else
  echo "FAILED  apply/revert test needs root and iproute2 (ip netns)"
  failed=$((failed + 1))
fi
echo "tuning: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
