#!/usr/bin/env bash
# Debian's nginx for the hosted-cluster test (tests/test_hosted_cluster.py starts its own
# nginx on free loopback ports, from a generated config; nothing here starts one).
set -euo pipefail

if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  if command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
  else
    echo "the hosted-cluster test needs nginx (Debian: apt-get install nginx)" >&2
  fi
fi
