#!/usr/bin/env bash
# The whole thing on a fresh machine: install libtorch (once per machine), build, generate the demo
# dataset, and serve on http://127.0.0.1:8080 (override with TRAINQ_LISTEN). Data goes to .data/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./deploy/setup-libtorch.sh
./deploy/setup-libjpeg-turbo.sh
cargo build --release --bins
data="${TRAINQ_DATA_DIR:-.data}"
mkdir -p "$data"
# One demo user (an admin), created once; only its hash is in the database, the token is kept in
# $data/demo-token (mode 0600) so this script can show it again.
if [ ! -s "$data/demo-token" ]; then
  (umask 077 && ./target/release/trainq user add demo --admin --data-dir "$data" > "$data/demo-token")
fi
echo "demo user's token (paste it into the dashboard, or: export TOKEN=\$(cat $data/demo-token)): $(cat "$data/demo-token")" >&2
exec ./target/release/trainq serve --data-dir "$data" --demo "$@"
