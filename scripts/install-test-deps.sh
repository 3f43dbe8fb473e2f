#!/usr/bin/env bash
# Installs the real components the black-box tests start, from Debian:
# nginx, haproxy, redis-server and redis-sentinel (the cluster and Redis
# high-availability tests), chromium (the browser tests, driven headless),
# and the curl and openssl the tests call. Their packaged services are not
# started (policy-rc.d), so nothing listens on ports 80, 6379 or 26379
# afterwards. Needs root; a no-op when all are already installed.
set -euo pipefail

missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-sentinel >/dev/null || missing+=(redis-sentinel)
command -v chromium >/dev/null || missing+=(chromium)
# The SSE tests resume with curl -N; the TLS broker test makes its CA with openssl.
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
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
for tool in nginx haproxy redis-server redis-sentinel chromium curl openssl; do
  command -v "$tool" >/dev/null || { echo "install-test-deps.sh: $tool still missing" >&2; exit 1; }
done
