#!/usr/bin/env bash
# A private, highly available PostgreSQL for the tests: a pg_auto_failover
# monitor and two data nodes (a primary and a synchronous standby) on
# loopback, never the machine's own server.
#
#   bash tests/tools/pg_ha.sh start DIR          # prints the URL to connect to
#   bash tests/tools/pg_ha.sh primary DIR        # "node_1 PORT": the primary now
#   bash tests/tools/pg_ha.sh kill-primary DIR   # "node_1 PORT": the node killed
#   bash tests/tools/pg_ha.sh wait-sync DIR [TIMEOUT_S]
#   bash tests/tools/pg_ha.sh stop DIR
#
# start creates, under DIR, the monitor and node_1 and node_2, each on a free
# port on 127.0.0.1 with its socket in DIR/sock; runs their keepers
# (`pg_autoctl run`) in the background, logging to DIR/logs; waits until the
# monitor reports a primary and a secondary in sync; and prints the multi-host
# URL the service connects with:
#
#   postgres://anamnesis@127.0.0.1:P1,127.0.0.1:P2/postgres?target_session_attrs=read-write
#
# (tokio-postgres 0.7 and libpq both read that form: they try the hosts in
# order and keep the first that accepts writes.) The user `anamnesis` may log
# in without a password from loopback and create schemas in `postgres`.
#
# Commits are synchronous: each node joins with replication-quorum true, so
# the primary runs with synchronous_standby_names = 'ANY 1 (<the standby>)'
# and a commit is acknowledged once the standby has flushed it. The formation
# keeps number_sync_standbys at 0, the only value two data nodes allow (the
# monitor wants number_sync_standbys + 1 standbys): with the standby gone the
# primary drops to wait_primary and takes writes alone (sync replication off)
# until a standby catches up again. That is the availability pg_auto_failover
# chooses for two nodes; `wait-sync` is what a test calls to be back at
# "every acknowledged commit is on both nodes". A standby that is alive but
# stalled (its WAL receiver stopped) is not unhealthy: commits wait for it
# for as long as it stalls, and statement_timeout does not end that wait
# (the server disarms it before committing).
#
# kill-primary SIGKILLs every process of the primary at once (its keeper's
# process group, which holds the postmaster, and the postmaster's children,
# which each run in a session of their own), appends "EPOCH NODE PORT" to
# DIR/logs/kills, waits until the monitor has promoted the other node, then
# starts the killed node's keeper again, as a supervisor would, and it
# rejoins as a secondary (pg_rewind, then streaming). Restarting
# it before the promotion (PG_HA_RESTART=now) does not fail over at all: the
# keeper finds its Postgres dead and restarts it as the primary.
#
# The packages (postgresql-15-auto-failover, pg-auto-failover-cli; Debian's
# version, PG_AUTO_FAILOVER_VERSION, default 2.0-2+b1 as in bookworm) are
# installed from apt when missing. As root the servers and keepers run as the
# `postgres` user the PostgreSQL package creates, DIR is handed to it; as
# anyone else they run as that user and sudo is used only for apt. Like
# tests/tools/postgres.sh it trades crash safety for speed (fsync off) unless
# PG_DURABLE=1: losing a process (this tool's failure) does not lose what the
# kernel already has, losing the machine would.
#
# The failover timeouts are shortened (PG_HA_TUNED=0 keeps pg_auto_failover's
# defaults); see `monitor_settings` and `keeper_settings` below.
set -euo pipefail

cmd=${1:?start, primary, kill-primary, wait-sync or stop}
dir=${2:?data directory}
here=$(cd "$(dirname "$0")" && pwd)

# pg_autoctl keys its configuration by the absolute path of the data
# directory, so every path handed to it is absolute.
dir=$(realpath -m "$dir")
logs=$dir/logs
run=$dir/run
sock=$dir/sock
pgaf_version=${PG_AUTO_FAILOVER_VERSION:-2.0-2+b1}

# The deadline of start, kill-primary and wait-sync, in seconds.
timeout_s=${PG_HA_TIMEOUT:-120}

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

