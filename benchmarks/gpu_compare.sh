#!/usr/bin/env bash
# GPU compare run (not a test): on a machine with an NVIDIA GPU, the memory-aligned
# comparison of MEMO, DER-style expansion and single-backbone replay on a CIFAR-100 slice
# (first 50 classes of the seed-1993 order, B0Inc10 = 5 tasks, ResNet-32, 15 epochs a task, cosine).
# Needs ../shared/datasets/cifar100 (or CIFAR100_NPZ=DIR); where it is missing (the GPU machines: no network,
# no ../shared) it takes the carried 20-class subset .gpu-data/cifar100-20 (benchmarks/stage_gpu_data.py) and
# compares on those 20 classes (B0Inc10 = 2 tasks). Runs: RUNS=DIR (default runs/gpu-compare); the table and
# plot are copied into $OUT when the device tool sets it.
# Usage: bash benchmarks/gpu_compare.sh   (PYTHON=... to choose python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DATA=${CIFAR100_NPZ:-../shared/datasets/cifar100}
CLASSES=(--classes 50)
if [ ! -f "$DATA/meta.json" ] && [ -f .gpu-data/cifar100-20/meta.json ]; then
    DATA=.gpu-data/cifar100-20
    CLASSES=(--no-shuffle)  # the subset holds the first 20 classes of the seed-1993 order already
fi
[ -f "$DATA/meta.json" ] || { echo "gpu_compare: no CIFAR-100 npz copy at $DATA (set CIFAR100_NPZ=DIR)" >&2; exit 2; }
RUNS=${RUNS:-runs/gpu-compare}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
start=$(date +%s)
"$PY" -m memo_edge.cli compare --dataset "npz:$DATA" "${CLASSES[@]}" --scenario B0Inc10 --backbone resnet32 \
    --init-epochs 15 --epochs 15 --batch-size 128 --schedule cosine --memory aligned --device cuda \
    --methods memo,der,replay --out "$RUNS" --force
if [ -n "${OUT:-}" ]; then  # the device tool returns only what lies in $OUT
    cp "$RUNS/comparison.md" "$RUNS/comparison.png" "$OUT/"
fi
echo "gpu_compare done in $(( $(date +%s) - start ))s; table: $RUNS/comparison.md, plot: $RUNS/comparison.png"
