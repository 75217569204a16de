#!/usr/bin/env bash
# Memory of an export of a very long timeline; see benches/export.py.
#   bash benches/export.sh                       # 200,000 interactions
#   INTERACTIONS=1000000 bash benches/export.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q --bin anamnesis
exec python3 benches/export.py target/release/anamnesis
