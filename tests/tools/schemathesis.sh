#!/usr/bin/env bash
# Runs schemathesis (the OpenAPI fuzzer) with the arguments given, installing
# it first into a private virtual environment under target/ when it is not
# there yet. The version is pinned, and its dependencies are constrained to
# the versions it was tested with (schemathesis-constraints.txt): a red build
# should come from our change, not from a release nobody asked for.
#
#   bash tests/tools/schemathesis.sh run http://127.0.0.1:8080/openapi.json ...
#
# Needs python3 (3.9 or later) and, for the first install, PyPI; installs
# python3-venv with apt when the venv module is missing. Idempotent: when the
# environment is there, a call only checks a marker file and runs `st`.
set -euo pipefail

VERSION="4.32.5"
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
VENV="$TARGET/schemathesis-venv"
CONSTRAINTS="$HERE/schemathesis-constraints.txt"
STAMP="$VERSION-$(sha256sum "$CONSTRAINTS" | cut -c1-12)"
MARKER="$VENV/.installed-$STAMP"

log() { printf 'schemathesis.sh: %s\n' "$*" >&2; }
fail() {
    log "$*"
    exit 1
}

install() {
    command -v python3 >/dev/null || fail "python3 is required (CPython 3.9 or later)"
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        log "the python venv module is missing; installing python3-venv with apt"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y python3-venv >&2 ||
            { apt-get update >&2 && apt-get install -y python3-venv >&2; } ||
            fail "could not install python3-venv with apt"
    fi
    rm -rf "$VENV"
    mkdir -p "$TARGET"
    log "installing schemathesis $VERSION into $VENV"
    python3 -m venv "$VENV" || fail "python3 -m venv $VENV failed"
    if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --constraint "$CONSTRAINTS" "schemathesis==$VERSION" >&2; then
        rm -rf "$VENV"
        fail "could not install schemathesis $VERSION from PyPI (see pip's message above)"
    fi
    touch "$MARKER"
}

if [[ ! -f "$MARKER" || ! -x "$VENV/bin/st" ]]; then
    # Two test processes may race to install: one installs, the other waits.
    mkdir -p "$TARGET"
    exec 9>"$TARGET/.schemathesis-install.lock"
    flock 9
    if [[ ! -f "$MARKER" || ! -x "$VENV/bin/st" ]]; then
        install
    fi
    flock -u 9
fi

exec "$VENV/bin/st" "$@"
