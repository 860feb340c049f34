"""Building TensorRT engines from a package's ONNX graphs into its engine cache.

Used by ``memo-edge export --trt`` and by the tensorrt backend, which builds a missing engine on the
device on first use; so it lives with the runtime, and like it never imports torch. ``tensorrt`` is
imported lazily, and every TensorRT call goes through a ``trt`` module object that tests replace with
a recording fake.

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
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from tqdm.auto import tqdm

from memo_edge.errors import MemoEdgeError
from memo_edge.runtime.engine_cache import (
    ENGINE_JSON,
    ENGINES_DIR,
    EngineOptions,
    EngineRecord,
    GraphSpec,
    TrtEnvironment,
    engine_key,
    engine_key_parts,
    find_engine,
    load_tensorrt,
    probe_environment,
    timing_cache_path,
)
from memo_edge.utils.io import atomic_directory, atomic_write_bytes, atomic_write_json

__all__ = ["build_engine", "build_engines"]

log = logging.getLogger(__name__)


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
    key = engine_key(spec.onnx_sha256, env, options)
    key_dir = package_dir / ENGINES_DIR / key
    engine_file = f"{spec.name}.engine"
    shapes = [list(s) for s in options.profile.shapes(spec.input_tail)]
    meta = {
        "key": key,
        "parts": engine_key_parts(spec.onnx_sha256, env, options),
        "graph": spec.name,
        "engine_file": engine_file,
        "engine_sha256": hashlib.sha256(data).hexdigest(),
        "engine_bytes": len(data),
        "input": {"name": spec.input_name, "tail": list(spec.input_tail), "shapes": shapes},
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
    key = engine_key(spec.onnx_sha256, env, options)
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


