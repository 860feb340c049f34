"""TensorRT engines compiled from a package's ONNX graphs, cached per model, TensorRT and GPU.

House rule: ONNX is the source of truth; a TensorRT engine is only a cache of it. An engine is
valid for exactly one (ONNX sha256, TensorRT version, GPU compute capability, precision, shape
profile, refit) combination, so it lives under ``engines/<key>/`` with ``key`` a hash of those
parts: a changed model, TensorRT upgrade or different GPU can never pick up a stale engine, it
simply finds no directory and builds a new one.

``tensorrt`` is imported lazily (inside functions only): importing this module must work on a
workstation without TensorRT, and every TensorRT call goes through a ``trt`` module object that
tests replace with a recording fake.

TensorRT API drift handled here with ``hasattr`` probes (JetPack 6 ships 10.3; 10.x later and
11.x must work too):

* ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``: required before 10, deprecated and ignored in
  10.x (explicit batch is the only mode), gone from the 11.0 enum. Passed only where it exists.
* ``IBuilderConfig.max_workspace_size``: removed in 10; ``set_memory_pool_limit`` +
  ``MemoryPoolType.WORKSPACE`` (since 8.4) is used whenever present.
* ``BuilderFlag.FP16`` and ``Builder.platform_has_fast_fp16``: deprecated late in 10.x, removed in
  11 (strong typing only: an fp16 engine needs an fp16 ONNX). fp16 fails with a clear error there.
* Timing cache (``create_timing_cache`` / ``set_timing_cache`` / ``get_timing_cache``): used
  when the config has it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from memo_edge.errors import MemoEdgeError
from memo_edge.utils.io import atomic_directory, atomic_write_bytes, atomic_write_json, sha256_file

__all__ = [
    "PRECISIONS",
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
    "build_engine",
    "build_engines",
    "find_engine",
    "graph_name",
    "graph_spec",
    "engine_graphs",
]

if TYPE_CHECKING:
    from memo_edge.runtime.package import FileEntry, PackageVersion

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
ENGINES_DIR = "engines"
ENGINE_JSON = "engine.json"
# Bumped when the key's recipe or engine.json's layout changes, so older caches stop matching.
KEY_SCHEMA = 1

TRT_MISSING = "TensorRT is not installed: pip install 'memo-edge[trt]' (on a Jetson it comes with JetPack 6: TensorRT 10.3)"
GPU_MISSING = (
    "no NVIDIA GPU visible (torch.cuda sees no device: check the NVIDIA driver, CUDA_VISIBLE_DEVICES "
    "and that torch is a CUDA build); TensorRT engines are built on the GPU that will run them"
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
            raise ValueError(f"shape profile needs integers 1 <= min <= opt <= max, got {got}")

    def shapes(self, tail: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """Full (min, opt, max) input shapes: the batch sizes in front of ``tail``."""
        tail = tuple(tail)
        if not all(_is_int(d) and d > 0 for d in tail):
            raise ValueError(f"input shape without the batch dim must be positive integers, got {tail}")
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
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.profile, ShapeProfile):
            raise ValueError(f"profile must be a ShapeProfile, got {type(self.profile).__name__}")
        if not _is_int(self.workspace_mib) or self.workspace_mib < 1:
            raise ValueError(f"workspace_mib must be a positive integer, got {self.workspace_mib!r}")


@dataclass(frozen=True)
class TrtEnvironment:
    tensorrt_version: str  # trt.__version__
    compute_capability: str  # "8.7" on Orin, "9.0" on H100
    gpu_name: str

    def to_json(self) -> dict[str, str]:
        return {"tensorrt_version": self.tensorrt_version, "compute_capability": self.compute_capability, "gpu_name": self.gpu_name}


@dataclass(frozen=True)
class GpuInfo:
    """What a GPU probe reports: the device TensorRT will build for (and run on)."""

    compute_capability: str
    name: str


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of a package to compile."""

    name: str  # "trunk", "branch-0", "full"...: becomes the engine's file name
    onnx_path: Path
    onnx_sha256: str
    input_name: str
    input_tail: tuple[int, ...]  # input shape without the batch dim, e.g. (32, 32, 3) for uint8 NHWC
    refittable: bool = False  # branch engines: BuilderFlag.REFIT, so a new branch's weights can be refitted

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"graph name must be letters, digits, '.', '_' or '-' (it names a file), got {self.name!r}")
        if not isinstance(self.onnx_sha256, str) or not _SHA_RE.fullmatch(self.onnx_sha256):
            raise ValueError(f"onnx_sha256 of {self.name} must be 64 lower-case hex digits, got {self.onnx_sha256!r}")
        if not self.input_name:
            raise ValueError(f"graph {self.name} needs an input name")
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


