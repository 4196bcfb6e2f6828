#!/usr/bin/env bash
# The whole thing on a fresh machine: install libtorch (once per machine), build, generate the demo
# dataset, and serve on http://127.0.0.1:8080 (override with TRAINQ_LISTEN). Data goes to .data/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./deploy/setup-libtorch.sh
cargo build --release --bins
exec ./target/release/trainq serve --data-dir "${TRAINQ_DATA_DIR:-.data}" --demo "$@"
