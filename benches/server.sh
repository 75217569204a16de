# Sourced by the load scripts: installs wrk when missing, builds the release
# binary and starts it on a fresh data directory and a free port. Settings
# come from ANAMNESIS__* variables the caller exported before sourcing.
# Sets BIN, DATA (removed at exit), BASE and SERVER; stops the server at exit.

if ! command -v wrk >/dev/null; then
    echo "installing wrk" >&2
    (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi

cargo build --release --locked -q
BIN=target/release/anamnesis
DATA=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export ANAMNESIS__AUTH__HS256_SECRET=${ANAMNESIS__AUTH__HS256_SECRET:-load-test-secret-load-test-secret-0123456789}
export ANAMNESIS__STORAGE__PATH=$DATA
export ANAMNESIS__SERVER__LISTEN=127.0.0.1:$PORT
export ANAMNESIS__TELEMETRY__LEVEL=${ANAMNESIS__TELEMETRY__LEVEL:-warn}
"$BIN" serve >"$DATA/server.log" 2>&1 &
SERVER=$!
stop_server() {
    if kill "$SERVER" 2>/dev/null; then
        for _ in $(seq 300); do
            kill -0 "$SERVER" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SERVER" 2>/dev/null; then
            echo "server did not stop within 30 s of SIGTERM; killing it" >&2
            kill -9 "$SERVER"
        fi
    fi
    rm -rf "$DATA"
}
trap stop_server EXIT
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
BASE=http://127.0.0.1:$PORT
