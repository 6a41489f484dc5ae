#!/usr/bin/env bash
# The A2A peer: installs the official Python A2A SDK (PyPI `a2a-sdk`, with the
# Starlette server extras, and uvicorn to serve it) into target/a2a-venv, where the A2A interop
# tests (coditect-agents/tests/a2a_interop.rs) find it; `scripts/test.sh` calls
# it before `cargo test`, which then runs those tests with everything else.
#
#   ./scripts/test-a2a.sh          # install (or check) the peer
#   ./scripts/test-a2a.sh --run    # …and run the A2A suites on their own
#
# Under CI=true a peer that cannot be installed is a failure; elsewhere the
# tests skip, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."

A2A_SDK="a2a-sdk[http-server]==1.3.0"
UVICORN="uvicorn==0.54.0"
venv="target/a2a-venv"

peer_ok() {
  [ -x "$venv/bin/python" ] \
    && "$venv/bin/python" -c "import a2a.server.routes, a2a.client, uvicorn, starlette" >/dev/null 2>&1 \
    && "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('a2a-sdk') != '1.3.0')" >/dev/null 2>&1
}

if ! peer_ok; then
  py="$(command -v python3 || command -v python || true)"
  if [ -n "$py" ]; then
    mkdir -p target
    if ! "$py" -m venv --clear "$venv" >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
      # Debian's Python needs python3-venv for `-m venv`.
      { apt-get install -y -qq python3-venv >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq python3-venv >/dev/null 2>&1; }; } || true
      "$py" -m venv --clear "$venv" >/dev/null 2>&1 || true
    fi
    if [ -x "$venv/bin/python" ]; then
      "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$A2A_SDK" "$UVICORN" \
        || echo "pip could not install $A2A_SDK $UVICORN" >&2
    fi
  fi
fi

if peer_ok; then
  echo "A2A peer: a2a-sdk $("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('a2a-sdk'))") in $venv"
elif [ "${CI:-}" = "true" ]; then
  echo "error: the A2A peer ($A2A_SDK) could not be installed into $venv" >&2
  exit 1
else
  echo "notice: the A2A peer ($A2A_SDK) is not installed; the A2A interop tests will be SKIPPED" >&2
fi

if [ "${1:-}" = "--run" ]; then
  cargo test -p coditect-agents --features a2a --test a2a --test a2a_interop
  cargo test -p coditect-examples --test a2a
fi
