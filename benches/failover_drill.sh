#!/usr/bin/env bash
# Failover drill, PostgreSQL alone (psql, no anamnesis): how long writes stop
# when the primary dies, and whether an acknowledged write is ever lost.
#
#   bash benches/failover_drill.sh
#   N=3 bash benches/failover_drill.sh
#   PG_HA_TUNED=0 N=1 PG_HA_TIMEOUT=300 bash benches/failover_drill.sh   # pg_auto_failover's defaults
#
# Starts tests/tools/pg_ha.sh (a monitor, a primary and a synchronous
# standby), runs a writer that INSERTs one row per attempt through the
# multi-host URL (a fresh psql each time, so each attempt finds the primary
# again, about every INTERVAL_MS, default 50), and N times (default 10)
# SIGKILLs the primary (`pg_ha.sh kill-primary`) and waits for the pair to be
# back in sync. It prints, per failover, the write outage (the gap between
# the last acknowledged insert before the kill and the first one after) and
# the total, then checks that every acknowledged insert is there.
#
# An attempt is acknowledged when psql exits 0. Each attempt runs under
# `timeout`, which kills psql (no cancel request): an attempt stuck waiting
# for a standby is abandoned unacknowledged, never turned into a commit that
# only the primary has (which is what cancelling a synchronous-replication
# wait does: the server warns and reports the commit).
set -euo pipefail
cd "$(dirname "$0")/.."

n=${N:-10}
interval_ms=${INTERVAL_MS:-50}
attempt_timeout_s=${ATTEMPT_TIMEOUT_S:-5}

work=$(mktemp -d)
# Its own directory: as root the servers run as `postgres`, which cannot
# enter the 0700 one above.
ha_dir=$(mktemp -d)
writer=""
cleanup() {
    # The writer stops after its attempt under way (at most
    # ATTEMPT_TIMEOUT_S), leaving no psql behind.
    if [ -n "$writer" ]; then
        touch "$work/stop"
        wait "$writer" 2>/dev/null || true
    fi
    bash tests/tools/pg_ha.sh stop "$ha_dir" || true
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept $work and $ha_dir" >&2
    else
        rm -rf "$work" "$ha_dir"
    fi
}
trap cleanup EXIT

now() { date +%s.%N; }

t0=$(now)
url=$(bash tests/tools/pg_ha.sh start "$ha_dir")
t1=$(now)
echo "start: $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s ($url)"

export PGCONNECT_TIMEOUT=2
psql "$url" -X -q -v ON_ERROR_STOP=1 \
    -c "create schema drill" \
    -c "create table drill.writes (id bigint primary key, at timestamptz not null default now())"

# The writer: attempt I, then "I EPOCH" in acked once psql said yes.
: >"$work/acked"
pause=$(awk -v ms="$interval_ms" 'BEGIN { print ms / 1000 }')
(
    i=0
    while [ ! -e "$work/stop" ]; do
        i=$((i + 1))
        if timeout -s KILL "$attempt_timeout_s" psql "$url" -X -q -v ON_ERROR_STOP=1 \
            -c "insert into drill.writes (id) values ($i)" >/dev/null 2>>"$work/writer.err"; then
            echo "$i $(now)" >>"$work/acked"
        fi
        sleep "$pause"
    done
) &
writer=$!

# Waits until the writer has N more acknowledged writes than now.
acked_count() { wc -l <"$work/acked"; }
wait_acks() {
    local want=$(($(acked_count) + $1)) deadline=$((SECONDS + 60))
    while [ "$(acked_count)" -lt "$want" ]; do
        if [ $SECONDS -ge $deadline ]; then
            echo "the writer made no progress in 60 s" >&2
            return 1
        fi
        sleep 0.05
    done
}

wait_acks 20
for cycle in $(seq "$n"); do
    killed=$(bash tests/tools/pg_ha.sh kill-primary "$ha_dir")
    bash tests/tools/pg_ha.sh wait-sync "$ha_dir"
    synced=$(now)
    echo "$cycle $killed $synced" >>"$work/cycles"
    # Writes resume before the pair is back in sync; wait for a few more so
    # that the next kill does not land inside this outage.
    wait_acks 20
done
touch "$work/stop"
wait "$writer" || true
writer=""

# What the database has, read from the primary through the same URL.
psql "$url" -X -q -A -t -v ON_ERROR_STOP=1 -c "select id from drill.writes order by id" >"$work/present"

python3 - "$work" "$ha_dir/logs/kills" <<'EOF'
import sys

work, kills_file = sys.argv[1], sys.argv[2]
acked = []
with open(f"{work}/acked") as f:
    for line in f:
        i, t = line.split()
        acked.append((float(t), int(i)))
acked.sort()
times = [t for t, _ in acked]
kills = [(float(t), node) for t, node, _port in (l.split() for l in open(kills_file))]
cycles = [l.split() for l in open(f"{work}/cycles")]

total = 0.0
print("failover  killed  outage_s  kill_to_writes_again_s  kill_to_sync_s")
next_kills = [t for t, _ in kills[1:]] + [float("inf")]
for (kill_t, node), cycle, next_kill in zip(kills, cycles, next_kills):
    synced = float(cycle[-1])
    # The acknowledged writes from the last one before this kill to the next
    # kill: the outage is the longest silence among them (an attempt already
    # under way may still be acknowledged just after the kill's timestamp).
    window = [t for t in times if kill_t < t < next_kill]
    before = [t for t in times if t <= kill_t]
    if not before or not window:
        print(f"{cycle[0]:>8}  {node}  no write on one side of the kill")
        continue
    window = [before[-1]] + window
    gap, end = max((b - a, b) for a, b in zip(window, window[1:]))
    total += gap
    print(f"{cycle[0]:>8}  {node}  {gap:8.2f}  {end - kill_t:22.2f}  {synced - kill_t:14.2f}")
print(f"total outage: {total:.2f} s over {len(kills)} failovers"
      f" (mean {total / max(len(kills), 1):.2f} s)")

present = {int(l) for l in open(f"{work}/present") if l.strip()}
acked_ids = {i for _, i in acked}
lost = sorted(acked_ids - present)
extra = len(present - acked_ids)
print(f"writes: {len(acked_ids)} acknowledged, {len(present)} present"
      f" ({extra} committed without an acknowledgement: attempts cut off by a kill)")
warnings = [l.strip() for l in open(f"{work}/writer.err") if "WARNING" in l] \
    if __import__("os").path.exists(f"{work}/writer.err") else []
if warnings:
    print(f"{len(warnings)} server warnings, first: {warnings[0]}")
if lost:
    print(f"LOST {len(lost)} acknowledged writes: {lost[:20]}")
    sys.exit(1)
print("every acknowledged write is present")
EOF
