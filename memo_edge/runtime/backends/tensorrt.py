"""The native TensorRT backend: engines from the package's cache (``engines/<key>/``), built once on
first use when missing, with device buffers through cuda-python (``pip install 'memo-edge[trt]'``, or
JetPack's TensorRT). TensorRT and cuda-python are imported lazily.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from memo_edge.errors import MemoEdgeError
from memo_edge.runtime import cuda
from memo_edge.runtime.backends.base import Backend, GraphFn
from memo_edge.runtime.engine_build import build_engines
from memo_edge.runtime.engine_cache import (
    TRT_MISSING,
    EngineOptions,
    GraphSpec,
    ShapeProfile,
    find_engine,
    graph_spec,
    load_tensorrt,
    probe_environment,
)
from memo_edge.runtime.package import FileEntry, PackageVersion

__all__ = ["TrtGraph", "TensorRTBackend", "NO_GPU"]

log = logging.getLogger(__name__)
NO_GPU = "no NVIDIA GPU visible to the CUDA runtime (check the NVIDIA driver and CUDA_VISIBLE_DEVICES)"


class TrtGraph:
    """One deserialized engine (one input, one output) with device buffers for the profile's max batch.

    Batches above the max are run in max-size chunks; batches below the profile's min are padded.
    """

    def __init__(self, trt: ModuleType, runtime: Any, gpu: cuda.Cuda, path: Path, profile: ShapeProfile) -> None:
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise MemoEdgeError(f"TensorRT could not load engine {path} (see the TensorRT log above); delete it to rebuild")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise MemoEdgeError(f"engine {path}: expected one input and one output, got {inputs} and {outputs}")
        (self.input,), (self.output,) = inputs, outputs
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input)))
        self.output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output)))
        self.gpu, self.profile = gpu, profile
        self._buffers: tuple[int, int] | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        step = self.profile.max_batch
        chunks = [self._run(x[i : i + step]) for i in range(0, max(len(x), 1), step)]
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def _allocate(self, in_sample: int, out_sample: int) -> tuple[int, int]:
        """Device buffers for a max batch, made once; their addresses stay bound to the context."""
        if self._buffers is None:
            ptrs = (self.gpu.malloc(in_sample * self.profile.max_batch), self.gpu.malloc(out_sample * self.profile.max_batch))
            self.context.set_tensor_address(self.input, ptrs[0])
            self.context.set_tensor_address(self.output, ptrs[1])
            self._buffers = ptrs
        return self._buffers

    def _run(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if n < self.profile.min_batch:  # outside the profile: pad with zeros, drop their rows after
            x = np.concatenate([x, np.zeros((self.profile.min_batch - n, *x.shape[1:]), x.dtype)])
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        if not self.context.set_input_shape(self.input, tuple(x.shape)):
            raise MemoEdgeError(f"TensorRT refused input shape {tuple(x.shape)} for {self.input} (profile {self.profile})")
        out = np.empty(tuple(self.context.get_tensor_shape(self.output)), self.output_dtype)
        in_ptr, out_ptr = self._allocate(x[0].nbytes, out[0].nbytes)
        self.gpu.to_device(in_ptr, x)
        if not self.context.execute_async_v3(self.gpu.stream_handle):
            raise MemoEdgeError(f"TensorRT execution failed for {self.input} -> {self.output} (see the TensorRT log above)")
        self.gpu.to_host(out, out_ptr)
        self.gpu.synchronize()  # x and out must live until the copies are done: they do, until here
        return out[:n].astype(np.float32, copy=False)


class TensorRTBackend(Backend):
    """Native TensorRT 10 engines from the package's cache, built (once) on first use when missing."""

    name = "tensorrt"
    options = frozenset({"use_full", "fp16", "profile", "build"})

    def __init__(self, version: PackageVersion, *, use_full: bool = True, fp16: bool = False,
                 profile: ShapeProfile | None = None, build: bool = True) -> None:
        self.options = EngineOptions(precision="fp16" if fp16 else "fp32", profile=profile or ShapeProfile())
        self.precision = self.options.precision
        self.build = build
        super().__init__(version, use_full=use_full)

    @classmethod
    def missing(cls) -> str | None:
        problems = []
        try:
            load_tensorrt()
        except MemoEdgeError:
            problems.append(TRT_MISSING)
        try:
            rt = cuda.load_cudart()
        except MemoEdgeError:
            problems.append(cuda.CUDA_MISSING)
        else:
            if cuda.cuda_gpu_probe(rt) is None:
                problems.append(NO_GPU)
        return "; and ".join(problems) or None

    def _open(self) -> None:
        self._trt = load_tensorrt()
        self.env = probe_environment(import_tensorrt=lambda: self._trt, gpu_probe=cuda.cuda_gpu_probe)
        self._gpu = cuda.Cuda()
        # The runtime must outlive the engines it deserialized.
        self._runtime = self._trt.Runtime(self._trt.Logger(self._trt.Logger.WARNING))

    def engine_path(self, spec: GraphSpec) -> Path:
        """The cached engine for ``spec``, building it into the cache when there is none."""
        found = find_engine(self.version.root, spec, self.env, self.options)
        if found is not None:
            return found
        if not self.build:
            raise MemoEdgeError(f"no cached TensorRT engine for {spec.name} ({self.options.precision}, "
                                f"{self.options.profile}) on this GPU/TensorRT; build it with memo-edge export --trt")
        log.warning("TensorRT engine %s is not in the cache: building it now (once; minutes on a Jetson)", spec.name)
        (record,) = build_engines(self.version.root, [spec], self.options, env=self.env, trt=self._trt, progress=False)
        return record.path

    def _load(self, graph: str, entry: FileEntry) -> GraphFn:
        path = self.engine_path(graph_spec(self.version, entry))
        return TrtGraph(self._trt, self._runtime, self._gpu, path, self.options.profile)

    def close(self) -> None:
        super().close()
        self._gpu.close()


