#!/usr/bin/env bash
# GPU compare run (not a test): on a machine with an NVIDIA GPU, the memory-aligned
# comparison of MEMO, DER-style expansion and single-backbone replay on a CIFAR-100 slice
# (first 50 classes of the seed-1993 order, B0Inc10 = 5 tasks, ResNet-32, 15 epochs a task, cosine).
# Needs ../shared/datasets/cifar100 (or CIFAR100_NPZ=DIR). Results: runs/gpu-compare/comparison.md
# Usage: bash benchmarks/gpu_compare.sh   (PYTHON=... to choose python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DATA=${CIFAR100_NPZ:-../shared/datasets/cifar100}
OUT=${OUT:-runs/gpu-compare}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
start=$(date +%s)
"$PY" -m memo_edge.cli compare --dataset "npz:$DATA" --classes 50 --scenario B0Inc10 --backbone resnet32 \
    --init-epochs 15 --epochs 15 --batch-size 128 --schedule cosine --memory aligned --device cuda \
    --methods memo,der,replay --out "$OUT" --force
echo "gpu_compare done in $(( $(date +%s) - start ))s; table: $OUT/comparison.md, plot: $OUT/comparison.png"
