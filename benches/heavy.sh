#!/usr/bin/env bash
# How long one full profile can hold the committer; see benches/heavy.py.
#   bash benches/heavy.sh                  # a batch of 1,000 to a full profile
#   BATCH=200 SINGLES=50 bash benches/heavy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q --bin anamnesis
exec python3 benches/heavy.py target/release/anamnesis
