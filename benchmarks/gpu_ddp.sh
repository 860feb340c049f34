#!/usr/bin/env bash
# Distributed-training check (not a test) on a machine with NVIDIA GPUs, N = all visible GPUs:
#   1. the N = 1 NCCL path: torchrun with one process on cuda, a short digits run (backend nccl recorded);
#   2. with N >= 2: the same run in N NCCL processes, then the equivalence tests on the GPUs (one step's
#      gradients of the global batch vs float64; a first task's per-step losses vs one process);
#   3. throughput: images/s at 1..N processes (NCCL).
# The Gloo (CPU) tests and the CPU throughput are CI's and docs/benchmarks.md's already: not repeated on a GPU
# lease. Results go to docs/benchmarks.md. Usage: bash benchmarks/gpu_ddp.sh   (PYTHON=... to choose python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
WORK=${WORK:-$(mktemp -d)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "python: $PY   work dir: $WORK"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
N=$("$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "torch sees no CUDA GPU"
assert torch.distributed.is_nccl_available(), "this torch build has no NCCL"
import sys; print(f"  torch {torch.__version__}, NCCL {torch.cuda.nccl.version()}", file=sys.stderr)
print(torch.cuda.device_count())
PY
)
echo "GPUs visible: $N"
RUN="--dataset digits --scenario B0Inc4 --backbone resnet32 --init-epochs 4 --epochs 4 --batch-size 64 --schedule cosine --memory 200 --device cuda"

start=$(date +%s)
"$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m memo_edge train $RUN --out "$WORK/nccl-1" --force
"$PY" -c "import json, sys; d = json.load(open('$WORK/nccl-1/results.json'))['distributed']; print('N=1 run:', d); assert d['backend'] == 'nccl'"
echo "N=1 NCCL run: $(( $(date +%s) - start ))s"

if [ "$N" -ge 2 ]; then
    t=$(date +%s)
    "$PY" -m torch.distributed.run --standalone --nproc-per-node "$N" -m memo_edge train $RUN --out "$WORK/nccl-$N" --force
    "$PY" -c "import json; d = json.load(open('$WORK/nccl-$N/results.json')); print('N=$N run:', d['distributed'], 'top-1', [round(t['metrics']['top1'], 1) for t in d['tasks']])"
    echo "N=$N NCCL run: $(( $(date +%s) - t ))s"
    "$PY" -m pytest -q -p no:cacheprovider tests/test_distributed.py -k cuda
else
    echo "one GPU: NCCL runs one process per GPU, so the N >= 2 NCCL run and its equivalence tests are skipped"
fi

"$PY" benchmarks/train_speed.py --nproc "$(seq -s, 1 "$N")" --tasks 1 --device cuda --steps 20 --write docs/benchmarks.md
[ -n "${OUT:-}" ] && cp docs/benchmarks.md "$OUT/benchmarks.md"  # the device tool returns only what lies in $OUT
echo "gpu_ddp done in $(( $(date +%s) - start ))s"
