#!/usr/bin/env bash
# HTTP load test of the release binary beside a bare reference server; see
# benches/load.py for what it measures and prints.
#
#   bash benches/load.sh                         # 100,000 profiles x 20 interactions
#   POPULATION=2000 DURATION=5s bash benches/load.sh   # a quick look
#   SCENARIOS=reads REDIS=1 bash benches/load.sh # reads only, cached in Redis
#   DATA_DIR=/var/tmp/big POPULATION=1000000 INTERACTIONS=10 bash benches/load.sh
#
# Settings (environment):
#   DURATION     per measurement, wrk/oha syntax (10s)
#   CONNECTIONS  concurrent connections of the load generator (64)
#   POPULATION   profiles loaded before measuring (100000)
#   INTERACTIONS interactions per profile (20)
#   SCENARIOS    all, or reads (the three reads only)
#   OPEN_LOOP    1 (default): also the fixed-rate run with oha; 0: skip it
#   DATA_DIR     keep the data directory here, and reuse it (with its
#                population) when it already holds one
#   REDIS        1: a private redis-server on a free port caches reads
#   ANAMNESIS__* any setting of the service, e.g. ANAMNESIS__STORAGE__DURABLE=false
#
# wrk and oha run on the same machine as the servers: on 2 cores all of them
# compete for CPU, so absolute numbers are a floor, not a ceiling.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null; then
    echo "installing wrk" >&2
    (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi
OHA=$(command -v oha || echo "$HOME/.cargo/bin/oha")
if [ "${OPEN_LOOP:-1}" = 1 ] && [ ! -x "$OHA" ]; then
    echo "installing oha (a few minutes, once)" >&2
    cargo install oha --locked -q
fi
[ -x "$OHA" ] || OHA=-

cargo build --release --locked -q --bin anamnesis --bin reference
if [ "${REDIS:-0}" = 1 ]; then
    command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server redis-tools) >/dev/null
    REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    REDIS_DIR=$(mktemp -d)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$REDIS_DIR" >/dev/null &
    REDIS_PID=$!
    trap 'kill "$REDIS_PID" 2>/dev/null; rm -rf "$REDIS_DIR"' EXIT
    for _ in $(seq 100); do
        [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
        sleep 0.05
    done
    export ANAMNESIS__REDIS__URL=redis://127.0.0.1:$REDIS_PORT/0
    echo "redis: private redis-server on port $REDIS_PORT" >&2
fi
python3 benches/load.py target/release/anamnesis target/release/reference "$(command -v wrk)" "$OHA"
