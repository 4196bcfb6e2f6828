#!/usr/bin/env bash
# Installs the one libtorch trainq builds and runs against: torch==2.11.0 from PyPI (the CUDA 13.0
# build, ~4.6 GB), into a virtual environment in a cache directory shared by every checkout on this
# machine, then points the repo's ignored `.libtorch` link at it. `.cargo/config.toml` reads
# LIBTORCH through that link, so `cargo build` needs no hand-set variables.
#
# Idempotent: a second run only checks the install and the link.
set -euo pipefail

TORCH_VERSION=2.11.0
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${TRAINQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trainq}
venv="$cache/torch-$TORCH_VERSION"
python=${PYTHON:-python3}

if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    echo "setup-libtorch: installing torch==$TORCH_VERSION into $venv (about 2 minutes, 4.6 GB)" >&2
    rm -rf "$venv.partial"
    "$python" -m venv "$venv.partial"
    "$venv.partial/bin/python" -m pip install --quiet --upgrade pip
    # numpy and pillow serve the benchmarks that compare trainq against PyTorch and Pillow.
    "$venv.partial/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" numpy pillow safetensors
    rm -rf "$venv"
    mv "$venv.partial" "$venv"
    # A venv records its own path in its scripts; the move keeps `bin/python` working because it
    # is a symlink to the base interpreter, and we only ever call that and site-packages.
fi

# torchvision proves that checkpoints load in plain PyTorch (deploy/load_checkpoint.py and its test).
if ! "$venv/bin/python" -c "import torchvision" 2>/dev/null; then
    "$venv/bin/python" -m pip install --quiet "torchvision==0.26.0"
fi

# ONNX export and inference (load_checkpoint.py --onnx, onnx_predict.py and their test): torch.onnx's
# exporter needs onnx and onnxscript; onnxruntime runs the exported model. Pinned: the versions the
# test proved against torch 2.11.
onnx_packages="onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.32.0"
if ! "$venv/bin/python" -c "
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    sys.exit(any(version(name) != wanted for name, wanted in (p.split('==') for p in sys.argv[1:])))
except PackageNotFoundError:
    sys.exit(1)" $onnx_packages 2>/dev/null; then
    # shellcheck disable=SC2086 # one word per package
    "$venv/bin/python" -m pip install --quiet $onnx_packages
fi

torch_dir=$("$venv/bin/python" -c "import torch, os; print(os.path.dirname(torch.__file__))")
ln -sfn "$torch_dir" "$repo/.libtorch"
ln -sfn "$venv" "$repo/.torch-venv"
echo "setup-libtorch: torch $TORCH_VERSION at $torch_dir" >&2
