#!/usr/bin/env bash
# Make sure a redis-server binary is available for the tests and the demo.
# It only installs the binary: it never starts, stops or configures a system Redis service
# (the tests and the demo start their own throwaway servers on free loopback ports).
set -euo pipefail

have() {
  if [[ -n "${CELERYREDIS_REDIS_SERVER:-}" ]]; then
    [[ -x "$CELERYREDIS_REDIS_SERVER" ]] && echo "$CELERYREDIS_REDIS_SERVER"
    return
  fi
  command -v redis-server || true
}

bin=$(have)
if [[ -n "$bin" ]]; then
  echo "ensure-redis: using $bin ($("$bin" --version | head -n1))"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "ensure-redis: redis-server is not installed and this is not root." >&2
  echo "  Install it (Debian/Ubuntu: sudo apt-get install redis-server) or set" >&2
  echo "  CELERYREDIS_REDIS_SERVER=/path/to/redis-server, then run this again." >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "ensure-redis: redis-server is missing and there is no apt-get here." >&2
  echo "  Install redis-server with your package manager, or set CELERYREDIS_REDIS_SERVER." >&2
  exit 1
fi

echo "ensure-redis: redis-server is missing; installing Debian's redis-server package"
export DEBIAN_FRONTEND=noninteractive
# The package's service may be blocked from starting (policy-rc.d); we never use it anyway.
apt-get update -qq
apt-get install -y -qq --no-install-recommends redis-server >/dev/null

bin=$(have)
if [[ -z "$bin" ]]; then
  echo "ensure-redis: apt-get finished but redis-server is still not on PATH." >&2
  exit 1
fi
echo "ensure-redis: installed $bin ($("$bin" --version | head -n1))"
