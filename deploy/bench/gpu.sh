#!/usr/bin/env bash
# The issue-3 GPU benchmark: VGG16 + the Q1 head, full fine-tune, at 128/256/512 px, in bf16
# (`precision: auto` on a GPU) and fp32, with the batch on the GPU as a cached split is. Prints
# images/s and achieved TFLOP/s as a fraction of the card's dense bf16 peak (from the table below,
# by the name nvidia-smi reports).
#
#   deploy/bench/gpu.sh [path/to/trainq-worker]     (STEPS=20 WARMUP=5 to change the counts;
#   SIZES="128 256 512" PRECISIONS="bf16 fp32" PYTHON=python3)
set -euo pipefail
worker=${1:-target/release/trainq-worker}
steps=${STEPS:-20}
warmup=${WARMUP:-5}
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1)
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), from the vendors' data sheets.
case "$name" in
  *H200*) peak=989 ;;
  *H100*PCIe*) peak=756 ;;
  *H100*) peak=989 ;;
  *A100*) peak=312 ;;
  *L40S*) peak=362 ;;
  *L4*) peak=121 ;;
  *4090*) peak=165 ;;
  *) peak=0 ;;
esac
echo "GPU: $name (dense bf16 peak ${peak} TFLOP/s; 0 = unknown card)"
# The named baseline, measured in the same run: PyTorch eager doing the same step with the same
# settings (deploy/bench/train_step_torch.py; bf16 = autocast + channels-last + cuDNN benchmark).
python=${PYTHON:-python3}
here=$(dirname "$0")
for size in ${SIZES:-128 256 512}; do
  batch=$(( size == 512 ? 32 : 64 ))
  for precision in ${PRECISIONS:-bf16 fp32}; do
    line=$("$worker" bench --cuda --precision "$precision" --image-size "$size" --batch-size "$batch" \
      --steps "$steps" --warmup "$warmup" --train all)
    theirs=$("$python" "$here/train_step_torch.py" --cuda --precision "$precision" --image-size "$size" \
      --batch-size "$batch" --steps "$steps" --warmup "$warmup" --train all 2>/dev/null | tail -n1 || echo '{}')
    "$python" - "$line" "$theirs" "$peak" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); t = json.loads(sys.argv[2] or "{}"); peak = float(sys.argv[3])
tf = r.get("achieved_tflops") or 0.0
frac = f"{100 * tf / peak:.1f}% of bf16 peak" if peak else "peak unknown"
base = (f" | PyTorch eager {t['torch']} {t['images_per_sec']:.0f} img/s | ratio {r['images_per_sec'] / t['images_per_sec']:.2f}x"
        if t.get("images_per_sec") else " | PyTorch baseline did not run")
print(f"VGG16 full fine-tune {r['image_size']} px, batch {r['batch_size']}, {r['precision']}: "
      f"trainq {r['images_per_sec']:.0f} img/s, {tf:.1f} TFLOP/s ({frac}){base}", flush=True)
PY
  done
done
