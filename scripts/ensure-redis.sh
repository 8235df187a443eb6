#!/usr/bin/env bash
# Make sure redis-server and redis-cli (Redis Cluster tests) are available for the tests and demo.
# It only installs the binaries: it never starts, stops or configures a system Redis service
# (the tests and the demo start their own throwaway servers on free loopback ports).
set -euo pipefail

have() {
  if [[ -n "${CELERYREDIS_REDIS_SERVER:-}" ]]; then
    [[ -x "$CELERYREDIS_REDIS_SERVER" ]] && echo "$CELERYREDIS_REDIS_SERVER"
    return
  fi
  command -v redis-server || true
}

have_cli() {
  if [[ -n "${CELERYREDIS_REDIS_CLI:-}" ]]; then
    [[ -x "$CELERYREDIS_REDIS_CLI" ]] && echo "$CELERYREDIS_REDIS_CLI"
    return
  fi
  command -v redis-cli || true
}

bin=$(have)
cli=$(have_cli)
if [[ -n "$bin" && -n "$cli" ]]; then
  echo "ensure-redis: using $bin ($("$bin" --version | head -n1)) and $cli"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "ensure-redis: redis-server or redis-cli is not installed and this is not root." >&2
  echo "  Install them (Debian/Ubuntu: sudo apt-get install redis-server redis-tools) or set" >&2
  echo "  CELERYREDIS_REDIS_SERVER / CELERYREDIS_REDIS_CLI, then run this again." >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "ensure-redis: redis-server or redis-cli is missing and there is no apt-get here." >&2
  echo "  Install them with your package manager, or set CELERYREDIS_REDIS_SERVER/_CLI." >&2
  exit 1
fi

# redis-tools provides redis-cli, which the Redis Cluster tests use to create their cluster.
echo "ensure-redis: redis-server or redis-cli is missing; installing Debian's redis-server and redis-tools"
export DEBIAN_FRONTEND=noninteractive
# The package's service may be blocked from starting (policy-rc.d); we never use it anyway.
apt-get update -qq
apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null

bin=$(have)
cli=$(have_cli)
if [[ -z "$bin" || -z "$cli" ]]; then
  echo "ensure-redis: apt-get finished but redis-server or redis-cli is still not on PATH." >&2
  exit 1
fi
echo "ensure-redis: installed $bin ($("$bin" --version | head -n1)) and $cli"
