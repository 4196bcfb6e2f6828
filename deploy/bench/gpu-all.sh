#!/usr/bin/env bash
# Every GPU measurement in one go, for a box with an NVIDIA GPU and a Python that has torch 2.11
# (the same libtorch the worker was built against; its torch/lib is put on LD_LIBRARY_PATH):
#   1. the worker loads CUDA (ldd lists libtorch_cuda.so; a 2-step bench on the GPU);
#   2. deploy/bench/gpu.sh: VGG16 full fine-tune img/s at 128/256/512, trainq vs PyTorch eager;
#   3. deploy/bench/gpu_matrix.py: the assignment matrix through a real server, stage by stage.
#
#   deploy/bench/gpu-all.sh [BIN_DIR] [OUT_DIR]     BIN_DIR holds trainq and trainq-worker
#   (default target/release); BUDGET_SECS (default 480) bounds the whole run: the matrix gets
#   what the first two steps leave, less 20 s, and cancels what is left at its deadline.
#   MATRIX_EPOCHS (default 6,4) runs fewer epochs and projects to the assignment's; GPU_SH=0
#   skips step 2; MATRIX_PACK=N lets N jobs share the GPU; SECOND_STUDENT=0 skips the rerun of Q1.
set -uo pipefail
started=$(date +%s)
here=$(cd "$(dirname "$0")" && pwd)
bin=$(cd "${1:-target/release}" && pwd)
out=${2:-/tmp/trainq-gpu}
mkdir -p "$out"
budget=${BUDGET_SECS:-480}
python=${PYTHON:-python3}
torch_lib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHON=$python

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$python" -c 'import torch; print("python torch", torch.__version__, "cuda", torch.version.cuda)'
  echo "torch lib: $torch_lib"
  ldd "$bin/trainq-worker" | grep -E "torch|c10|not found"
} 2>&1 | tee "$out/env.txt"
if ! timeout 120 "$bin/trainq-worker" bench --cuda --precision bf16 --image-size 64 --batch-size 4 --steps 2 --warmup 1 \
  2>&1 | tee "$out/sanity.txt"; then
  echo "the worker did not run on the GPU: see $out/sanity.txt" >&2
  exit 1
fi

if [ "${GPU_SH:-1}" != 0 ]; then
  echo "== gpu.sh ($(($(date +%s) - started))s in)"
  STEPS=${STEPS:-15} WARMUP=${WARMUP:-5} timeout 240 "$here/gpu.sh" "$bin/trainq-worker" 2>&1 | tee "$out/gpu.txt"
fi

left=$((budget - ($(date +%s) - started) - 20))
echo "== matrix ($(($(date +%s) - started))s in, ${left}s left for it)"
PYTHONUNBUFFERED=1 timeout $((left + 15)) "$python" "$here/gpu_matrix.py" --trainq "$bin/trainq" --worker "$bin/trainq-worker" \
  --epochs "${MATRIX_EPOCHS:-6,4}" --deadline "$left" --max-jobs-per-gpu "${MATRIX_PACK:-1}" \
  $([ "${SECOND_STUDENT:-1}" != 0 ] && echo --second-student) --out "$out" 2>"$out/matrix-stderr.txt" | tee "$out/matrix.txt"
echo "== done in $(($(date +%s) - started))s"