# pg_autoctl keeps its configuration, state and pid files under the XDG
# directories (~/.config, ~/.local/share, /tmp by default): here they live in
# DIR, so that nothing outside it is written and two set-ups never meet.
pgaf_env() {
    pgaf_env=(env
        XDG_CONFIG_HOME="$dir/xdg/config"
        XDG_DATA_HOME="$dir/xdg/share"
        XDG_RUNTIME_DIR="$dir/xdg/run"
        PGHOST="$sock"
        PG_CONFIG="$bin/pg_config"
        PATH="$bin:$PATH")
}

pgaf() {
    pgaf_env
    as_owner "${pgaf_env[@]}" pg_autoctl "$@"
}

# psql as the owner on a node's socket: the superuser is the owner's name.
psql_at() {
    local port=$1
    shift
    as_owner "$bin/psql" -h "$sock" -p "$port" -d postgres -X -q -A -t -v ON_ERROR_STOP=1 "$@"
}

install_packages() {
    local major
    major=$(basename "$(dirname "$bin")")
    if [ -x "$bin/initdb" ] && [ -f "/usr/lib/postgresql/$major/lib/pgautofailover.so" ] &&
        command -v pg_autoctl >/dev/null; then
        return
    fi
    echo "installing pg_auto_failover $pgaf_version (for the failover tests)" >&2
    local sudo_cmd=""
    if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq
    if [ ! -x "$bin/initdb" ]; then
        DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq postgresql >/dev/null
        bin=$(bin_dir)
        major=$(basename "$(dirname "$bin")")
    fi
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq \
        "postgresql-$major-auto-failover=$pgaf_version" "pg-auto-failover-cli=$pgaf_version" >/dev/null
}

# The failover timing. A killed primary refuses connections at once, so what
# takes the time is waiting: for the monitor to call the primary unhealthy,
# then for the dead primary to "drain". With pg_auto_failover's defaults
# (PG_HA_TUNED=0) writes stopped for 50 s, with these for 5 s (measured with
# benches/failover_drill.sh).
#
# The monitor's settings, in its postgresql.auto.conf.
monitor_settings() {
    [ "${PG_HA_TUNED:-1}" = 1 ] || return 0
    cat <<'EOF'
# Set by tests/tools/pg_ha.sh (PG_HA_TUNED=0 leaves the defaults).
# Default 20 s between health checks: a dead node is seen up to 20 s late.
pgautofailover.health_check_period = 1000
# Default 5 s to connect: loopback answers in well under a millisecond.
pgautofailover.health_check_timeout = 1000
# Defaults 2 retries, 2 s apart: one retry 200 ms later tells a refused
# connection from a blip.
pgautofailover.health_check_max_retries = 1
pgautofailover.health_check_retry_delay = 200
# Default 20 s: a node whose health check fails is unhealthy only once its
# keeper has not reported for this long either. Keepers report every second,
# so 2 s is one missed report of slack; a keeper merely slow (a loaded
# machine) is not enough, its Postgres must refuse connections too.
pgautofailover.node_considered_unhealthy_timeout = 2000
# Default 30 s: how long a primary that stopped answering is given to notice
# that it lost and stop itself (draining, demote_timeout) before the standby
# is promoted; meanwhile the standby is read-only. It must stay above the
# keepers' timeout.network_partition_timeout (1 s below, plus their 1 s
# loop): a primary cut off from the monitor and its standby stops itself
# after that long, so there is never a second primary taking writes.
pgautofailover.primary_demote_timeout = 3000
# Default 10 s: no failover this soon after the monitor starts.
pgautofailover.startup_grace_period = 2000
EOF
}

# The keepers' settings (`pg_autoctl config set`).
keeper_settings() {
    [ "${PG_HA_TUNED:-1}" = 1 ] || return 0
    # Default 20 s: a primary that has reached neither the monitor nor its
    # standby for this long stops itself (see primary_demote_timeout).
    echo timeout.network_partition_timeout 1
    # Default 30 s: how long a standby being promoted waits to catch up with
    # a primary it can no longer reach. With synchronous replication it
    # already has every acknowledged commit.
    echo timeout.prepare_promotion_catchup 2
    # Default 5 s: how long it waits for its WAL receiver to stop.
    echo timeout.prepare_promotion_walreceiver 1
    # Defaults 20 s and 3 tries: how long a keeper tries to restart its own
    # Postgres before it reports it down. No effect on a killed node, whose
    # keeper dies with it; a Postgres that died alone is restarted at once.
    echo timeout.postgresql_restart_failure_timeout 5
    echo timeout.postgresql_restart_failure_max_retries 3
}

