"""Backends run a package's graphs; the head is applied in numpy afterwards, the same for all.

One interface (:class:`Backend`), one small class per backend, one table (``BACKENDS``):

========== ========================================================================================
ort-cpu    ONNX Runtime, CPUExecutionProvider
ort-cuda   ONNX Runtime, CUDAExecutionProvider, then CPU (``pip install 'memo-edge[gpu]'``)
ort-trt    ONNX Runtime, TensorrtExecutionProvider with its engine cache in ``engines/ort-trt/``,
           then CUDA, then CPU (``memo-edge[gpu]`` plus TensorRT libraries)
tensorrt   native TensorRT 10 engines from the package's cache (``engines/<key>/``), built on first
           use when missing; device buffers through cuda-python (``pip install 'memo-edge[trt]'``)
========== ========================================================================================

``create_backend("auto", ...)`` takes the first available of ``AUTO_ORDER``. Every backend runs
graphs by name ("trunk", "branch-K", "full"), loads them on first use, and gets logits from the
full graph when the package has one, else trunk -> branches -> the numpy head (``runtime/head.py``).
ort-cpu runs the package's int8 full graph ("full-int8", ``export --int8``) instead when it has
one, unless asked for ``precision="fp32"``.
GPU libraries are imported lazily, inside the backends that need them. Nothing here imports torch.
"""

from __future__ import annotations

from memo_edge.runtime.backends.base import Backend, GraphFn
from memo_edge.runtime.backends.ort import (
    GPU_HINT,
    PRECISIONS,
    OrtBackend,
    OrtCpuBackend,
    OrtCudaBackend,
    OrtTrtBackend,
    load_onnxruntime,
)
from memo_edge.runtime.backends.registry import AUTO_ORDER, BACKENDS, create_backend, precision_options
from memo_edge.runtime.backends.tensorrt import NO_GPU, TensorRTBackend, TrtGraph

__all__ = [
    "Backend",
    "GraphFn",
    "OrtBackend",
    "OrtCpuBackend",
    "OrtCudaBackend",
    "OrtTrtBackend",
    "TensorRTBackend",
    "TrtGraph",
    "BACKENDS",
    "AUTO_ORDER",
    "PRECISIONS",
    "GPU_HINT",
    "NO_GPU",
    "load_onnxruntime",
    "create_backend",
    "precision_options",
]
