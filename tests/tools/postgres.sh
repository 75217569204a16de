#!/usr/bin/env bash
# A private PostgreSQL server for the tests, never the machine's own.
#
#   bash tests/tools/postgres.sh start DIR   # prints the URL to connect to
#   bash tests/tools/postgres.sh stop DIR
#
# PG_PORT=N start runs it on port N instead of a free one (a test that stops
# its server and starts it again at the same address).
#
# start creates a cluster in DIR (initdb) and runs it on a free port on
# 127.0.0.1, with its socket in DIR too; PostgreSQL is installed from apt when
# missing. The server refuses to run as root, so as root it runs as the
# `postgres` user the package creates. It trades crash safety for speed
# (fsync off) unless PG_DURABLE=1: it holds test data only.
set -euo pipefail

cmd=${1:?start or stop}
dir=${2:?data directory}

bin_dir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

case "$cmd" in
start)
    bin=$(bin_dir)
    if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
        echo "installing postgresql (for the database backend tests)" >&2
        sudo_cmd=""
        if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
        $sudo_cmd apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq postgresql >/dev/null
        bin=$(bin_dir)
    fi
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then chown postgres "$dir"; fi
    chmod 700 "$dir"
    if [ ! -f "$dir/PG_VERSION" ]; then
        as_owner "$bin/initdb" -D "$dir" -U anamnesis -A trust -E UTF8 --no-locale >/dev/null
    fi
    # PG_DURABLE=1 (the benchmarks): a server that syncs its log as in production.
    fast="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    if [ "${PG_DURABLE:-0}" = 1 ]; then fast=""; fi
    port=${PG_PORT:-}
    [ -n "$port" ] || port=$(python3 -c "import sys; sys.path.insert(0, '$(dirname "$0")/../../benches'); from ports import free_port; print(free_port())")
    as_owner "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start -o \
        "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=400 \
         $fast -c shared_buffers=256MB" >/dev/null
    echo "postgres://anamnesis@127.0.0.1:$port/postgres"
    ;;
stop)
    bin=$(bin_dir)
    if [ -f "$dir/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" -D "$dir" -m immediate -w stop >/dev/null || true
    fi
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
