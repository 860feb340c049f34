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

import importlib.metadata
import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from memo_edge.errors import InputError, MemoEdgeError
from memo_edge.export.tensorrt import (
    ENGINES_DIR,
    TRT_MISSING,
    EngineOptions,
    GraphSpec,
    ShapeProfile,
    build_engines,
    find_engine,
    graph_name,
    graph_spec,
    load_tensorrt,
    probe_environment,
)
from memo_edge.runtime import cuda
from memo_edge.runtime.head import Head
from memo_edge.runtime.package import INT8_ROLE, FileEntry, PackageError, PackageVersion

__all__ = [
    "Backend",
    "OrtBackend",
    "OrtCpuBackend",
    "OrtCudaBackend",
    "OrtTrtBackend",
    "TensorRTBackend",
    "TrtGraph",
    "BACKENDS",
    "AUTO_ORDER",
    "PRECISIONS",
    "load_onnxruntime",
    "create_backend",
    "precision_options",
]

log = logging.getLogger(__name__)

GPU_HINT = "pip install 'memo-edge[gpu]' (onnxruntime-gpu, instead of onnxruntime) on a machine with an NVIDIA GPU"
NO_GPU = "no NVIDIA GPU visible to the CUDA runtime (check the NVIDIA driver and CUDA_VISIBLE_DEVICES)"

GraphFn = Callable[[np.ndarray], np.ndarray]
PRECISIONS = ("auto", "fp32", "int8")  # of ort-cpu


def load_onnxruntime() -> Any:
    """Import onnxruntime, refusing a broken install with both the CPU and GPU wheels present."""
    dists = {d.metadata["Name"].lower() for d in importlib.metadata.distributions() if d.metadata["Name"]}
    if {"onnxruntime", "onnxruntime-gpu"} <= dists:
        raise MemoEdgeError("both onnxruntime and onnxruntime-gpu are installed and overwrite each other; "
                            "pip uninstall -y onnxruntime onnxruntime-gpu, then install one of them")
    try:
        import onnxruntime
    except ImportError:
        raise MemoEdgeError("onnxruntime is not installed: pip install 'memo-edge[onnx]' "
                            "(or 'memo-edge[gpu]' for CUDA)") from None
    return onnxruntime


class Backend(ABC):
    """Runs one package version's graphs by name; the head is numpy, the same for every backend.

    The graphs ``logits`` needs (full, else trunk and branches) are loaded when the backend is
    created, so a broken install fails there; the others on first use, so a predicting process
    never holds the split graphs' weights twice.
    """

    name: ClassVar[str] = ""
    precision: str = "fp32"  # of the arithmetic that produces the logits
    full_role: str = "full"  # the package file with the one-graph path (image -> logits)

    def __init__(self, version: PackageVersion, *, use_full: bool = True) -> None:
        problem = type(self).missing()
        if problem is not None:
            raise MemoEdgeError(f"backend {self.name} is not available here: {problem}")
        m = version.manifest
        if m.file("trunk") is None:
            raise MemoEdgeError(f"{version.root}: the manifest lists no trunk graph")
        head = m.file("head")
        if head is None:
            raise MemoEdgeError(f"{version.root}: the manifest lists no head")
        self.version = version
        self.head = Head.load(version.path(head))
        if self.head.weight.shape[0] != len(m.class_names):
            raise PackageError(f"{version.path(head)}: the head has {self.head.weight.shape[0]} classes, the manifest "
                               f"of version {m.version} names {len(m.class_names)}")
        self.tasks = len(m.branches())
        self.has_full = use_full and m.file(self.full_role) is not None
        self._graphs: dict[str, GraphFn] = {}
        self._open()
        for graph in [self.full_role] if self.has_full else ["trunk", *(f"branch-{t}" for t in range(self.tasks))]:
            self._graph(graph)

    @classmethod
    def missing(cls) -> str | None:
        """What this machine lacks to run this backend (with the install hint), None when nothing."""
        return None

    @classmethod
    def available(cls) -> bool:
        return cls.missing() is None

    def _open(self) -> None:
        """Set up what the graphs share (a runtime, a stream); called once, before any graph loads."""

    @abstractmethod
    def _load(self, graph: str, entry: FileEntry) -> GraphFn:
        """One graph of the package as a function of its input batch."""

    def _graph(self, graph: str) -> GraphFn:
        fn = self._graphs.get(graph)
        if fn is None:
            entry = next((f for f in self.version.manifest.files if graph_name(f) == graph), None)
            if entry is None:
                raise MemoEdgeError(f"{self.version.root}: version {self.version.manifest.version} has no graph {graph}")
            fn = self._graphs[graph] = self._load(graph, entry)
        return fn

    def _check_images(self, images: np.ndarray) -> np.ndarray:
        spec = self.version.manifest.input
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[1:] != spec.shape:
            got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
            raise InputError(f"images must be uint8 [N, {', '.join(map(str, spec.shape))}] (NHWC), got {got}")
        return np.ascontiguousarray(images)

    def trunk(self, images: np.ndarray) -> np.ndarray:
        return self._graph("trunk")(self._check_images(images))

    def branch(self, task: int, trunk_features: np.ndarray) -> np.ndarray:
        return self._graph(f"branch-{task}")(np.ascontiguousarray(trunk_features, dtype=np.float32))

    def features(self, images: np.ndarray) -> np.ndarray:
        shared = self.trunk(images)
        return np.concatenate([self.branch(t, shared) for t in range(self.tasks)], axis=1)

    def full_logits(self, images: np.ndarray) -> np.ndarray | None:
        return self._graph(self.full_role)(self._check_images(images)) if self.has_full else None

    def logits(self, images: np.ndarray) -> np.ndarray:
        full = self.full_logits(images)
        return full if full is not None else self.head(self.features(images))

    def close(self) -> None:
        self._graphs.clear()


