"""The TensorRT engine cache: what an engine is keyed by, where it lives, how a package's graphs are
described to it. Shared by the builder (``runtime/engine_build.py``, used by ``export --trt`` and by
the tensorrt backend on first use) and the backends that load engines. Torch-free.

House rule: ONNX is the source of truth; a TensorRT engine is only a cache of it. An engine is
valid for exactly one (ONNX sha256, TensorRT version, GPU compute capability, precision, shape
profile) combination, so it lives under ``engines/<key>/`` with ``key`` a hash of those parts: a
changed model, TensorRT upgrade or different GPU can never pick up a stale engine, it simply finds
no directory and builds a new one.

``tensorrt`` and ``onnx`` are imported lazily (inside functions only): importing this module works on
a machine without either.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from memo_edge.errors import InvalidValue, MemoEdgeError
from memo_edge.options import ENGINE_PRECISIONS as PRECISIONS  # of TensorRT engines
from memo_edge.runtime import cuda
from memo_edge.runtime.cuda import GpuInfo
from memo_edge.utils.io import sha256_file

__all__ = [
    "PRECISIONS",
    "ENGINES_DIR",
    "ENGINE_JSON",
    "KEY_SCHEMA",
    "TRT_MISSING",
    "GPU_MISSING",
    "ShapeProfile",
    "EngineOptions",
    "TrtEnvironment",
    "GpuInfo",
    "GraphSpec",
    "EngineRecord",
    "load_tensorrt",
    "probe_environment",
    "engine_key",
    "engine_key_parts",
    "timing_cache_path",
    "find_engine",
    "ENGINE_ROLES",
    "graph_name",
    "graph_spec",
    "engine_graphs",
]

if TYPE_CHECKING:
    from memo_edge.runtime.package import FileEntry, PackageVersion

ENGINES_DIR = "engines"
ENGINE_JSON = "engine.json"
# Bumped when the key's recipe or engine.json's layout changes, so older caches stop matching
# (2: engines are no longer built refittable, and the key no longer says so).
KEY_SCHEMA = 2

TRT_MISSING = "TensorRT is not installed: pip install 'memo-edge[trt]' (on a Jetson it comes with JetPack 6.1 or later: TensorRT 10.3)"
GPU_MISSING = (
    "no NVIDIA GPU visible (check the NVIDIA driver and CUDA_VISIBLE_DEVICES); TensorRT engines are built on "
    "the GPU that will run them"
)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA_RE = re.compile(r"[0-9a-f]{64}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ShapeProfile:
    """The batch dimension of the one optimization profile: engines accept min..max, tuned for opt."""

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32

    def __post_init__(self) -> None:
        values = (self.min_batch, self.opt_batch, self.max_batch)
        if not all(_is_int(v) for v in values) or not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            got = f"min={self.min_batch} opt={self.opt_batch} max={self.max_batch}"
            raise InvalidValue(f"shape profile needs integers 1 <= min <= opt <= max, got {got}")

    def shapes(self, tail: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """Full (min, opt, max) input shapes: the batch sizes in front of ``tail``."""
        tail = tuple(tail)
        if not all(_is_int(d) and d > 0 for d in tail):
            raise InvalidValue(f"input shape without the batch dim must be positive integers, got {tail}")
        return (self.min_batch, *tail), (self.opt_batch, *tail), (self.max_batch, *tail)

    def to_json(self) -> dict[str, int]:
        return {"min_batch": self.min_batch, "opt_batch": self.opt_batch, "max_batch": self.max_batch}


@dataclass(frozen=True)
class EngineOptions:
    precision: str = "fp32"
    profile: ShapeProfile = field(default_factory=ShapeProfile)
    workspace_mib: int = 1024

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InvalidValue(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.profile, ShapeProfile):
            raise InvalidValue(f"profile must be a ShapeProfile, got {type(self.profile).__name__}")
        if not _is_int(self.workspace_mib) or self.workspace_mib < 1:
            raise InvalidValue(f"workspace_mib must be a positive integer, got {self.workspace_mib!r}")


@dataclass(frozen=True)
class TrtEnvironment:
    tensorrt_version: str  # trt.__version__
    compute_capability: str  # "8.7" on Orin, "9.0" on H100
    gpu_name: str

    def to_json(self) -> dict[str, str]:
        return {"tensorrt_version": self.tensorrt_version, "compute_capability": self.compute_capability, "gpu_name": self.gpu_name}


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of a package to compile."""

    name: str  # "trunk", "branch-0", "full"...: becomes the engine's file name
    onnx_path: Path
    onnx_sha256: str
    input_name: str
    input_tail: tuple[int, ...]  # input shape without the batch dim, e.g. (32, 32, 3) for uint8 NHWC

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise InvalidValue(f"graph name must be letters, digits, '.', '_' or '-' (it names a file), got {self.name!r}")
        if not isinstance(self.onnx_sha256, str) or not _SHA_RE.fullmatch(self.onnx_sha256):
            raise InvalidValue(f"onnx_sha256 of {self.name} must be 64 lower-case hex digits, got {self.onnx_sha256!r}")
        if not self.input_name:
            raise InvalidValue(f"graph {self.name} needs an input name")
        object.__setattr__(self, "onnx_path", Path(self.onnx_path))
        object.__setattr__(self, "input_tail", tuple(self.input_tail))
        ShapeProfile().shapes(self.input_tail)  # validates the tail once, at construction


