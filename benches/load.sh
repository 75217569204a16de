#!/usr/bin/env bash
# HTTP load test of the release binary on a fresh data directory.
#
#   bash benches/load.sh              # defaults: 10 s per scenario, 64 connections
#   DURATION=30s CONNECTIONS=128 bash benches/load.sh
#
# Prints, per scenario, requests/s and latency percentiles as wrk reports them.
# The load generator shares the machine with the server: on 2 cores both
# compete for CPU, so absolute numbers are a floor, not a ceiling.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
POPULATION=${POPULATION:-2000}
# `all`, or `reads` (the three read scenarios, at saturation and on one connection).
SCENARIOS=${SCENARIOS:-all}
# REDIS=1: a private redis-server on a free port caches cards and lookups.
REDIS=${REDIS:-0}

# Measures the service, not the per-subject limit (one token drives all load).
export ANAMNESIS__LIMITS__RATE_PER_SECOND=0
if [ "$REDIS" = 1 ]; then
    REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    REDIS_DIR=$(mktemp -d)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$REDIS_DIR" >/dev/null &
    REDIS_PID=$!
    for _ in $(seq 100); do
        [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
        sleep 0.05
    done
    export ANAMNESIS__REDIS__URL=redis://127.0.0.1:$REDIS_PORT/0
fi
# shellcheck source=benches/server.sh
source benches/server.sh
LUA=$DATA/lua
mkdir "$LUA"
TOKEN=$("$BIN" token --scope admin --ttl 1h)
export TOKEN

cat >"$LUA/signal.lua" <<'LUA'
-- Unique signals: one new web visitor per request, with a trait and an event.
local counter = 0
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
request = function()
  counter = counter + 1
  local body = string.format(
    '{"channel":"web","identifiers":[{"type":"web_cookie","value":"load-%d-%d"}],"traits":{"n":%d},"event":{"type":"page_view","properties":{"path":"/p/%d"}}}',
    tid, counter, counter, counter)
  return wrk.format("POST", "/v1/signals",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. os.getenv("TOKEN")}, body)
end
LUA

cat >"$LUA/batch.lua" <<'LUA'
-- Batches of 100 unique signals.
local counter = 0
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
request = function()
  local items = {}
  for i = 1, 100 do
    counter = counter + 1
    items[i] = string.format(
      '{"channel":"store","identifiers":[{"type":"loyalty_card","value":"b-%d-%d"}],"event":{"type":"purchase"}}',
      tid, counter)
  end
  local body = '{"signals":[' .. table.concat(items, ",") .. ']}'
  return wrk.format("POST", "/v1/signals/batch",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. os.getenv("TOKEN")}, body)
end
LUA

cat >"$LUA/get.lua" <<'LUA'
-- GET with the bearer token.
request = function()
  return wrk.format("GET", nil, {["Authorization"] = "Bearer " .. os.getenv("TOKEN")})
end
LUA

echo "populating $POPULATION profiles with 20 interactions each" >&2
python3 - "$BASE" "$TOKEN" "$POPULATION" <<'PY'
import json, sys, urllib.request
base, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def post(signals):
    req = urllib.request.Request(base + "/v1/signals/batch", data=json.dumps({"signals": signals}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer " + token})
    with urllib.request.urlopen(req) as r:
        assert r.status == 200
batch = []
for i in range(n):
    for j in range(20):
        batch.append({"channel": ["ivr", "chat", "web", "store"][j % 4],
            "occurred_at": "2026-11-%02dT%02d:%02d:00Z" % (1 + j, j % 24, i % 60),
            "identifiers": [{"type": "phone", "value": "+3161%07d" % i}, {"type": "email", "value": "c%d@example.com" % i}],
            "traits": {"tier": ["gold", "silver"][i % 2], "preferred_language": "nl"},
            "answers": [{"key": "reason_for_contact", "value": "delivery"}] if j == 19 else [],
            "event": {"type": "touch", "summary": "interaction %d" % j, "properties": {"j": j}}})
        if len(batch) == 1000:
            post(batch); batch = []
if batch:
    post(batch)
PY
ID=$(curl -fsS -H "Authorization: Bearer $TOKEN" "$BASE/v1/profiles/lookup?type=phone&value=%2B31610000007" | python3 -c 'import json,sys; print(json.load(sys.stdin)["customer_id"])')

run() {
    local name=$1; shift
    printf '\n### %s\n' "$name"
    wrk --latency -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" "$@" \
        | grep -E 'Requests/sec|Latency  |50%|90%|99%|Non-2xx|Socket errors'
}

if [ "$REDIS" = 1 ]; then
    trap 'stop_server; kill "$REDIS_PID" 2>/dev/null; rm -rf "$REDIS_DIR"' EXIT
    echo "redis: private redis-server on port $REDIS_PORT" >&2
fi
run "context card by id (hot)" -s "$LUA/get.lua" "$BASE/v1/profiles/$ID/context"
run "context card by phone number" -s "$LUA/get.lua" "$BASE/v1/context?type=phone&value=0610000007"
run "profile read" -s "$LUA/get.lua" "$BASE/v1/profiles/$ID"
if [ "$SCENARIOS" = reads ]; then
    # One connection: the time one request takes, without queueing.
    CONNECTIONS=1
    run "context card by id, one connection" -s "$LUA/get.lua" "$BASE/v1/profiles/$ID/context"
    run "context card by phone, one connection" -s "$LUA/get.lua" "$BASE/v1/context?type=phone&value=0610000007"
    printf '\n### cache\n'
    curl -fsS "$BASE/metrics" | grep -E '^anamnesis_cache_(requests|fallbacks)_total' || echo "(no cache configured)"
    exit 0
fi
run "single signal ingest (durable, group commit)" -s "$LUA/signal.lua" "$BASE"
run "batch ingest (100 signals per request)" -s "$LUA/batch.lua" "$BASE"

printf '\n### store flushes (group commit)\n'
curl -fsS "$BASE/metrics" | grep -E '^anamnesis_(store_flush_seconds|group_commit_size)_(sum|count)'
