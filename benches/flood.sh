#!/usr/bin/env bash
# Does one client's flood hurt the others? Measures the context-card latency
# of a well-behaved client ("desk": 4 connections, paced to half its rate
# limit in all) alone, and again while
# another client ("flooder", same scopes, its own subject) hammers the same
# endpoint with 64 connections and no pause, far above its rate limit.
#
#   bash benches/flood.sh                 # 3 rounds of 20 s per phase
#   DURATION=20s RATE=1000 bash benches/flood.sh
#   REJECT_DELAY_MS=0 bash benches/flood.sh   # 429s at once: what the pause buys
#   MODE=batch bash benches/flood.sh      # writes: single signals vs batch floods
#
# MODE=batch: the well-behaved client ("writer") posts single signals (4
# paced connections, its own subject); the flooder posts 1,000-signal
# batches on 4 connections without pause. The request limit counts a batch
# as one request: limits.signals_per_second (SIGNALS, default 1000) is what
# holds the flooder back. SIGNALS=0 shows the flood without it.
#
# Prints both runs of the desk, the flooder's own figures (mostly 429s) and
# the ratio of the desk's p99 under flood to its quiet p99. Server, both load
# generators and this script share the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-20s}
RATE=${RATE:-1000}
BURST=${BURST:-100}
REJECT_DELAY_MS=${REJECT_DELAY_MS:-250}
MODE=${MODE:-reads}
SIGNALS=${SIGNALS:-1000}

export ANAMNESIS__LIMITS__RATE_PER_SECOND=$RATE
export ANAMNESIS__LIMITS__BURST=$BURST
export ANAMNESIS__LIMITS__REJECT_DELAY_MS=$REJECT_DELAY_MS
export ANAMNESIS__LIMITS__SIGNALS_PER_SECOND=$SIGNALS
# shellcheck source=benches/server.sh
source benches/server.sh
ADMIN=$("$BIN" token --scope admin --subject setup --ttl 1h)
if [ "$MODE" = batch ]; then
    DESK=$("$BIN" token --scope signals:write --subject writer --ttl 1h)
    FLOODER=$("$BIN" token --scope signals:write --subject flooder --ttl 1h)
else
    DESK=$("$BIN" token --scope profiles:read --subject desk --ttl 1h)
    FLOODER=$("$BIN" token --scope profiles:read --subject flooder --ttl 1h)
fi

ID=$(curl -fsS -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d '{"channel":"ivr","identifiers":[{"type":"phone","value":"0612345678"}],"traits":{"tier":"gold"},"event":{"type":"call_started"}}' \
    "$BASE/v1/signals" | python3 -c 'import json,sys; print(json.load(sys.stdin)["customer_id"])')
URL="$BASE/v1/profiles/$ID/context"
FLOOD_URL=$URL

LUA=$DATA/lua
mkdir "$LUA"
if [ "$MODE" = batch ]; then
    URL="$BASE/v1/signals"
    FLOOD_URL="$BASE/v1/signals/batch"
    # 1,000 signals about 1,000 customers of the flooder's own.
    python3 - "$LUA/batch.json" <<'PY'
import json, sys
signals = [{"channel": "web", "identifiers": [{"type": "phone", "value": "+3162%07d" % i}],
            "traits": {"visits": i}, "event": {"type": "page_viewed"}} for i in range(1000)]
json.dump({"signals": signals}, open(sys.argv[1], "w"))
PY
    cat >"$LUA/flood.lua" <<LUA
local f = io.open("$LUA/batch.json"); local body = f:read("*a"); f:close()
request = function()
  return wrk.format("POST", nil, {["Authorization"] = "Bearer " .. os.getenv("TOKEN"),
    ["Content-Type"] = "application/json"}, body)
end
LUA
    cat >"$LUA/paced.lua" <<'LUA'
local body = '{"channel":"ivr","identifiers":[{"type":"phone","value":"0612345678"}],"event":{"type":"call_started"}}'
request = function()
  return wrk.format("POST", nil, {["Authorization"] = "Bearer " .. os.getenv("TOKEN"),
    ["Content-Type"] = "application/json"}, body)
end
LUA
else
    cat >"$LUA/flood.lua" <<'LUA'
request = function()
  return wrk.format("GET", nil, {["Authorization"] = "Bearer " .. os.getenv("TOKEN")})
end
LUA
    cp "$LUA/flood.lua" "$LUA/paced.lua"
fi
cat >>"$LUA/paced.lua" <<'LUA'
-- A pause before each request: the paced client stays well within its budget.
local pause = tonumber(os.getenv("DESK_DELAY_MS"))
delay = function()
  return pause
end
LUA

# Four connections at half the subject's rate (writes: 100 a second).
if [ "$MODE" = batch ]; then
    export DESK_DELAY_MS=40
    FLOOD_CONNECTIONS=4
else
    export DESK_DELAY_MS=$(( 8000 / RATE ))
    FLOOD_CONNECTIONS=64
fi
desk() {
    TOKEN=$DESK wrk --latency -t1 -c4 -d"$DURATION" -s "$LUA/paced.lua" "$URL"
}
p99_ms() {
    # wrk prints "99%  1.23ms" (or us / s); normalise to milliseconds.
    awk '$1 == "99%" {
        v = $2; unit = v; gsub(/[0-9.]/, "", unit); gsub(/[a-z]/, "", v);
        if (unit == "us") v = v / 1000; else if (unit == "s") v = v * 1000;
        printf "%.3f", v }'
}

# Quiet and flooded phases alternate ROUNDS times: on a shared 2-core machine
# one 10-second p99 moves by a factor of two from run to run by itself.
ROUNDS=${ROUNDS:-3}
RATIOS=()
for round in $(seq "$ROUNDS"); do
    printf '\n## round %s of %s\n' "$round" "$ROUNDS"
    printf '### desk alone (4 paced connections; limit %s/s per subject, burst %s, 429 after %s ms)\n' \
        "$RATE" "$BURST" "$REJECT_DELAY_MS"
    QUIET=$(desk)
    echo "$QUIET" | grep -E 'Requests/sec|50%|99%|Non-2xx'

    printf '### desk while the flooder hammers with %s connections (%s)\n' "$FLOOD_CONNECTIONS" "$MODE"
    TOKEN=$FLOODER wrk --latency -t1 -c"$FLOOD_CONNECTIONS" -d"$(( ${DURATION%s} + 4 ))s" -s "$LUA/flood.lua" "$FLOOD_URL" >"$DATA/flood.txt" &
    FLOOD=$!
    sleep 2
    LOUD=$(desk)
    wait "$FLOOD"
    echo "$LOUD" | grep -E 'Requests/sec|50%|99%|Non-2xx'
    printf '### the flooder itself (mostly 429 rate_limited)\n'
    grep -E 'Requests/sec|Non-2xx' "$DATA/flood.txt"

    Q=$(echo "$QUIET" | p99_ms)
    L=$(echo "$LOUD" | p99_ms)
    RATIO=$(python3 -c "print(round($L / $Q, 2))")
    RATIOS+=("$RATIO")
    printf 'desk p99: quiet %s ms, under flood %s ms, ratio %s\n' "$Q" "$L" "$RATIO"
done
printf '\nratios: %s; median %s\n' "${RATIOS[*]}" \
    "$(printf '%s\n' "${RATIOS[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