# Settings every server shares, in postgresql.auto.conf (read after the
# files pg_autoctl writes, and copied to the standby by pg_basebackup):
# pg_autoctl sizes shared_buffers for the whole machine (6 GB here) and
# puts sockets in /var/run/postgresql.
common_settings() {
    echo "unix_socket_directories = '$sock'"
    echo "shared_buffers = '64MB'"
    echo "max_connections = 200"
    # Not full_page_writes = off: pg_rewind refuses a source server without
    # them, and a killed primary then rejoins by a whole base backup.
    if [ "${PG_DURABLE:-0}" != 1 ]; then echo "fsync = off"; fi
}

init_cluster() {
    local pgdata=$1 sync=--no-sync
    if [ "${PG_DURABLE:-0}" = 1 ]; then sync=""; fi
    as_owner "$bin/initdb" -D "$pgdata" -A trust -E UTF8 --no-locale $sync >/dev/null
    common_settings | as_owner tee -a "$pgdata/postgresql.auto.conf" >/dev/null
}

port_of() {
    awk -v n="$1" '$1 == n { print $2 }' "$dir/ports"
}

# Starts the keeper of a node (monitor, node_1, node_2) in a session and
# process group of its own, whose id (the keeper's pid) is kept in
# run/NODE.pgid. The postmaster is in that group; its children are not (each
# makes a session of its own).
start_keeper() {
    local node=$1
    # setsid runs in the background job's process, which leads no group, so
    # it execs without forking and $! is the new group's id.
    setsid bash "$here/pg_ha.sh" keeper "$dir" "$node" </dev/null >>"$logs/$node.log" 2>&1 &
    echo $! >"$run/$node.pgid"
}

postmaster_pid() {
    local pgdata=$dir/$1 pid
    [ -f "$pgdata/postmaster.pid" ] || return 1
    pid=$(head -1 "$pgdata/postmaster.pid" 2>/dev/null)
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] &&
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "-D $pgdata " && echo "$pid"
}

# Every process of a node: its keeper's group, its postmaster, and the
# postmaster's children (backends, WAL sender or receiver, checkpointer...).
node_pids() {
    local node=$1 pgid pm
    pgid=$(cat "$run/$node.pgid" 2>/dev/null || true)
    if [ -n "$pgid" ]; then pgrep -g "$pgid" || true; fi
    if pm=$(postmaster_pid "$node"); then
        echo "$pm"
        pgrep -P "$pm" || true
    fi
}

# SIGKILLs every process of a node at once, as if its machine had died, and
# waits until none is left.
kill_node() {
    local node=$1 pids pid
    pids=$(node_pids "$node" | sort -u | grep -vx "$$" || true)
    [ -n "$pids" ] || return 0
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    for pid in $pids; do
        while kill -0 "$pid" 2>/dev/null; do
            if [ $SECONDS -ge $deadline ]; then
                echo "pg_ha: $node: pid $pid outlived SIGKILL" >&2
                return 1
            fi
            sleep 0.05
        done
    done
}

# The monitor's view, one line per node: name port reported assigned health
# (1 healthy, 0 not, -1 unknown yet). It is what `pg_autoctl show state`
# prints, read with one psql: the waits poll it, and pg_autoctl with its
# JSON costs five times as much CPU.
state() {
    psql_at "$(port_of monitor)" -d pg_auto_failover -F ' ' -c "
        select nodename, nodeport, current_group_state, assigned_group_state, health
          from pgautofailover.current_state('default') order by nodename" 2>/dev/null
}

# Prints "NAME PORT" of the node that is primary and has settled there.
current_primary() {
    state | awk '$3 == "primary" && $4 == "primary" { print $1, $2; found = 1 } END { exit !found }'
}

