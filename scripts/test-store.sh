#!/usr/bin/env bash
# The run store's tests (coditect-orchestrator::store) against every backend:
# memory, SQLite (bundled), PostgreSQL (Debian's postgresql package, started by
# the tests in a temporary directory) and NATS JetStream (nats-server, as the
# transport tests find it).
#
#   scripts/test-store.sh           install what is missing, then run the store tests
#   scripts/test-store.sh install   only install (scripts/test.sh calls this; its
#                                   workspace-wide cargo test runs the store tests)
#
# PostgreSQL refuses to run as root: as root the tests run it as the
# unprivileged `postgres` user the package creates (see src/testing/postgres.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

have_postgres() {
  [ -n "${POSTGRES_BIN_DIR:-}" ] && [ -x "$POSTGRES_BIN_DIR/initdb" ] && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null 2>&1 && return 0
  command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1
}

printf '\n==> %s\n' "PostgreSQL (for the store's PostgreSQL tests)"
if ! have_postgres; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq postgresql >/dev/null 2>&1 \
      || echo "apt-get install postgresql failed; the PostgreSQL store tests will fail" >&2
  else
    echo "PostgreSQL is missing and cannot be installed here (needs apt-get as root):" \
         "install Debian's postgresql package or set POSTGRES_BIN_DIR" >&2
  fi
fi
if have_postgres; then
  bin="${POSTGRES_BIN_DIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
  "${bin:+$bin/}postgres" --version 2>/dev/null || postgres --version
fi
if [ "$(id -u)" = "0" ] && ! command -v setpriv >/dev/null 2>&1 && ! command -v runuser >/dev/null 2>&1; then
  echo "running as root without setpriv or runuser (util-linux): PostgreSQL cannot be started" >&2
fi

if [ "${1:-}" = "install" ]; then
  exit 0
fi

printf '\n==> %s\n' "store tests (memory, SQLite, PostgreSQL, JetStream)"
cargo test -p coditect-orchestrator --all-features --no-fail-fast \
  --test store_memory --test store_sqlite --test store_postgres --test store_nats
cargo test -p coditect-orchestrator --all-features --lib store::

old_bin="target/nats-server-2.9.10/root/usr/sbin/nats-server"
if [ -x "$old_bin" ]; then
  printf '\n==> %s\n' "JetStream store against nats-server 2.9.10"
  NATS_SERVER_BIN="$PWD/$old_bin" cargo test -p coditect-orchestrator --all-features --test store_nats
fi
