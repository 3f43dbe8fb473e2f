#!/usr/bin/env bash
# Applies tuning/sysctl.d/90-ringcast.conf and installs the open-file limits
# (limits.d, and a systemd drop-in where systemd runs). Saves every previous
# value first, so --revert restores the host as it was. Idempotent.
#
#   tuning/apply.sh             apply and install
#   tuning/apply.sh --dry-run   print every change as old -> new; touch nothing
#   tuning/apply.sh --revert    restore the saved values and remove what was installed
#   tuning/apply.sh --only P,Q  limit sysctls to names starting with P or Q (e.g. net.core.);
#                               the files are installed all the same
#
# Environment: RINGCAST_TUNING_STATE (saved values, default
# /var/lib/ringcast-tuning), RINGCAST_TUNING_ETC (default /etc).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
conf=$here/sysctl.d/90-ringcast.conf
state=${RINGCAST_TUNING_STATE:-/var/lib/ringcast-tuning}
etc=${RINGCAST_TUNING_ETC:-/etc}
mode=apply
only=""

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) mode=dry-run ;;
    --revert) mode=revert ;;
    --only) only=${2:?--only needs a prefix}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "apply.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

# Collapses runs of blanks so "1 2  3" and "1\t2\t3" compare equal.
norm() { echo "$*" | tr -s ' \t' ' '; }

matches_only() {
  local prefix
  local -a prefixes
  IFS=, read -ra prefixes <<< "$only"
  for prefix in "${prefixes[@]}"; do
    case $1 in "$prefix"*) return 0 ;; esac
  done
  return 1
}

# Writes a sysctl and reads it back: some are accepted and ignored (e.g.
# nf_conntrack_max outside the initial network namespace).
write_sysctl() {
  local err now
  err=$(sysctl -q -w "$1=$2" 2>&1) || { echo "$err"; return 1; }
  now=$(norm "$(sysctl -n "$1")")
  [ "$now" = "$2" ] || { echo "the kernel kept $now"; return 1; }
}

# Prints "key value" for every setting in the conf, honouring --only.
settings() {
  sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$conf" | while IFS='=' read -r key value; do
    key=$(norm "$key"); key=${key# }; key=${key% }
    value=$(norm "$value"); value=${value# }; value=${value% }
    if [ -z "$only" ] || matches_only "$key"; then echo "$key $value"; fi
  done
}

failures=0
unavailable() {
  echo "skip    $1: not available here (module not loaded, or a global setting outside the initial network namespace)"
}
cannot_set() {
  echo "FAILED  $1: cannot set ($2): read-only in a container, or missing CAP_SYS_ADMIN/CAP_NET_ADMIN"
  failures=$((failures + 1))
}

# Files installed: destination and source (empty: the systemd drop-in).
files=("$etc/sysctl.d/90-ringcast.conf:$conf" "$etc/security/limits.d/ringcast.conf:$here/limits.d/ringcast.conf")
# The drop-in where systemd runs, or always when installing into another
# root (RINGCAST_TUNING_ETC), whose init system this host cannot see.
if [ -d /run/systemd/system ] || [ -n "${RINGCAST_TUNING_ETC:-}" ]; then
  files+=("$etc/systemd/system/ringcast.service.d/90-limits.conf:")
fi
# Carries the unit's own LimitNOFILE, for hosts that run their own unit.
dropin() {
  printf '[Service]\n# Installed by ringcast tuning/apply.sh\n'
  grep '^LimitNOFILE=' "$here/ringcast.service"
}
file_content() { if [ -n "$1" ]; then cat "$1"; else dropin; fi; }

apply_sysctls() {
  local key want current err
  while read -r key want; do
    if ! current=$(sysctl -n "$key" 2>/dev/null); then unavailable "$key"; continue; fi
    current=$(norm "$current")
    if [ "$current" = "$want" ]; then
      echo "ok      $key = $want"
    elif [ "$mode" = dry-run ]; then
      echo "change  $key: $current -> $want"
    else
      grep -q "^$key=" "$state/sysctl.saved" 2>/dev/null || echo "$key=$current" >> "$state/sysctl.saved"
      if err=$(write_sysctl "$key" "$want"); then
        echo "set     $key: $current -> $want"
      else
        cannot_set "$key" "$err"
      fi
    fi
  done < <(settings)
}

install_files() {
  local entry dst src
  for entry in "${files[@]}"; do
    dst=${entry%%:*}; src=${entry#*:}
    if [ -f "$dst" ] && [ "$(file_content "$src")" = "$(cat "$dst")" ]; then
      echo "ok      $dst"
    elif [ "$mode" = dry-run ]; then
      echo "install $dst"
    else
      if ! grep -qxF "$dst" "$state/files.installed" 2>/dev/null; then
        [ -f "$dst" ] && cp -p "$dst" "$state/backup.$(echo "$dst" | tr / _)"
        echo "$dst" >> "$state/files.installed"
      fi
      mkdir -p "$(dirname "$dst")"
      file_content "$src" > "$dst"
      echo "install $dst"
    fi
  done
}

revert() {
  local line key old current err dst backup
  if [ ! -d "$state" ]; then echo "nothing to revert: no saved state in $state"; return; fi
  if [ -f "$state/sysctl.saved" ]; then
    while IFS= read -r line; do
      key=${line%%=*}; old=${line#*=}
      if ! current=$(sysctl -n "$key" 2>/dev/null); then unavailable "$key"; continue; fi
      if [ "$(norm "$current")" = "$old" ]; then
        echo "ok      $key = $old"
      elif err=$(write_sysctl "$key" "$old"); then
        echo "restore $key: $(norm "$current") -> $old"
      else
        cannot_set "$key" "$err"
      fi
    done < "$state/sysctl.saved"
  fi
  if [ -f "$state/files.installed" ]; then
    while IFS= read -r dst; do
      backup=$state/backup.$(echo "$dst" | tr / _)
      if [ -f "$backup" ]; then mv "$backup" "$dst"; echo "restore $dst"; else rm -f "$dst"; echo "remove  $dst"; fi
    done < "$state/files.installed"
  fi
  [ "$failures" -eq 0 ] && rm -rf "$state"
}

case $mode in
  revert) revert ;;
  dry-run) apply_sysctls; install_files ;;
  apply)
    mkdir -p "$state"
    apply_sysctls
    install_files
    echo "saved previous values in $state; undo with: $0 --revert"
    ;;
esac
if [ "$failures" -gt 0 ]; then
  echo "$failures setting(s) could not be changed" >&2
  exit 1
fi
