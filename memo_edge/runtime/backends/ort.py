"""ONNX Runtime backends: ort-cpu (float32 or the package's int8 graph), ort-cuda, ort-trt.

GPU providers come with ``pip install 'memo-edge[gpu]'`` (onnxruntime-gpu instead of onnxruntime).
onnxruntime is imported lazily, when a backend opens.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any, ClassVar

from memo_edge.errors import InputError, MemoEdgeError
from memo_edge.options import GRAPH_PRECISIONS as PRECISIONS  # of ort-cpu
from memo_edge.runtime.backends.base import Backend, GraphFn
from memo_edge.runtime.engine_cache import ENGINES_DIR, TRT_MISSING
from memo_edge.runtime.package import INT8_ROLE, FileEntry, PackageVersion
from memo_edge.utils.phases import timed

__all__ = ["OrtBackend", "OrtCpuBackend", "OrtCudaBackend", "OrtTrtBackend", "load_onnxruntime", "PRECISIONS", "GPU_HINT"]

GPU_HINT = "pip install 'memo-edge[gpu]' (onnxruntime-gpu, instead of onnxruntime) on a machine with an NVIDIA GPU"


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



class OrtBackend(Backend):
    """ONNX Runtime sessions, one per graph, on ``provider`` (falling back to the CPU for the rest)."""

    name = "ort"
    options = frozenset({"use_full", "threads", "spinning"})
    provider: ClassVar[str] = "CPUExecutionProvider"
    install_hint: ClassVar[str] = "pip install 'memo-edge[onnx]'"

    def __init__(self, version: PackageVersion, *, use_full: bool = True, threads: int | None = None,
                 spinning: bool = True) -> None:
        # spinning: the intra-op threads busy-wait after a run, for the next one (ONNX Runtime's default).
        # That helps a process that only predicts; the service turns it off, because there the spinning
        # takes CPU its event loop needs to read the next requests (benchmarks/serve_load.py).
        self.threads, self.spinning = threads, spinning
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
        if graph != self.full_role or not self.spinning:
            # Each session has its own intra-op pool whose threads spin after a run. The split path
            # runs 1 + T sessions back to back, so the idle pools' spinning starved the running one
            # (measured by benchmarks/ort_cpu_profile.py: "Thread spinning, split path" in docs/benchmarks.md).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    @timed("ort_session")
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
    options = OrtBackend.options | {"precision"}

    def __init__(self, version: PackageVersion, *, use_full: bool = True, threads: int | None = None,
                 precision: str = "auto", spinning: bool = True) -> None:
        has_int8 = version.manifest.file(INT8_ROLE) is not None
        if precision not in PRECISIONS:
            raise InputError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}")
        if precision == "int8" and not (has_int8 and use_full):
            raise InputError(f"{version.root}: version {version.manifest.version} has no int8 graph"
                             + ("" if has_int8 else "; export the run with --int8 to add one")
                             + ("" if use_full else " (int8 is the full graph only)"))
        if precision == "int8" or (precision == "auto" and has_int8 and use_full):
            self.precision, self.full_role = "int8", INT8_ROLE
        super().__init__(version, use_full=use_full, threads=threads, spinning=spinning)


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
    options = OrtBackend.options | {"fp16"}
    provider = "TensorrtExecutionProvider"
    install_hint = f"{GPU_HINT}, and the TensorRT libraries ({TRT_MISSING.split(': ', 1)[1]})"

    def __init__(self, version: PackageVersion, *, use_full: bool = True, threads: int | None = None,
                 fp16: bool = False, spinning: bool = True) -> None:
        self.fp16 = fp16
        self.precision = "fp16" if fp16 else "fp32"
        super().__init__(version, use_full=use_full, threads=threads, spinning=spinning)

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


