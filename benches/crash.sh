#!/usr/bin/env bash
# Crash safety: SIGKILL the release binary under a mixed write load, ROUNDS
# times (default 50), restarting it on the same data directory, and check
# that every acknowledged write survived and each writer's writes form a
# prefix without holes. See benches/crash.py for what is checked.
#
#   bash benches/crash.sh
#   ROUNDS=200 SEED=7 bash benches/crash.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q
exec python3 benches/crash.py target/release/anamnesis