@dataclass(frozen=True)
class EngineRecord:
    name: str
    key: str
    path: Path
    built: bool  # False: cache hit
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "path": str(self.path), "built": self.built, "seconds": round(self.seconds, 3)}


# ---------------------------------------------------------------------------------------------
# Environment


def load_tensorrt() -> ModuleType:
    """Import ``tensorrt`` on demand, with an install hint instead of a bare ImportError."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but libnvinfer is not
        raise MemoEdgeError(f"{TRT_MISSING} [{type(exc).__name__}: {exc}]") from exc
    return tensorrt


def probe_environment(
    *,
    import_tensorrt: Callable[[], ModuleType] = load_tensorrt,
    gpu_probe: Callable[[], GpuInfo | None] | None = None,
) -> TrtEnvironment:
    """TensorRT version + GPU; both are checked before failing so one message names all that is missing."""
    missing: list[str] = []
    trt: ModuleType | None = None
    try:
        trt = import_tensorrt()
    except (MemoEdgeError, ImportError):  # load_tensorrt raises the former, a bare import the latter
        missing.append(TRT_MISSING)
    gpu = (gpu_probe or _cuda_gpu_probe)()
    if gpu is None:
        missing.append(GPU_MISSING)
    if missing:
        raise MemoEdgeError("cannot build TensorRT engines: " + "; and ".join(missing))
    version = str(getattr(trt, "__version__", "unknown"))
    return TrtEnvironment(tensorrt_version=version, compute_capability=str(gpu.compute_capability), gpu_name=str(gpu.name))


def _cuda_gpu_probe() -> GpuInfo | None:
    """The first GPU, through the CUDA runtime (cuda-python); None when there is none to see."""
    try:
        return cuda.cuda_gpu_probe(cuda.load_cudart())
    except MemoEdgeError:
        return None


# ---------------------------------------------------------------------------------------------
# Cache keys and the on-disk layout


def engine_key_parts(onnx_sha256: str, env: TrtEnvironment, options: EngineOptions) -> dict[str, Any]:
    """Everything that makes one engine differ from another built from the same package.

    The workspace is left out on purpose: it only caps the scratch memory the builder may give a
    tactic, so it can change which kernels win but not what the engine computes or which GPU and
    TensorRT can load it; keying on it would only force needless rebuilds.
    """
    return {
        "schema": KEY_SCHEMA,
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": env.tensorrt_version,
        "compute_capability": env.compute_capability,
        "precision": options.precision,
        "profile": options.profile.to_json(),
    }


def engine_key(onnx_sha256: str, env: TrtEnvironment, options: EngineOptions) -> str:
    """32 hex digits of sha256 over the canonical JSON of :func:`engine_key_parts`."""
    parts = engine_key_parts(onnx_sha256, env, options)
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def timing_cache_path(package_dir: Path, env: TrtEnvironment) -> Path:
    """One timing cache per TensorRT version and GPU architecture, shared by all engines built there."""
    version = re.sub(r"[^A-Za-z0-9._-]", "_", env.tensorrt_version)
    sm = re.sub(r"[^0-9A-Za-z]", "", env.compute_capability)
    return Path(package_dir) / ENGINES_DIR / f"timing-{version}-sm{sm}.cache"


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def find_engine(package_dir: Path, graph: GraphSpec, env: TrtEnvironment, options: EngineOptions) -> Path | None:
    """The cached engine for ``graph`` if its engine.json matches the key and the file is intact."""
    parts = engine_key_parts(graph.onnx_sha256, env, options)
    key = engine_key(graph.onnx_sha256, env, options)
    key_dir = Path(package_dir) / ENGINES_DIR / key
    meta = _read_meta(key_dir / ENGINE_JSON)
    if meta is None or meta.get("key") != key or meta.get("parts") != parts:
        return None
    # The file named in engine.json, not <graph.name>.engine: two graphs with byte-identical ONNX
    # share a key, and then one engine serves both.
    engine_file = meta.get("engine_file")
    if not isinstance(engine_file, str) or not _NAME_RE.fullmatch(engine_file):
        return None
    engine = key_dir / engine_file
    if not engine.is_file() or sha256_file(engine) != meta.get("engine_sha256"):
        return None
    return engine


# ---------------------------------------------------------------------------------------------
# The graphs of a package, as the engine cache describes them

ENGINE_ROLES = ("trunk", "branch", "full")


def graph_name(entry: FileEntry) -> str:
    """trunk, full, or branch-K: the name of a graph file in engine caches and backends."""
    return entry.role if entry.task is None else f"{entry.role}-{entry.task}"


def graph_spec(version: PackageVersion, entry: FileEntry) -> GraphSpec:
    """One graph of a package for TensorRT: trunk and full take images, branches trunk features."""
    try:
        import onnx
    except ImportError:
        raise MemoEdgeError("onnx is not installed (needed to describe graphs for TensorRT): "
                            "pip install 'memo-edge[onnx]'") from None
    path = version.path(entry)
    graph_input = onnx.load(str(path), load_external_data=False).graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim[1:]
    return GraphSpec(name=graph_name(entry), onnx_path=path, onnx_sha256=entry.sha256, input_name=graph_input.name,
                     input_tail=tuple(d.dim_value for d in dims))


def engine_graphs(version: PackageVersion) -> list[GraphSpec]:
    """Every graph of ``version`` that TensorRT compiles."""
    return [graph_spec(version, entry) for entry in version.manifest.files if entry.role in ENGINE_ROLES]
