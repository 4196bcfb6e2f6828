#!/usr/bin/env bash
# The whole test suite on a fresh machine: install libtorch (once per machine), then cargo test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./deploy/setup-libtorch.sh
cargo test "$@"