# A primary and a secondary, both settled, and the primary's
# pg_stat_replication showing the standby synchronous and streaming.
in_sync() {
    local s primary_port
    s=$(state) || return 1
    echo "$s" | awk '$3 == "secondary" && $4 == "secondary" && $5 == 1 { ok = 1 } END { exit !ok }' || return 1
    primary_port=$(echo "$s" | awk '$3 == "primary" && $4 == "primary" && $5 == 1 { print $2 }')
    [ -n "$primary_port" ] || return 1
    [ "$(psql_at "$primary_port" -c "select count(*) from pg_stat_replication
        where state = 'streaming' and sync_state in ('sync', 'quorum')" 2>/dev/null)" = 1 ]
}

# wait_for LIMIT_S WHAT CHECK...: polls CHECK every 200 ms until it
# succeeds, or fails after LIMIT_S seconds saying that WHAT did not happen.
wait_for() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        if [ $SECONDS -ge $deadline ]; then
            echo "pg_ha: no $what within $limit s; state:" >&2
            state >&2 || true
            return 1
        fi
        sleep 0.2
    done
}

monitor_ready() {
    psql_at "$(port_of monitor)" -d pg_auto_failover -c "select 1" >/dev/null 2>&1
}

# The node is the primary and its Postgres takes writes (the monitor may
# report "single" before the keeper has started Postgres again after create).
node_primary_alone() {
    state | awk -v n="$1" '$1 == n && $3 ~ /^(single|wait_primary|primary)$/ { ok = 1 } END { exit !ok }' &&
        [ "$(psql_at "$(port_of "$1")" -c "select pg_is_in_recovery()" 2>/dev/null)" = f ]
}

# The other node has been promoted: it takes writes again.
promoted_other_than() {
    state | awk -v n="$1" '$1 != n && $3 ~ /^(wait_primary|primary)$/ && $4 ~ /^(wait_primary|primary)$/ { ok = 1 } END { exit !ok }'
}

stop_all() {
    local node
    # --immediate: the keeper stops its Postgres in immediate mode and exits.
    for node in node_2 node_1 monitor; do
        if [ -n "$(node_pids "$node")" ]; then
            pgaf stop --pgdata "$dir/$node" --immediate >/dev/null 2>&1 || true
        fi
    done
    local deadline=$((SECONDS + 20))
    for node in node_2 node_1 monitor; do
        while [ -n "$(node_pids "$node")" ] && [ $SECONDS -lt $deadline ]; do
            sleep 0.1
        done
        # Whatever is left (a keeper that did not stop, a postmaster that
        # outlived its keeper) is killed.
        kill_node "$node" || true
        rm -f "$run/$node.pgid"
    done
}

url() {
    echo "postgres://anamnesis@127.0.0.1:$(port_of node_1),127.0.0.1:$(port_of node_2)/postgres?target_session_attrs=read-write"
}