def _torch_gpu_probe() -> GpuInfo | None:
    try:
        import torch
    except ImportError:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability(0)
        return GpuInfo(f"{major}.{minor}", torch.cuda.get_device_name(0))
    except RuntimeError:  # a broken driver surfaces here; to the user it is "no GPU"
        return None


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
    gpu = (gpu_probe or _torch_gpu_probe)()
    if gpu is None:
        missing.append(GPU_MISSING)
    if missing:
        raise MemoEdgeError("cannot build TensorRT engines: " + "; and ".join(missing))
    version = str(getattr(trt, "__version__", "unknown"))
    return TrtEnvironment(tensorrt_version=version, compute_capability=str(gpu.compute_capability), gpu_name=str(gpu.name))


# ---------------------------------------------------------------------------------------------
# Cache keys and the on-disk layout


def engine_key_parts(onnx_sha256: str, env: TrtEnvironment, options: EngineOptions, *, refittable: bool = False) -> dict[str, Any]:
    """Everything that makes one engine differ from another built from the same package.

    The workspace is left out on purpose: it only caps the scratch memory the builder may give a
    tactic, so it can change which kernels win but not what the engine computes or which GPU and
    TensorRT can load it; keying on it would only force needless rebuilds. REFIT is in: a
    refittable engine is a different engine (and only it accepts new branch weights).
    """
    return {
        "schema": KEY_SCHEMA,
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": env.tensorrt_version,
        "compute_capability": env.compute_capability,
        "precision": options.precision,
        "profile": options.profile.to_json(),
        "refittable": bool(refittable),
    }


def engine_key(onnx_sha256: str, env: TrtEnvironment, options: EngineOptions, *, refittable: bool = False) -> str:
    """32 hex digits of sha256 over the canonical JSON of :func:`engine_key_parts`."""
    parts = engine_key_parts(onnx_sha256, env, options, refittable=refittable)
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
    parts = engine_key_parts(graph.onnx_sha256, env, options, refittable=graph.refittable)
    key = engine_key(graph.onnx_sha256, env, options, refittable=graph.refittable)
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
# Building one engine


def _network_flags(trt: ModuleType) -> int:
    # EXPLICIT_BATCH was required before TensorRT 10, is an ignored no-op in 10.x and is gone in 11.
    flags = getattr(trt, "NetworkDefinitionCreationFlag", None)
    if flags is not None and hasattr(flags, "EXPLICIT_BATCH"):
        return 1 << int(flags.EXPLICIT_BATCH)
    return 0


