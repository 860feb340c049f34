#!/usr/bin/env bash
# The one command of a GPU lease: every GPU check of memo-edge in order of value, under one time budget
# (420 s by default), the report copied into $OUT after every stage. Stages, caps and outputs:
# benchmarks/gpu_session.py. The call (docs/benchmarks.md, "The GPU session"), after staging the data:
#   .venv/bin/python benchmarks/stage_gpu_data.py subset --source ../shared/datasets/cifar100 --out .gpu-data/cifar100-20
#   device run: command='bash benchmarks/gpu_session.sh', carry=['.gpu-data'], timeout_s=480; then give_back
# Options pass through: --stages env,tests --budget 300 --device cpu --quick ...   (PYTHON=... to choose python)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PY" benchmarks/gpu_session.py --python "$PY" "$@"
