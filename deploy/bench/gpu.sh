#!/usr/bin/env bash
# The issue-3 GPU benchmark: VGG16 + the Q1 head, full fine-tune, at 128/256/512 px, in bf16
# (`precision: auto` on a GPU) and fp32, with the batch on the GPU as a cached split is. Prints
# images/s and achieved TFLOP/s as a fraction of the card's dense bf16 peak (from the table below,
# by the name nvidia-smi reports).
#
#   deploy/bench/gpu.sh [path/to/trainq-worker]     (STEPS=20 WARMUP=5 to change the counts)
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
for size in 128 256 512; do
  batch=$(( size == 512 ? 32 : 64 ))
  for precision in bf16 fp32; do
    line=$("$worker" bench --cuda --precision "$precision" --image-size "$size" --batch-size "$batch" \
      --steps "$steps" --warmup "$warmup" --train all)
    python3 - "$line" "$peak" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); peak = float(sys.argv[2])
tf = r.get("achieved_tflops") or 0.0
frac = f"{100 * tf / peak:.1f}% of bf16 peak" if peak else "peak unknown"
print(f"VGG16 full fine-tune {r['image_size']} px, batch {r['batch_size']}, {r['precision']}: "
      f"{r['images_per_sec']:.0f} img/s, {tf:.1f} TFLOP/s ({frac})")
PY
  done
done