# ---------------------------------------------------------------------------------------------
# ONNX Runtime


class OrtBackend(Backend):
    """ONNX Runtime sessions, one per graph, on ``provider`` (falling back to the CPU for the rest)."""

    name = "ort"
    provider: ClassVar[str] = "CPUExecutionProvider"
    install_hint: ClassVar[str] = "pip install 'memo-edge[onnx]'"

    def __init__(self, version: PackageVersion, *, use_full: bool = True, threads: int | None = None) -> None:
        self.threads = threads
        super().__init__(version, use_full=use_full)

    @classmethod
    def missing(cls) -> str | None:
        try:
            ort = load_onnxruntime()
        except MemoEdgeError as exc:
            return str(exc)
        have = list(ort.get_available_providers())
        if cls.provider not in have:
            return f"onnxruntime {ort.__version__} has no {cls.provider} (it has {', '.join(have)}): {cls.install_hint}"
        return None

    def providers(self) -> list[str | tuple[str, dict[str, Any]]]:
        """ONNX Runtime's provider list, highest priority first (names or (name, options))."""
        return ["CPUExecutionProvider"]

    def _open(self) -> None:
        self._ort = load_onnxruntime()

    def session_options(self, graph: str) -> Any:
        options = self._ort.SessionOptions()
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads is not None:  # None keeps ONNX Runtime's default: one thread per physical core
            options.intra_op_num_threads = int(self.threads)
        if graph != self.full_role:
            # Each session has its own intra-op pool whose threads spin after a run. The split path
            # runs 1 + T sessions back to back, so the idle pools' spinning starved the running one:
            # at T=10, batch 64 on 2 cores, 556 ms with spinning, 193 ms without (full graph: 150 ms).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def _load(self, graph: str, entry: FileEntry) -> GraphFn:
        session = self._ort.InferenceSession(str(self.version.path(entry)), sess_options=self.session_options(graph),
                                             providers=self.providers())
        # ONNX Runtime quietly falls back to the CPU when a GPU provider fails to load (missing CUDA,
        # cuDNN or TensorRT libraries): that would be a CPU benchmark under a GPU name, so refuse it.
        active = list(session.get_providers())
        if self.provider not in active:
            raise MemoEdgeError(f"backend {self.name}: onnxruntime could not enable {self.provider} for graph "
                                f"{graph} (active: {', '.join(active)}); check the CUDA/cuDNN/TensorRT libraries")
        input_name = session.get_inputs()[0].name
        return lambda x: session.run(None, {input_name: x})[0]


class OrtCpuBackend(OrtBackend):
    """ONNX Runtime on the CPU; ``precision``: "auto" (int8 when the package has it), "fp32" or "int8"."""

    name = "ort-cpu"

    def __init__(self, version: PackageVersion, *, use_full: bool = True, threads: int | None = None,
                 precision: str = "auto") -> None:
        has_int8 = version.manifest.file(INT8_ROLE) is not None
        if precision not in PRECISIONS:
            raise InputError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}")
        if precision == "int8" and not (has_int8 and use_full):
            raise InputError(f"{version.root}: version {version.manifest.version} has no int8 graph"
                             + ("" if has_int8 else "; export the run with --int8 to add one")
                             + ("" if use_full else " (int8 is the full graph only)"))
        if precision == "int8" or (precision == "auto" and has_int8 and use_full):
            self.precision, self.full_role = "int8", INT8_ROLE
        super().__init__(version, use_full=use_full, threads=threads)


