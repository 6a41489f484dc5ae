#!/usr/bin/env bash
# What the observability tests (coditect-orchestrator/tests/observe.rs) need:
# headless Chromium and Prometheus (promtool and the server) from Debian, and
# the mermaid npm package (its bundled script is loaded from disk by the
# Chromium test).
#
#   scripts/test-observe.sh           install what is missing, then run the tests
#   scripts/test-observe.sh install   only install (scripts/test.sh calls this)
set -euo pipefail
cd "$(dirname "$0")/.."

printf '\n==> %s\n' "Chromium, Prometheus and mermaid (for the observability tests)"
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)
if [ "${#missing[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
      || echo "apt-get install ${missing[*]} failed; the observability tests will fail" >&2
  else
    echo "missing ${missing[*]} (Debian packages; needs apt-get as root)" >&2
  fi
fi
node_dir="target/observe-node"
if [ ! -f "$node_dir/node_modules/mermaid/dist/mermaid.min.js" ]; then
  if command -v npm >/dev/null 2>&1; then
    mkdir -p "$node_dir"
    (cd "$node_dir" && npm install --silent --no-audit --no-fund mermaid@11 >/dev/null 2>&1) \
      || echo "npm install mermaid failed; the Chromium test will fail" >&2
  else
    echo "npm is missing: the mermaid package cannot be installed" >&2
  fi
fi
chromium --version 2>/dev/null | head -1 || true
prometheus --version 2>&1 | head -1 || true

if [ "${1:-}" != "install" ]; then
  cargo test -p coditect-orchestrator --all-features --test observe
fi
