#!/usr/bin/env bash
# What the browser tests need, installed when missing: Debian's Chromium (driven by
# Python Playwright through /usr/bin/chromium; Playwright never downloads a browser here)
# and axe-core from npm (tests/js, pinned by its lock file), injected into pages by tests;
# the official openai JS SDK for the example chat app (examples/browser-chat, pinned by
# its lock file, served by the example itself); the JavaScript client's dev dependencies
# (clients/js: the official @anthropic-ai/sdk its tests call through and TypeScript for the
# types check, pinned by its lock file; the package itself has no runtime dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "browser tests need Debian's chromium at /usr/bin/chromium" >&2
  fi
fi
if [ ! -f tests/js/node_modules/axe-core/axe.min.js ]; then
  (cd tests/js && npm ci --no-audit --no-fund --silent)
fi
if [ ! -f examples/browser-chat/node_modules/openai/index.mjs ]; then
  (cd examples/browser-chat && npm ci --no-audit --no-fund --silent)
fi
if [ ! -f clients/js/node_modules/@anthropic-ai/sdk/package.json ] || [ ! -e clients/js/node_modules/.bin/tsc ]; then
  (cd clients/js && npm ci --no-audit --no-fund --silent)
fi