class OrtCudaBackend(OrtBackend):
    name = "ort-cuda"
    provider = "CUDAExecutionProvider"
    install_hint = GPU_HINT

    def providers(self) -> list[str | tuple[str, dict[str, Any]]]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]


class OrtTrtBackend(OrtBackend):
    """TensorRT inside ONNX Runtime; its engines are cached in the package, beside the native ones.

    ONNX Runtime names its cache files by model and GPU, but not by its own or TensorRT's version,
    so the cache directory is keyed on those (and on precision): an upgrade starts a fresh cache.
    """

    name = "ort-trt"
    provider = "TensorrtExecutionProvider"
    install_hint = f"{GPU_HINT}, and the TensorRT libraries ({TRT_MISSING.split(': ', 1)[1]})"

    def __init__(self, version: PackageVersion, *, use_full: bool = True, threads: int | None = None,
                 fp16: bool = False) -> None:
        self.fp16 = fp16
        self.precision = "fp16" if fp16 else "fp32"
        super().__init__(version, use_full=use_full, threads=threads)

    def _open(self) -> None:
        super()._open()
        tag = f"ort{self._ort.__version__}-trt{_dist_version('tensorrt')}-{'fp16' if self.fp16 else 'fp32'}"
        self.cache_dir = self.version.root / ENGINES_DIR / "ort-trt" / tag
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MemoEdgeError(f"cannot create the ort-trt engine cache {self.cache_dir}: {exc}") from None

    def providers(self) -> list[str | tuple[str, dict[str, Any]]]:
        trt_options = {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(self.cache_dir),
            "trt_fp16_enable": bool(self.fp16),
        }
        return [("TensorrtExecutionProvider", trt_options), "CUDAExecutionProvider", "CPUExecutionProvider"]


def _dist_version(dist: str) -> str:
    """An installed distribution's version without importing it ("system" for JetPack's TensorRT)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "system"


# ---------------------------------------------------------------------------------------------
# Native TensorRT


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


# ---------------------------------------------------------------------------------------------
# The table


BACKENDS: dict[str, type[Backend]] = {
    cls.name: cls for cls in (OrtCpuBackend, OrtCudaBackend, OrtTrtBackend, TensorRTBackend)
}
AUTO_ORDER = ("tensorrt", "ort-trt", "ort-cuda", "ort-cpu")


def _option_names(cls: type[Backend]) -> set[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _pick_auto(options: dict[str, Any]) -> tuple[type[Backend], dict[str, Any]]:
    """The first available backend of AUTO_ORDER, and the options it takes (others dropped, logged)."""
    reasons = []
    for name in AUTO_ORDER:
        cls = BACKENDS[name]
        problem = cls.missing()
        if problem is None:
            accepted = _option_names(cls)
            ignored = sorted(set(options) - accepted)
            # An option the picked backend does not take (say precision=int8 when auto picks tensorrt)
            # was asked for explicitly: say so louder than the usual choice.
            (log.warning if ignored else log.info)("backend auto: using %s%s", name,
                                                   f" (ignoring {', '.join(ignored)})" if ignored else "")
            return cls, {k: v for k, v in options.items() if k in accepted}
        reasons.append(f"{name}: {problem}")
    raise MemoEdgeError("no backend is available: " + "; ".join(reasons))


def precision_options(precision: str) -> dict[str, str]:
    """Backend options for a requested precision: none for "auto", which every backend accepts."""
    return {} if precision == "auto" else {"precision": precision}


def create_backend(name: str, version: PackageVersion, **options: Any) -> Backend:
    """Backend ``name`` ("auto" = first available of AUTO_ORDER) for ``version``."""
    if name == "auto":
        cls, options = _pick_auto(options)
        return cls(version, **options)
    cls = BACKENDS.get(name)
    if cls is None:
        raise InputError(f"unknown backend {name!r}; choose from auto, {', '.join(BACKENDS)}")
    problem = cls.missing()
    if problem is not None:
        raise MemoEdgeError(f"backend {name} is not available here: {problem}")
    unknown = sorted(set(options) - _option_names(cls))
    if unknown:
        raise InputError(f"backend {name} has no option {', '.join(unknown)} (it takes {', '.join(sorted(_option_names(cls)))})")
    return cls(version, **options)
