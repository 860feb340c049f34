#!/usr/bin/env bash
# GPU check (not a test): on a machine with an NVIDIA GPU, in under 8 minutes,
#   1. train a small MEMO run on the GPU (digits, ResNet-32, 3 tasks): GPU training and augmentation;
#   2. export it: ONNX graphs verified against PyTorch with ONNX Runtime;
#   3. run the CPU-vs-CUDA augmentation tests;
#   4. if tensorrt imports: build FP32 and FP16 engines and compare them with ONNX Runtime.
# Results go to docs/benchmarks.md. Usage: bash benchmarks/gpu_check.sh   (PYTHON=... to choose python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
WORK=${WORK:-$(mktemp -d)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "python: $PY   work dir: $WORK"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" - <<'PY'
import importlib
for name in ["torch", "torchvision", "numpy", "click", "safetensors", "tqdm", "matplotlib", "sklearn", "onnx", "onnxruntime", "tensorrt"]:
    try:
        m = importlib.import_module(name); print(f"  {name} {getattr(m, '__version__', '?')}")
    except ImportError as e:
        print(f"  {name} MISSING ({e})")
import torch; assert torch.cuda.is_available(), "torch sees no CUDA GPU"
PY

start=$(date +%s)
"$PY" -m memo_edge.cli train --dataset digits --scenario B0Inc4 --backbone resnet32 --init-epochs 10 --epochs 8 \
    --batch-size 64 --schedule cosine --memory 200 --device cuda --out "$WORK/run" --force
echo "train on GPU: $(( $(date +%s) - start ))s"
"$PY" -m memo_edge.cli export "$WORK/run" --out "$WORK/pkg" --force
"$PY" -m memo_edge.cli info "$WORK/pkg"
"$PY" -m pytest -q tests/test_augment.py -k cuda

if "$PY" -c "import tensorrt" 2>/dev/null; then
    for precision in fp32 fp16; do
        flag=$([ "$precision" = fp16 ] && echo --fp16 || true)
        "$PY" -m memo_edge.cli export "$WORK/run" --out "$WORK/pkg-$precision" --force --trt --engine-precision "$precision" --max-batch 32
        "$PY" benchmarks/trt_compare.py "$WORK/pkg-$precision" $flag --max-batch 32 --write docs/benchmarks.md
    done
else
    echo "tensorrt is not importable here: TensorRT engines not built (pip install 'memo-edge[trt]')"
fi
echo "gpu_check done in $(( $(date +%s) - start ))s"
