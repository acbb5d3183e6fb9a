#!/usr/bin/env bash
# Every measurement behind benchmarks/README.md (the same result names), then the README's tables regenerated
# from the JSON files (benchmarks/results/*.json). About an hour on a quiet 2-core CPU; run it on a machine
# nothing else is using (the paths are interleaved, but contention still adds noise, see the README).
#   bash benchmarks/run_all.sh            # everything
#   bash benchmarks/run_all.sh headline   # only the ResNet-18 and demo-model comparisons and the profile
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
B="$PY benchmarks/throughput.py"
DEMO="--backbone r18_0.25x_sk0 --data fashion-mnist --batch 256"
T1="--threads 1"

# The headline: ResNet-18 (small-image stem), 32x32 CIFAR-shaped images, batch 256; then the demo model.
$B compare --backbone r18_1x_sk0 --batch 256 --steps 2 --reps 5
$B compare --backbone r18_1x_sk0 --batch 256 --steps 2 --reps 5 $T1 --name compare-r18_1x_sk0-32px-b256-1thread
$B profile --backbone r18_1x_sk0 --batch 256 --reps 3
$B compare $DEMO --steps 5 --reps 5
$B compare $DEMO --steps 5 --reps 5 $T1 --name compare-r18_0.25x_sk0-28px-b256-1thread
if [ "${1:-}" = headline ]; then $B readme; exit 0; fi

$B knn $DEMO --train-steps 120 --seeds 0 1 $T1 --name knn-r18_0.25x_sk0-28px-b256-1thread
$B levers $DEMO --steps 5 --reps 5 $T1 --name levers-r18_0.25x_sk0-28px-b256-1thread
$B levers --backbone r18_1x_sk0 --batch 256 --steps 1 --reps 3 $T1 --name levers-r18_1x_sk0-32px-b256-1thread
$B sweep --over batch --values 64 128 256 512 1024 $DEMO --steps 3 --reps 3 $T1 \
  --name sweep-batch-r18_0.25x_sk0-28px-1thread
$B sweep --over width --values 0.25 0.5 1 2 $DEMO --steps 2 --reps 3 $T1 --name sweep-width-r18-28px-b256-1thread
$B checkpoint --backbone r50_1x_sk0 --image-size 224 --data-size 64 --batch 16 --steps 2 --reps 3 $T1 \
  --name checkpoint-r50_1x_sk0-224px-b16-1thread
$B stages $DEMO --steps 5 --reps 3 $T1 --name stages-r18_0.25x_sk0-28px-b256-1thread
$B readme