case "$cmd" in
start)
    bin=$(bin_dir)
    install_packages
    bin=$(bin_dir)
    if [ -d "$run" ] && ls "$run"/*.pgid >/dev/null 2>&1; then
        echo "pg_ha: $dir is already running; stop it first" >&2
        exit 1
    fi
    started=$SECONDS
    # pg_autoctl removes a node's .init file once the node is created.
    node_2_state=$dir/xdg/share/pg_autoctl$dir/node_2/pg_autoctl
    if [ -f "$node_2_state.state" ] && [ ! -f "$node_2_state.init" ]; then
        # Started before and stopped: the same set-up again, on its ports.
        trap 'rc=$?; if [ $rc -ne 0 ]; then stop_all; fi' EXIT
        for node in monitor node_1 node_2; do start_keeper "$node"; done
        wait_for "$timeout_s" "primary and secondary in sync" in_sync
        echo "pg_ha: started again in $((SECONDS - started)) s" >>"$logs/started"
        url
        exit 0
    fi
    if [ -e "$dir/monitor" ]; then
        echo "pg_ha: $dir holds a set-up that never finished starting; remove it" >&2
        exit 1
    fi
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then chown postgres "$dir"; fi
    chmod 700 "$dir"
    if ! as_owner test -w "$dir"; then
        echo "pg_ha: $(as_owner id -un) cannot reach $dir:" \
            "every directory above it must be searchable (mktemp -d makes 0700 ones)" >&2
        exit 1
    fi
    mkdir -p "$logs" "$run"
    as_owner mkdir -p "$sock" "$dir/xdg/config" "$dir/xdg/share" "$dir/xdg/run"
    as_owner chmod 700 "$dir/xdg/run"
    # Stop whatever was started when start fails half-way.
    trap 'rc=$?; if [ $rc -ne 0 ]; then stop_all; fi' EXIT

    python3 - "$here/../../benches" >"$dir/ports" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
from ports import free_port
ports = []
while len(ports) < 3:
    p = free_port()
    if p not in ports:
        ports.append(p)
for name, port in zip(["monitor", "node_1", "node_2"], ports):
    print(name, port)
EOF

    monitor_port=$(port_of monitor)
    # node_1 is created from a cluster initialised here, so that it starts
    # with the shared settings; node_2 is a base backup of it and inherits
    # them. Its initdb runs while the monitor is set up.
    init_cluster "$dir/node_1" &
    init_node_1=$!
    init_cluster "$dir/monitor"
    monitor_settings | as_owner tee -a "$dir/monitor/postgresql.auto.conf" >/dev/null
    pgaf create monitor --pgdata "$dir/monitor" --pgport "$monitor_port" \
        --hostname 127.0.0.1 --listen 127.0.0.1 --auth trust --no-ssl \
        --pgctl "$bin/pg_ctl" >"$logs/create-monitor.log" 2>&1 ||
        { tail -20 "$logs/create-monitor.log" >&2; exit 1; }
    start_keeper monitor
    wait_for "$timeout_s" "monitor" monitor_ready
    monitor_uri="postgres://autoctl_node@127.0.0.1:$monitor_port/pg_auto_failover?sslmode=disable"

    create_node() {
        local node=$1
        pgaf create postgres --pgdata "$dir/$node" --pgport "$(port_of "$node")" \
            --hostname 127.0.0.1 --listen 127.0.0.1 --name "$node" --dbname postgres \
            --monitor "$monitor_uri" --auth trust --no-ssl --pgctl "$bin/pg_ctl" \
            --replication-quorum true --candidate-priority 50 \
            >"$logs/create-$node.log" 2>&1 ||
            { tail -20 "$logs/create-$node.log" >&2; return 1; }
        local key value
        keeper_settings | while read -r key value; do
            pgaf config set --pgdata "$dir/$node" "$key" "$value" >/dev/null
        done
        start_keeper "$node"
    }

    wait "$init_node_1"
    create_node node_1
    wait_for "$timeout_s" "primary on node_1" node_primary_alone node_1
    psql_at "$(port_of node_1)" -c "create role anamnesis login;
        grant create on database postgres to anamnesis;"
    create_node node_2
    wait_for "$timeout_s" "primary and secondary in sync" in_sync
    echo "pg_ha: started in $((SECONDS - started)) s" >>"$logs/started"
    url
    ;;
primary)
    bin=$(bin_dir)
    current_primary
    ;;
kill-primary)
    bin=$(bin_dir)
    read -r node port < <(current_primary) || { echo "pg_ha: no primary" >&2; exit 1; }
    # When, for whoever measures the outage: "EPOCH_SECONDS NODE PORT".
    echo "$(date +%s.%N) $node $port" >>"$logs/kills"
    kill_node "$node"
    promoted=0
    if [ "${PG_HA_RESTART:-after-promotion}" = now ]; then
        promoted=1
    elif wait_for "$timeout_s" "promotion of the standby" promoted_other_than "$node"; then
        promoted=1
    fi
    start_keeper "$node"
    echo "$node $port"
    [ $promoted = 1 ]
    ;;
wait-sync)
    bin=$(bin_dir)
    wait_for "${3:-$timeout_s}" "primary and secondary in sync" in_sync
    ;;
stop)
    bin=$(bin_dir)
    stop_all
    ;;
keeper)
    # Internal: what start_keeper runs in the node's own process group.
    bin=$(bin_dir)
    pgaf_env
    if [ "$(id -u)" -eq 0 ]; then
        exec runuser -u postgres -- "${pgaf_env[@]}" pg_autoctl run --pgdata "$dir/${3:?node}"
    fi
    exec "${pgaf_env[@]}" pg_autoctl run --pgdata "$dir/${3:?node}"
    ;;
*)
    echo "usage: $0 start|primary|kill-primary|wait-sync|stop DIR" >&2
    exit 2
    ;;
esac
