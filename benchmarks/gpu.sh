#!/usr/bin/env bash
# The GPU measurements of issue 5, prepared for a CUDA machine (none was lent when the CPU numbers were taken):
# ours (bf16 autocast, channels-last, data resident on the GPU, batched augmentation there) vs the reference
# (PIL per image in DataLoader workers, fp32, NCHW) for ResNet-18 small stem at 32 px and ResNet-50 at 224 px,
# batch 512, and one epoch of a CIFAR-size set (50,000 images) for the ResNet-18. JSON goes to $OUT (default
# benchmarks/results). Peak = best bf16/fp32 matmul or 1x1 conv measured on the GPU.
#   OUT=/some/dir bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-benchmarks/results}
W=${WORKERS:-8}   # DataLoader workers of the reference (a GPU box has more cores than 2)
B="$PY benchmarks/throughput.py --device cuda --out $OUT --workers $W"
$B compare --backbone r18_1x_sk0 --batch 512 --data-size 8192 --steps 5 --reps 5
$B compare --backbone r50_1x_sk0 --batch 512 --image-size 224 --data-size 1024 --steps 2 --reps 3
$B compare --backbone r18_1x_sk0 --batch 512 --data-size 50000 --steps 97 --reps 1 \
  --name epoch-r18_1x_sk0-32px-b512-cuda   # one epoch (50,000 // 512 = 97 steps) per path
$B compare --backbone r18_1x_sk0 --batch 512 --data-size 8192 --steps 5 --reps 3 --compile \
  --name compare-r18_1x_sk0-32px-b512-cuda-compile
