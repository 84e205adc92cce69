#!/usr/bin/env bash
# The proxies of the hosted-mode tests, installed from Debian when missing: nginx
# (tests/test_hosted_cluster.py) and PgBouncer (tests/test_deploy.py). Nothing here starts
# them: each test starts its own on free loopback ports, from a generated config.
set -euo pipefail

missing=()
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then missing+=(nginx); fi
if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then missing+=(pgbouncer); fi
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "the hosted-mode tests need: ${missing[*]} (Debian: apt-get install ${missing[*]})" >&2
  fi
fi
