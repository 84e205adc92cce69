#!/usr/bin/env bash
# What the benchmark drives its cells with, installed from Debian when missing: wrk (the
# load generator) and nginx (the fake upstream). The anchors install themselves on first
# use (bench/targets.py).
set -euo pipefail

missing=()
if ! command -v wrk >/dev/null; then missing+=(wrk); fi
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then missing+=(nginx); fi
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "the benchmark needs: ${missing[*]} (Debian: apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
