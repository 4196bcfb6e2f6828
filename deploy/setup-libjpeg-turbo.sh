#!/usr/bin/env bash
# Installs what the worker's build needs to compile libjpeg-turbo, which decodes every JPEG a job
# reads (src/worker/jpeg.rs): cmake and nasm, from Debian. The `turbojpeg-sys` crate builds the
# libjpeg-turbo 3.1 bundled with it and links it statically into `trainq-worker` alone; nasm
# assembles its SIMD code (the crate's `require-simd` refuses a build without it, which would be
# several times slower). Debian's libturbojpeg0-dev is not used: bookworm's is libjpeg-turbo 2.1,
# without the TurboJPEG 3 API the crate binds, and a static, pinned copy keeps the pixels from
# moving with the distribution.
#
# Idempotent: a machine that has both tools is left alone.
set -euo pipefail

if command -v cmake >/dev/null && command -v nasm >/dev/null; then
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake nasm
elif command -v sudo >/dev/null; then
    sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake nasm
else
    echo "setup-libjpeg-turbo: install cmake and nasm (Debian: apt-get install cmake nasm); the worker's build compiles libjpeg-turbo with them" >&2
    exit 1
fi
