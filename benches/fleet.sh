#!/usr/bin/env bash
# One, two and three instances over one PostgreSQL database against one on
# the embedded store; see benches/fleet.py for what it measures.
#
#   bash benches/fleet.sh
#   REDIS=1 bash benches/fleet.sh            # the fleet shares a Redis too
#   REDIS=cluster bash benches/fleet.sh      # ... a Redis Cluster of three primaries
#   POPULATION=2000 DURATION=3s INSTANCES="1 3" bash benches/fleet.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
    echo "installing wrk" >&2
    (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi
cargo build --release --locked -q --bin anamnesis
exec python3 benches/fleet.py target/release/anamnesis
