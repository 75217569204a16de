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

export ANAMNESIS__LIMITS__RATE_PER_SECOND=$RATE
export ANAMNESIS__LIMITS__BURST=$BURST
export ANAMNESIS__LIMITS__REJECT_DELAY_MS=$REJECT_DELAY_MS
# shellcheck source=benches/server.sh
source benches/server.sh
ADMIN=$("$BIN" token --scope admin --subject setup --ttl 1h)
DESK=$("$BIN" token --scope profiles:read --subject desk --ttl 1h)
FLOODER=$("$BIN" token --scope profiles:read --subject flooder --ttl 1h)

ID=$(curl -fsS -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d '{"channel":"ivr","identifiers":[{"type":"phone","value":"0612345678"}],"traits":{"tier":"gold"},"event":{"type":"call_started"}}' \
    "$BASE/v1/signals" | python3 -c 'import json,sys; print(json.load(sys.stdin)["customer_id"])')
URL="$BASE/v1/profiles/$ID/context"

LUA=$DATA/lua
mkdir "$LUA"
cat >"$LUA/flood.lua" <<'LUA'
request = function()
  return wrk.format("GET", nil, {["Authorization"] = "Bearer " .. os.getenv("TOKEN")})
end
LUA
cat >"$LUA/paced.lua" <<'LUA'
request = function()
  return wrk.format("GET", nil, {["Authorization"] = "Bearer " .. os.getenv("TOKEN")})
end
-- A pause before each request: the desk stays well within its budget.
local pause = tonumber(os.getenv("DESK_DELAY_MS"))
delay = function()
  return pause
end
LUA

# Four connections at half the subject's rate.
export DESK_DELAY_MS=$(( 8000 / RATE ))
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

    printf '### desk while the flooder hammers with 64 connections\n'
    TOKEN=$FLOODER wrk --latency -t1 -c64 -d"$(( ${DURATION%s} + 4 ))s" -s "$LUA/flood.lua" "$URL" >"$DATA/flood.txt" &
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
