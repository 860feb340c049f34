#!/usr/bin/env bash
# Exemplar codecs at one total byte budget (docs/experiments.md, "Exemplar codecs"): MEMO and
# single-backbone replay on real CIFAR-100, first 30 classes of the seed-1993 order, B0Inc10 (3 tasks),
# ResNet-32, 5 epochs a task (cosine), bf16 autocast, on the CPU. The budget is the memory-aligned one
# for this scenario (`memo-edge budget --classes 30 --base-exemplars 600`: DER's 3 backbones + 600 raw
# exemplars = 7,405,248 B = 7.0622 MiB); every arm stores what fits in its share of those bytes.
# Most telling arms first: a run interrupted later keeps every finished run (compare continues them),
# and benchmarks/codec_table.py tabulates whatever finished. One intra-op thread per run
# (OMP_NUM_THREADS=1): runs sharing the cores with other work do not thrash, and runs of this script may
# go side by side on separate cores (each arm is its own run directory) with the same results.
# Usage: bash benchmarks/codec_experiment.sh   (OUT=DIR, EPOCHS=N, PYTHON=...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DATA=${CIFAR100_NPZ:-../shared/datasets/cifar100}
OUT=${OUT:-runs/codecs}
EPOCHS=${EPOCHS:-5}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
common=(--dataset "npz:$DATA" --classes 30 --scenario B0Inc10 --backbone resnet32 --init-epochs "$EPOCHS"
        --epochs "$EPOCHS" --batch-size 128 --schedule cosine --train-precision bf16 --device cpu --memory 7.06219482421875)
compare() { "$PY" -m memo_edge compare "${common[@]}" "$@"; }
start=$(date +%s)
compare --methods memo,replay --exemplar-codec raw,jpeg:75 --out "$OUT/main"            # the claim
compare --methods memo --exemplar-codec jpeg:50 --out "$OUT/main"
compare --methods memo --exemplar-codec jpeg:50 --codec-mix 0.5 --out "$OUT/mix"        # codec-matched training
compare --methods memo --exemplar-codec jpeg:90,png,webp:75 --out "$OUT/main"
compare --methods replay --exemplar-codec jpeg:50,jpeg:90,png,webp:75 --out "$OUT/main"
echo "codec experiment done in $(( $(date +%s) - start ))s"
"$PY" benchmarks/codec_table.py --runs "$OUT" --write docs/experiments.md
