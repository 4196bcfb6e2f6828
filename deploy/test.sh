#!/usr/bin/env bash
# The whole test suite on a fresh machine: install libtorch (once per machine), Chromium for the
# browser test (if missing), a one-node Slurm cluster for the Slurm tests, then cargo test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./deploy/setup-libtorch.sh
# cmake and nasm build the libjpeg-turbo the worker links (src/worker/jpeg.rs).
./deploy/setup-libjpeg-turbo.sh
# The browser test drives Debian's headless Chromium through chromedriver (tests/api/browser.rs).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
    elif command -v sudo >/dev/null; then
        sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
    else
        echo "test.sh: install Debian's chromium and chromium-driver, or set TRAINQ_SKIP_BROWSER=1 to skip the browser test" >&2
    fi
fi
# The metrics test lints /metrics with promtool, from Debian's prometheus package (tests/api/sharing.rs).
# Only the tool is wanted: --no-install-recommends, and the server the package sets up is not started.
if ! command -v promtool >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
    elif command -v sudo >/dev/null; then
        sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
    else
        echo "test.sh: install Debian's prometheus package (for promtool); without it the metrics test fails under CI and is skipped elsewhere" >&2
    fi
    # Its package starts a Prometheus server where an init system lets it; the tests want none.
    if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
        systemctl disable --now prometheus >/dev/null 2>&1 || sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
fi
# The Slurm tests hand real jobs to a one-node Slurm cluster on this machine (tests/api/slurm.rs).
if [ "${TRAINQ_SKIP_SLURM:-}" != 1 ]; then
    if ! ./deploy/slurm/local-cluster.sh; then
        echo "test.sh: no Slurm cluster (the setup above says why); set TRAINQ_SKIP_SLURM=1 to skip the Slurm tests" >&2
        exit 1
    fi
fi
# Schemathesis (PyPI) checks every answer against /api/openapi.json (tests/api/schemathesis.rs).
SCHEMATHESIS_VENV="$HOME/.cache/trainq/schemathesis"
if [ ! -x "$SCHEMATHESIS_VENV/bin/st" ]; then
    python3 -m venv "$SCHEMATHESIS_VENV"
    "$SCHEMATHESIS_VENV/bin/pip" install -q 'schemathesis>=4.32,<5'
fi
# openssl makes the campus CA the STARTTLS/SMTPS notification test trusts (tests/api/notify.rs).
if ! command -v openssl >/dev/null && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl
fi
# aiosmtpd (PyPI) is the real SMTP server the notification tests send email to (tests/api/notify.rs).
AIOSMTPD_VENV="$HOME/.cache/trainq/aiosmtpd"
if [ ! -x "$AIOSMTPD_VENV/bin/python" ] || ! "$AIOSMTPD_VENV/bin/python" -c 'import aiosmtpd' 2>/dev/null; then
    python3 -m venv "$AIOSMTPD_VENV"
    "$AIOSMTPD_VENV/bin/pip" install -q 'aiosmtpd>=1.4,<2'
fi
cargo test --no-fail-fast "$@"
