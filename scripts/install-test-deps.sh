#!/usr/bin/env bash
# Installs the real daemons the black-box tests start: nginx and haproxy
# from Debian. Their packaged services are not started (policy-rc.d), so
# nothing listens on port 80 afterwards. Needs root; a no-op when both are
# already installed.
set -euo pipefail

missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v haproxy >/dev/null || missing+=(haproxy)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-test-deps.sh: ${missing[*]} missing; run as root (apt-get install ${missing[*]})" >&2
  exit 1
fi

policy=/usr/sbin/policy-rc.d
created_policy=false
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  created_policy=true
fi
trap '$created_policy && rm -f "$policy"' EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
command -v nginx >/dev/null && command -v haproxy >/dev/null
