#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property and black-box HTTP
# tests. This is the README's test command and exactly what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# Everything the tests need is installed here when missing (a fresh machine
# has only the Rust toolchain and apt).
if ! command -v cargo >/dev/null; then
    echo "cargo is required (install the Rust toolchain)" >&2
    exit 1
fi
if ! rustup component list --installed 2>/dev/null | grep -q '^rustfmt'; then
    rustup component add rustfmt
fi
if ! rustup component list --installed 2>/dev/null | grep -q '^clippy'; then
    rustup component add clippy
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "cargo test"
cargo test --locked --all-features -- --test-threads="${TEST_THREADS:-4}"
