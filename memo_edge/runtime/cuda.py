"""A tiny torch-free CUDA wrapper over cuda-python's runtime bindings: just what TensorRT needs.

Device buffers (malloc/free), host <-> device copies on one stream, and a GPU probe. torch would
do all of this, but it costs hundreds of MB of RSS on a Jetson whose memory the model and the
exemplars share, so inference uses cuda-python (NVIDIA's thin bindings) instead.

cuda-python moved its runtime module: ``cuda.bindings.runtime`` since 12.6 (and the only path in
13), ``cuda.cudart`` before. Both are tried, the new path first. Every binding returns a tuple
``(error, *values)``; :func:`check` turns a non-success error into a :class:`MemoEdgeError`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from memo_edge.errors import MemoEdgeError

__all__ = ["CUDA_MISSING", "GpuInfo", "load_cudart", "check", "Cuda", "cuda_gpu_probe"]

CUDA_MISSING = "cuda-python is not installed: pip install 'memo-edge[trt]' (it brings tensorrt and cuda-python)"
_MODULE_PATHS = ("cuda.bindings.runtime", "cuda.cudart")


@dataclass(frozen=True)
class GpuInfo:
    """What a GPU probe reports: the device TensorRT will build for (and run on); the engine cache keys
    engines by its compute capability."""

    compute_capability: str
    name: str


def load_cudart() -> ModuleType:
    """The CUDA runtime bindings, from whichever module path this cuda-python has."""
    errors = []
    for path in _MODULE_PATHS:
        try:
            return importlib.import_module(path)
        except ImportError as exc:  # also covers a cuda-python whose libcudart cannot be loaded
            errors.append(f"{path}: {exc}")
    raise MemoEdgeError(f"{CUDA_MISSING} [{'; '.join(errors)}]")


def check(rt: ModuleType, result: Any, what: str) -> Any:
    """Unwrap ``(error, *values)``: the single value, a tuple of several, or None."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        name = getattr(err, "name", str(err))
        raise MemoEdgeError(f"CUDA {what} failed: {name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class Cuda:
    """One stream and the buffers allocated through it; ``close()`` frees them all."""

    def __init__(self, rt: ModuleType | None = None) -> None:
        self.rt = rt if rt is not None else load_cudart()
        self.stream = check(self.rt, self.rt.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers: list[int] = []

    @property
    def stream_handle(self) -> int:
        """The raw cudaStream_t as an integer, as TensorRT's execute_async_v3 takes it."""
        return int(self.stream)

    def malloc(self, nbytes: int) -> int:
        ptr = int(check(self.rt, self.rt.cudaMalloc(max(1, int(nbytes))), f"cudaMalloc({nbytes} B)"))
        self._buffers.append(ptr)
        return ptr

    def free(self, ptr: int) -> None:
        check(self.rt, self.rt.cudaFree(ptr), "cudaFree")
        self._buffers.remove(ptr)

    def to_device(self, dst: int, host: np.ndarray) -> None:
        # The host array must stay alive until synchronize(); callers keep a reference.
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self.rt, self.rt.cudaMemcpyAsync(dst, host.ctypes.data, host.nbytes, kind, self.stream), "copy to device")

    def to_host(self, host: np.ndarray, src: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self.rt, self.rt.cudaMemcpyAsync(host.ctypes.data, src, host.nbytes, kind, self.stream), "copy to host")

    def synchronize(self) -> None:
        check(self.rt, self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        for ptr in list(self._buffers):
            self.free(ptr)
        if self.stream is not None:
            check(self.rt, self.rt.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None


def cuda_gpu_probe(rt: ModuleType | None = None) -> GpuInfo | None:
    """Device 0's compute capability and name via cudart, or None when no GPU is usable.

    Torch-free stand-in for the export's torch probe, passed to ``probe_environment(gpu_probe=...)``.
    """
    try:
        rt = rt if rt is not None else load_cudart()
    except MemoEdgeError:
        return None
    err, count = rt.cudaGetDeviceCount()
    # No driver, no device, or CUDA_VISIBLE_DEVICES hiding them all: to the user this is "no GPU".
    if err != rt.cudaError_t.cudaSuccess or count < 1:
        return None
    err, prop = rt.cudaGetDeviceProperties(0)
    if err != rt.cudaError_t.cudaSuccess:
        return None
    name = prop.name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return GpuInfo(f"{prop.major}.{prop.minor}", name)
