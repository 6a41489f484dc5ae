#!/usr/bin/env bash
# Installs the MCP peers the MCP tests run against, under target/mcp-peers:
#   - @modelcontextprotocol/server-everything (npm): the reference MCP server
#   - the official Python `mcp` SDK (PyPI), in a venv: the reference client
# The tests (coditect-agents --features mcp: tests/mcp_client.rs,
# tests/mcp_server.rs; examples/tests/mcp.rs) find them there. Outside CI a
# peer that cannot be installed makes its tests skip with a loud notice; under
# CI=true it is an error here and in the tests.
#
#   scripts/test-mcp.sh          # install (what scripts/test.sh does)
#   scripts/test-mcp.sh run      # install, then run the MCP tests alone
set -euo pipefail
cd "$(dirname "$0")/.."

EVERYTHING_VERSION="2026.8.31"
MCP_PY_VERSION="2.3.0"
dir="${MCP_PEERS_DIR:-target/mcp-peers}"
ci="${CI:-}"
failed=0

say() { printf '==> %s\n' "$*"; }
fail() {
  if [ "$ci" = "true" ]; then
    echo "error: $*" >&2
    failed=1
  else
    printf '\n*** NOTICE: %s — the MCP tests that need it will be SKIPPED ***\n\n' "$*" >&2
  fi
}
apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  apt-get install -y -qq "$@" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$@" >/dev/null 2>&1; }
}

mkdir -p "$dir"

say "MCP peer: @modelcontextprotocol/server-everything@$EVERYTHING_VERSION (npm)"
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  apt_install nodejs npm || true
fi
everything="$dir/node_modules/@modelcontextprotocol/server-everything/package.json"
if command -v npm >/dev/null 2>&1; then
  if ! grep -q "\"version\": \"$EVERYTHING_VERSION\"" "$everything" 2>/dev/null; then
    npm install --silent --no-audit --no-fund --prefix "$dir" \
      "@modelcontextprotocol/server-everything@$EVERYTHING_VERSION" >/dev/null 2>&1 || true
  fi
fi
if [ -f "$everything" ] && command -v node >/dev/null 2>&1; then
  echo "node $(node --version), server-everything $(sed -n 's/.*"version": "\(.*\)".*/\1/p' "$everything" | head -1)"
else
  fail "server-everything could not be installed (needs node and npm)"
fi

say "MCP peer: the Python mcp SDK $MCP_PY_VERSION (PyPI, venv in $dir/venv)"
py="$dir/venv/bin/python"
if ! "$py" -c "import mcp" >/dev/null 2>&1; then
  if ! python3 -m venv "$dir/venv" >/dev/null 2>&1; then
    apt_install python3-venv || true
    python3 -m venv "$dir/venv" >/dev/null 2>&1 || true
  fi
  "$py" -m pip install --quiet --disable-pip-version-check "mcp==$MCP_PY_VERSION" >/dev/null 2>&1 || true
fi
if "$py" -c "import mcp" >/dev/null 2>&1; then
  "$py" -m pip show mcp 2>/dev/null | sed -n 's/^Version: /python mcp /p'
else
  fail "the Python mcp SDK could not be installed (needs python3 with venv and pip)"
fi

if [ "$failed" -ne 0 ]; then
  exit 1
fi

if [ "${1:-}" = "run" ]; then
  say "MCP tests"
  cargo test -p coditect-agents --features mcp --test mcp_client --test mcp_server
  cargo test -p coditect-examples --test mcp
fi
