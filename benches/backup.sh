#!/usr/bin/env bash
# A backup of the embedded store while the service writes; see benches/backup.py.
#   bash benches/backup.sh                  # 100,000 profiles
#   PROFILES=20000 bash benches/backup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q --bin anamnesis
exec python3 benches/backup.py target/release/anamnesis