def _parse_onnx(trt: ModuleType, network: Any, logger: Any, spec: GraphSpec) -> Any:
    """Parse the ONNX into ``network``; the returned parser owns the weights and must outlive the build."""
    try:
        data = spec.onnx_path.read_bytes()
    except OSError as exc:
        raise MemoEdgeError(f"cannot read ONNX graph {spec.name} at {spec.onnx_path}: {exc}") from exc
    # The sha256 is the cache key: an ONNX edited after it was recorded would be cached under a lie.
    if hashlib.sha256(data).hexdigest() != spec.onnx_sha256:
        raise MemoEdgeError(f"ONNX graph {spec.name} at {spec.onnx_path} does not match its recorded sha256 (changed since export?)")
    parser = trt.OnnxParser(network, logger)
    # path= lets the parser find external weight files next to the ONNX.
    if not parser.parse(data, path=str(spec.onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        detail = "; ".join(errors) or "no parser errors reported"
        raise MemoEdgeError(f"TensorRT could not parse ONNX graph {spec.name} ({spec.onnx_path}): {detail}")
    return parser


def _set_workspace(trt: ModuleType, config: Any, nbytes: int) -> None:
    if hasattr(config, "set_memory_pool_limit") and hasattr(trt, "MemoryPoolType"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, nbytes)
    else:  # TensorRT < 8.4; the attribute was removed in 10
        config.max_workspace_size = nbytes


def _enable_fp16(trt: ModuleType, builder: Any, config: Any) -> None:
    version = getattr(trt, "__version__", "?")
    if not hasattr(trt.BuilderFlag, "FP16"):
        raise MemoEdgeError(
            f"fp16 is not supported with TensorRT {version}: BuilderFlag.FP16 was removed in TensorRT 11 "
            "(strongly typed networks only); build with precision fp32, or convert the ONNX to fp16 first"
        )
    if not getattr(builder, "platform_has_fast_fp16", True):
        raise MemoEdgeError(
            f"fp16 is not supported on this GPU with TensorRT {version}: it has no fast native fp16; build with precision fp32"
        )
    config.set_flag(trt.BuilderFlag.FP16)


def _configure(trt: ModuleType, builder: Any, config: Any, spec: GraphSpec, options: EngineOptions) -> None:
    _set_workspace(trt, config, options.workspace_mib * (1 << 20))
    if options.precision == "fp16":
        _enable_fp16(trt, builder, config)
    if spec.refittable:
        config.set_flag(trt.BuilderFlag.REFIT)
    profile = builder.create_optimization_profile()
    profile.set_shape(spec.input_name, *options.profile.shapes(spec.input_tail))
    config.add_optimization_profile(profile)


def _attach_timing_cache(config: Any, path: Path | None) -> Any:
    """Load the shared timing cache into ``config``; None when there is none to keep."""
    if path is None or not hasattr(config, "create_timing_cache"):
        return None
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    # ignore_mismatch=False: timings from another device or TensorRT build are dropped, not trusted;
    # a rejected or unreadable cache only costs build time, so the build goes on with a fresh one.
    accepted = cache is not None and config.set_timing_cache(cache, ignore_mismatch=False) is not False
    if not accepted and blob:
        log.warning("timing cache %s does not fit this GPU/TensorRT; starting a new one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _save_timing_cache(config: Any, cache: Any, path: Path) -> None:
    # The config's cache has this build's timings added; get_timing_cache returns it where present.
    current = config.get_timing_cache() if hasattr(config, "get_timing_cache") else cache
    if current is not None:
        atomic_write_bytes(path, bytes(current.serialize()))


def build_engine(spec: GraphSpec, options: EngineOptions, *, trt: ModuleType, timing_cache: Path | None = None) -> bytes:
    """Compile one ONNX graph to a serialized engine (bytes) for the GPU this runs on."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = _parse_onnx(trt, network, logger, spec)
    config = builder.create_builder_config()
    _configure(trt, builder, config, spec, options)
    cache = _attach_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    del parser  # kept alive until here: the network's weights live in the parser
    if serialized is None:
        raise MemoEdgeError(f"TensorRT failed to build {spec.name} (see the TensorRT log above)")
    if cache is not None and timing_cache is not None:
        _save_timing_cache(config, cache, timing_cache)
    return bytes(serialized)


# ---------------------------------------------------------------------------------------------
# Building a package's engines


def _write_engine(package_dir: Path, spec: GraphSpec, env: TrtEnvironment, options: EngineOptions, data: bytes, seconds: float) -> Path:
    key = engine_key(spec.onnx_sha256, env, options, refittable=spec.refittable)
    key_dir = package_dir / ENGINES_DIR / key
    engine_file = f"{spec.name}.engine"
    shapes = [list(s) for s in options.profile.shapes(spec.input_tail)]
    meta = {
        "key": key,
        "parts": engine_key_parts(spec.onnx_sha256, env, options, refittable=spec.refittable),
        "graph": spec.name,
        "engine_file": engine_file,
        "engine_sha256": hashlib.sha256(data).hexdigest(),
        "engine_bytes": len(data),
        "input": {"name": spec.input_name, "tail": list(spec.input_tail), "shapes": shapes},
        "refittable": spec.refittable,
        "tensorrt_version": env.tensorrt_version,
        "gpu": env.to_json(),
        "workspace_mib": options.workspace_mib,
        "build_seconds": round(seconds, 3),
    }
    # Engine and engine.json appear together in one rename: a crash never leaves a half cache entry.
    with atomic_directory(key_dir) as tmp:
        atomic_write_bytes(tmp / engine_file, data)
        atomic_write_json(tmp / ENGINE_JSON, meta)
    return key_dir / engine_file


def _build_or_reuse(package_dir: Path, spec: GraphSpec, options: EngineOptions, env: TrtEnvironment, trt: ModuleType) -> EngineRecord:
    start = time.perf_counter()
    key = engine_key(spec.onnx_sha256, env, options, refittable=spec.refittable)
    found = find_engine(package_dir, spec, env, options)
    if found is not None:
        log.info("engine %s: cached (%s)", spec.name, key)
        return EngineRecord(spec.name, key, found, False, time.perf_counter() - start)
    data = build_engine(spec, options, trt=trt, timing_cache=timing_cache_path(package_dir, env))
    seconds = time.perf_counter() - start
    path = _write_engine(package_dir, spec, env, options, data, seconds)
    log.info("engine %s: built in %.1f s (%s)", spec.name, seconds, key)
    return EngineRecord(spec.name, key, path, True, seconds)


def _check_inputs(graphs: Sequence[GraphSpec], env: TrtEnvironment, trt: ModuleType) -> None:
    names = [g.name for g in graphs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"graph names must be unique, repeated: {', '.join(duplicates)}")
    version = getattr(trt, "__version__", None)
    # Engines are keyed by env's version: building with another TensorRT would mislabel the cache.
    if version is not None and str(version) != env.tensorrt_version:
        raise MemoEdgeError(f"environment says TensorRT {env.tensorrt_version} but the loaded module is {version}")


def build_engines(
    package_dir: Path,
    graphs: Sequence[GraphSpec],
    options: EngineOptions,
    *,
    env: TrtEnvironment | None = None,
    trt: ModuleType | None = None,
    progress: bool = True,
) -> list[EngineRecord]:
    """Engines for ``graphs`` under ``package_dir/engines/<key>/``: cached ones reused, others built."""
    if trt is None:
        trt = load_tensorrt()
    if env is None:
        env = probe_environment(import_tensorrt=lambda: trt)
    _check_inputs(graphs, env, trt)
    records: list[EngineRecord] = []
    bar = tqdm(graphs, desc="TensorRT engines", unit="engine", disable=None if progress else True)
    for spec in bar:
        bar.set_postfix_str(spec.name)
        records.append(_build_or_reuse(Path(package_dir), spec, options, env, trt))
    return records


# ---------------------------------------------------------------------------------------------
# The graphs of a package, as the engine cache describes them (torch-free: the runtime uses this)

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
                     input_tail=tuple(d.dim_value for d in dims), refittable=entry.role == "branch")


def engine_graphs(version: PackageVersion) -> list[GraphSpec]:
    """Every graph of ``version`` that TensorRT compiles."""
    return [graph_spec(version, entry) for entry in version.manifest.files if entry.role in ENGINE_ROLES]
