"""The TensorRT engine cache and builder (memo_edge.runtime.engine_cache, engine_build) against a recording fake of the ``tensorrt`` module (no GPU, no TensorRT).

The fakes follow the documented Python API of each version: 10.3 (JetPack 6) still has
NetworkDefinitionCreationFlag.EXPLICIT_BATCH (deprecated, ignored), BuilderFlag.FP16 and
Builder.platform_has_fast_fp16; 11.0 has none of the three; neither has
IBuilderConfig.max_workspace_size (removed in 10), which only the legacy fake offers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from memo_edge.errors import MemoEdgeError
from memo_edge.runtime.engine_build import build_engine, build_engines
from memo_edge.runtime.engine_cache import (
    EngineOptions,
    EngineRecord,
    GpuInfo,
    GraphSpec,
    ShapeProfile,
    TrtEnvironment,
    engine_key,
    find_engine,
    load_tensorrt,
    probe_environment,
    timing_cache_path,
)

MIB = 1 << 20
TAIL = (32, 32, 3)


# ---------------------------------------------------------------------------------------------
# The recording fake


class FakeTimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)

    def serialize(self) -> memoryview:  # IHostMemory is a buffer, not bytes
        return memoryview(self.data)


class FakeProfile:
    def __init__(self, calls: list) -> None:
        self.calls = calls
        self.shapes: dict[str, Any] = {}

    def set_shape(self, name: str, min: tuple, opt: tuple, max: tuple) -> None:  # noqa: A002 (TensorRT's names)
        self.calls.append(("set_shape", name, tuple(min), tuple(opt), tuple(max)))
        self.shapes[name] = [list(min), list(opt), list(max)]


class FakeConfig:
    """IBuilderConfig of 10.x/11.x: attributes that do not exist there cannot be set either."""

    _ATTRS = {"calls", "flags", "pools", "profiles", "timing_cache", "workspace", "reject"}

    def __init__(self, calls: list, reject_timing_cache: bool = False) -> None:
        self.calls, self.flags, self.pools, self.profiles = calls, [], {}, []
        self.timing_cache, self.workspace, self.reject = None, None, reject_timing_cache

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._ATTRS:
            raise AttributeError(f"'IBuilderConfig' object has no attribute '{name}'")
        object.__setattr__(self, name, value)

    def set_flag(self, flag: str) -> None:
        self.calls.append(("set_flag", flag))
        self.flags.append(flag)

    def set_memory_pool_limit(self, pool: str, nbytes: int) -> None:
        self.calls.append(("set_memory_pool_limit", pool, nbytes))
        self.pools[pool] = nbytes

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.calls.append(("add_optimization_profile",))
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, blob: bytes) -> FakeTimingCache:
        self.calls.append(("create_timing_cache", bytes(blob)))
        return FakeTimingCache(blob)

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        self.calls.append(("set_timing_cache", cache.data, ignore_mismatch))
        if self.reject and cache.data:  # a cache from another GPU or TensorRT build
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> FakeTimingCache | None:
        return self.timing_cache


class LegacyConfig(FakeConfig):
    """TensorRT < 8.4: no memory pools, only max_workspace_size."""

    _ATTRS = FakeConfig._ATTRS | {"max_workspace_size"}

    def __getattribute__(self, name: str) -> Any:
        if name == "set_memory_pool_limit":
            raise AttributeError(name)
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "max_workspace_size":
            self.calls.append(("max_workspace_size", value))
            object.__setattr__(self, "workspace", value)
        super().__setattr__(name, value)


@dataclass
class FakeSettings:
    """What one fake TensorRT offers and how its parser and builder behave; ``calls`` records all."""

    version: str = "10.3.0"
    explicit_batch: bool = True
    fp16_flag: bool = True
    fast_fp16: bool | None = True  # None: Builder.platform_has_fast_fp16 does not exist (11.x)
    legacy_config: bool = False
    parse_ok: bool = True
    parser_errors: tuple[str, ...] = ()
    build_ok: bool = True
    reject_timing_cache: bool = False
    calls: list[tuple] = field(default_factory=list)


class FakeLogger:
    WARNING = "WARNING"

    def __init__(self, severity: str) -> None:
        self.severity = severity


class FakeNetwork:
    def __init__(self, flags: int) -> None:
        self.flags = flags


class FakeParserError:
    def __init__(self, desc: str) -> None:
        self.desc = desc

    def __str__(self) -> str:
        return f"In node 3 (parseGraph): {self.desc}"


class FakeOnnxParser:
    def __init__(self, settings: FakeSettings, network: FakeNetwork, logger: FakeLogger) -> None:
        self.settings, self.num_errors = settings, 0
        settings.calls.append(("OnnxParser", logger.severity))

    def parse(self, data: bytes, path: str | None = None) -> bool:
        self.settings.calls.append(("parse", hashlib.sha256(data).hexdigest(), path))
        self.num_errors = 0 if self.settings.parse_ok else len(self.settings.parser_errors)
        return self.settings.parse_ok

    def get_error(self, i: int) -> FakeParserError:
        return FakeParserError(self.settings.parser_errors[i])


class FakeBuilder:
    def __init__(self, settings: FakeSettings, logger: FakeLogger) -> None:
        self.settings, self.calls = settings, settings.calls
        self.calls.append(("Builder", logger.severity))

    @property
    def platform_has_fast_fp16(self) -> bool:
        if self.settings.fast_fp16 is None:
            raise AttributeError("platform_has_fast_fp16")  # removed in TensorRT 11
        return self.settings.fast_fp16

    def create_network(self, flags: int = 0) -> FakeNetwork:
        self.calls.append(("create_network", flags))
        return FakeNetwork(flags)

    def create_builder_config(self) -> FakeConfig:
        config_class = LegacyConfig if self.settings.legacy_config else FakeConfig
        return config_class(self.calls, self.settings.reject_timing_cache)

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile(self.calls)

    def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> memoryview | None:
        self.calls.append(("build_serialized_network",))
        if not self.settings.build_ok:
            return None
        timing_in = None
        if config.timing_cache is not None:
            timing_in = config.timing_cache.data.decode()
            config.timing_cache.data += b"[timed]"  # the build adds its tactic timings
        engine = {
            "trt": self.settings.version,
            "network_flags": network.flags,
            "flags": sorted(config.flags),
            "pools": config.pools,
            "max_workspace_size": config.workspace,
            "profiles": [p.shapes for p in config.profiles],
            "timing_in": timing_in,
        }
        return memoryview(json.dumps(engine, sort_keys=True).encode())  # IHostMemory is a buffer


def make_trt(version: str = "10.3.0", **behaviour: Any) -> SimpleNamespace:
    """A ``tensorrt`` stand-in recording every call in ``.calls``; its engines are JSON of the config."""
    settings = FakeSettings(version=version, **behaviour)
    creation = {"STRONGLY_TYPED": 1}
    if settings.explicit_batch:
        creation = {"EXPLICIT_BATCH": 0, **creation}
    builder_flags = {"REFIT": "REFIT", "TF32": "TF32"}
    if settings.fp16_flag:
        builder_flags["FP16"] = "FP16"
    return SimpleNamespace(
        __version__=version,
        calls=settings.calls,
        Logger=FakeLogger,
        Builder=functools.partial(FakeBuilder, settings),
        OnnxParser=functools.partial(FakeOnnxParser, settings),
        NetworkDefinitionCreationFlag=SimpleNamespace(**creation),
        BuilderFlag=SimpleNamespace(**builder_flags),
        MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
    )


def trt_10() -> SimpleNamespace:
    return make_trt("10.3.0")


def trt_11() -> SimpleNamespace:
    return make_trt("11.0.0", explicit_batch=False, fp16_flag=False, fast_fp16=None)


def decode(engine: bytes) -> dict[str, Any]:
    return json.loads(engine.decode())


def names(calls: list[tuple]) -> list[str]:
    return [c[0] for c in calls]


# ---------------------------------------------------------------------------------------------
# Fixtures


def write_onnx(path: Path, content: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return hashlib.sha256(content).hexdigest()


def graph(tmp_path: Path, name: str = "trunk", *, content: bytes | None = None) -> GraphSpec:
    onnx = tmp_path / "onnx" / f"{name}.onnx"
    sha = write_onnx(onnx, content if content is not None else f"onnx bytes of {name}".encode())
    return GraphSpec(name=name, onnx_path=onnx, onnx_sha256=sha, input_name="images", input_tail=TAIL)


ENV = TrtEnvironment(tensorrt_version="10.3.0", compute_capability="8.7", gpu_name="Orin")
ENV_11 = TrtEnvironment(tensorrt_version="11.0.0", compute_capability="9.0", gpu_name="NVIDIA H100 80GB HBM3")
SHA = "a" * 64


# ---------------------------------------------------------------------------------------------
# Options


def test_profile_shapes_are_exact() -> None:
    profile = ShapeProfile(1, 8, 32)
    assert profile.shapes((32, 32, 3)) == ((1, 32, 32, 3), (8, 32, 32, 3), (32, 32, 32, 3))
    assert profile.to_json() == {"min_batch": 1, "opt_batch": 8, "max_batch": 32}
    assert ShapeProfile() == profile


@pytest.mark.parametrize("bounds", [(0, 1, 1), (2, 1, 4), (1, 9, 8), (1, 1, 0), (1.0, 2, 3), (True, 2, 3), (-1, 1, 1)])
def test_profile_rejects_bad_bounds(bounds: tuple) -> None:
    with pytest.raises(ValueError, match="1 <= min <= opt <= max"):
        ShapeProfile(*bounds)


def test_profile_accepts_equal_bounds_and_rejects_bad_tail() -> None:
    assert ShapeProfile(4, 4, 4).shapes((10,)) == ((4, 10), (4, 10), (4, 10))
    with pytest.raises(ValueError, match="positive integers"):
        ShapeProfile().shapes((32, 0, 3))


def test_engine_options_validation() -> None:
    assert EngineOptions().precision == "fp32" and EngineOptions().workspace_mib == 1024
    with pytest.raises(ValueError, match="fp32, fp16"):
        EngineOptions(precision="int8")
    with pytest.raises(ValueError, match="workspace_mib"):
        EngineOptions(workspace_mib=0)
    with pytest.raises(ValueError, match="ShapeProfile"):
        EngineOptions(profile=(1, 8, 32))  # type: ignore[arg-type]


def test_graph_spec_validation(tmp_path: Path) -> None:
    spec = GraphSpec("branch-0", str(tmp_path / "b.onnx"), SHA, "x", [8, 8, 3])  # type: ignore[arg-type]
    assert spec.onnx_path == tmp_path / "b.onnx" and spec.input_tail == (8, 8, 3)
    with pytest.raises(ValueError, match="graph name"):
        GraphSpec("../evil", tmp_path, SHA, "x", TAIL)
    with pytest.raises(ValueError, match="64 lower-case hex"):
        GraphSpec("trunk", tmp_path, "abc", "x", TAIL)
    with pytest.raises(ValueError, match="positive integers"):
        GraphSpec("trunk", tmp_path, SHA, "x", (32, -1, 3))


# ---------------------------------------------------------------------------------------------
# build_engine: what gets configured per TensorRT version


def test_build_on_trt10_uses_explicit_batch_and_memory_pool(tmp_path: Path) -> None:
    trt, spec = trt_10(), graph(tmp_path)
    engine = decode(build_engine(spec, EngineOptions(), trt=trt))
    assert ("create_network", 1) in trt.calls  # 1 << EXPLICIT_BATCH(0)
    assert ("Builder", "WARNING") in trt.calls and ("OnnxParser", "WARNING") in trt.calls
    assert ("set_memory_pool_limit", "WORKSPACE", 1024 * MIB) in trt.calls
    assert ("set_shape", "images", (1, 32, 32, 3), (8, 32, 32, 3), (32, 32, 32, 3)) in trt.calls
    assert ("parse", spec.onnx_sha256, str(spec.onnx_path)) in trt.calls
    assert "set_flag" not in names(trt.calls)  # fp32: no builder flags at all
    assert engine["network_flags"] == 1 and engine["flags"] == [] and engine["max_workspace_size"] is None
    assert engine["pools"] == {"WORKSPACE": 1024 * MIB}
    assert engine["profiles"] == [{"images": [[1, 32, 32, 3], [8, 32, 32, 3], [32, 32, 32, 3]]}]


def test_build_on_trt10_fp16(tmp_path: Path) -> None:
    trt = trt_10()
    options = EngineOptions(precision="fp16", profile=ShapeProfile(2, 4, 16), workspace_mib=64)
    engine = decode(build_engine(graph(tmp_path, "branch-0"), options, trt=trt))
    assert engine["flags"] == ["FP16"]
    assert engine["pools"] == {"WORKSPACE": 64 * MIB}
    assert engine["profiles"] == [{"images": [[2, 32, 32, 3], [4, 32, 32, 3], [16, 32, 32, 3]]}]


def test_no_engine_is_built_refittable(tmp_path: Path) -> None:
    # Nothing refits engines (a new branch gets its own engine), so none pays REFIT's build and speed cost.
    trt = trt_10()
    for name in ("trunk", "branch-0", "full"):
        assert decode(build_engine(graph(tmp_path, name), EngineOptions(precision="fp16"), trt=trt))["flags"] == ["FP16"]
    assert ("set_flag", "REFIT") not in trt.calls


def test_build_on_trt11_has_no_explicit_batch_and_no_max_workspace_size(tmp_path: Path) -> None:
    trt = trt_11()
    engine = decode(build_engine(graph(tmp_path, "branch-1"), EngineOptions(workspace_mib=256), trt=trt))
    assert ("create_network", 0) in trt.calls
    assert engine["network_flags"] == 0 and engine["flags"] == []
    assert engine["pools"] == {"WORKSPACE": 256 * MIB}
    assert "max_workspace_size" not in names(trt.calls)


def test_fp16_on_trt11_is_a_clear_error(tmp_path: Path) -> None:
    trt = trt_11()
    with pytest.raises(MemoEdgeError, match="fp16 is not supported with TensorRT 11.0.0") as info:
        build_engine(graph(tmp_path), EngineOptions(precision="fp16"), trt=trt)
    assert "BuilderFlag.FP16 was removed in TensorRT 11" in str(info.value)
    assert "build_serialized_network" not in names(trt.calls)


def test_fp16_without_fast_fp16_is_a_clear_error(tmp_path: Path) -> None:
    trt = make_trt("10.3.0", fast_fp16=False)
    with pytest.raises(MemoEdgeError, match="fp16 is not supported on this GPU"):
        build_engine(graph(tmp_path), EngineOptions(precision="fp16"), trt=trt)
    assert "build_serialized_network" not in names(trt.calls)


def test_fp16_when_builder_cannot_say_trusts_the_flag(tmp_path: Path) -> None:
    # A 10.x release that dropped platform_has_fast_fp16 but kept BuilderFlag.FP16.
    trt = make_trt("10.16.0", fast_fp16=None)
    assert decode(build_engine(graph(tmp_path), EngineOptions(precision="fp16"), trt=trt))["flags"] == ["FP16"]


def test_legacy_tensorrt_sets_max_workspace_size(tmp_path: Path) -> None:
    trt = make_trt("8.2.5", legacy_config=True)
    engine = decode(build_engine(graph(tmp_path), EngineOptions(workspace_mib=512), trt=trt))
    assert ("max_workspace_size", 512 * MIB) in trt.calls
    assert engine["max_workspace_size"] == 512 * MIB and engine["pools"] == {}


def test_parser_failure_lists_the_parser_errors(tmp_path: Path) -> None:
    trt = make_trt(parse_ok=False, parser_errors=("No importer registered for op: FancyOp", "Invalid input shape"))
    with pytest.raises(MemoEdgeError) as info:
        build_engine(graph(tmp_path), EngineOptions(), trt=trt)
    message = str(info.value)
    assert "could not parse ONNX graph trunk" in message
    assert "No importer registered for op: FancyOp" in message and "Invalid input shape" in message
    assert "build_serialized_network" not in names(trt.calls)


def test_build_returning_none_is_an_error(tmp_path: Path) -> None:
    trt = make_trt(build_ok=False)
    with pytest.raises(MemoEdgeError, match=r"TensorRT failed to build trunk \(see the TensorRT log above\)"):
        build_engine(graph(tmp_path), EngineOptions(), trt=trt)


def test_onnx_changed_after_its_sha_was_recorded(tmp_path: Path) -> None:
    spec = graph(tmp_path)
    spec.onnx_path.write_bytes(b"edited afterwards")
    with pytest.raises(MemoEdgeError, match="does not match its recorded sha256"):
        build_engine(spec, EngineOptions(), trt=trt_10())


def test_timing_cache_is_loaded_and_written_back(tmp_path: Path) -> None:
    trt, cache = trt_10(), tmp_path / "t.cache"
    first = decode(build_engine(graph(tmp_path, "trunk"), EngineOptions(), trt=trt, timing_cache=cache))
    assert first["timing_in"] == "" and cache.read_bytes() == b"[timed]"
    second = decode(build_engine(graph(tmp_path, "full"), EngineOptions(), trt=trt, timing_cache=cache))
    assert second["timing_in"] == "[timed]" and cache.read_bytes() == b"[timed][timed]"
    assert [c for c in trt.calls if c[0] == "create_timing_cache"] == [("create_timing_cache", b""), ("create_timing_cache", b"[timed]")]
    assert ("set_timing_cache", b"[timed]", False) in trt.calls  # ignore_mismatch=False


def test_mismatched_timing_cache_is_replaced_by_a_fresh_one(tmp_path: Path) -> None:
    trt, cache = make_trt(reject_timing_cache=True), tmp_path / "t.cache"
    cache.write_bytes(b"from another GPU")
    engine = decode(build_engine(graph(tmp_path), EngineOptions(), trt=trt, timing_cache=cache))
    assert engine["timing_in"] == "" and cache.read_bytes() == b"[timed]"
    sets = [c for c in trt.calls if c[0] == "set_timing_cache"]
    assert sets == [("set_timing_cache", b"from another GPU", False), ("set_timing_cache", b"", False)]


def test_failed_build_leaves_the_timing_cache_alone(tmp_path: Path) -> None:
    cache = tmp_path / "t.cache"
    cache.write_bytes(b"old")
    with pytest.raises(MemoEdgeError):
        build_engine(graph(tmp_path), EngineOptions(), trt=make_trt(build_ok=False), timing_cache=cache)
    assert cache.read_bytes() == b"old"


# ---------------------------------------------------------------------------------------------
# Keys


def test_engine_key_is_stable_and_tracks_every_part() -> None:
    base = engine_key(SHA, ENV, EngineOptions())
    assert base == engine_key(SHA, TrtEnvironment("10.3.0", "8.7", "Orin"), EngineOptions(profile=ShapeProfile(1, 8, 32)))
    assert len(base) == 32 and int(base, 16) >= 0
    variants = {
        "onnx sha": engine_key("b" * 64, ENV, EngineOptions()),
        "tensorrt version": engine_key(SHA, TrtEnvironment("10.3.1", "8.7", "Orin"), EngineOptions()),
        "compute capability": engine_key(SHA, TrtEnvironment("10.3.0", "9.0", "Orin"), EngineOptions()),
        "precision": engine_key(SHA, ENV, EngineOptions(precision="fp16")),
        "profile min": engine_key(SHA, ENV, EngineOptions(profile=ShapeProfile(2, 8, 32))),
        "profile opt": engine_key(SHA, ENV, EngineOptions(profile=ShapeProfile(1, 16, 32))),
        "profile max": engine_key(SHA, ENV, EngineOptions(profile=ShapeProfile(1, 8, 64))),
    }
    for part, key in variants.items():
        assert key != base, f"changing the {part} must change the key"
    assert len(set(variants.values())) == len(variants)


def test_engine_key_ignores_the_workspace() -> None:
    assert engine_key(SHA, ENV, EngineOptions(workspace_mib=64)) == engine_key(SHA, ENV, EngineOptions(workspace_mib=4096))


def test_timing_cache_path_names_tensorrt_and_sm(tmp_path: Path) -> None:
    assert timing_cache_path(tmp_path, ENV) == tmp_path / "engines" / "timing-10.3.0-sm87.cache"
    assert timing_cache_path(tmp_path, ENV_11).name == "timing-11.0.0-sm90.cache"


# ---------------------------------------------------------------------------------------------
# build_engines / find_engine


def builds(trt: SimpleNamespace) -> int:
    return names(trt.calls).count("build_serialized_network")


def test_build_engines_writes_engine_and_json_then_hits_the_cache(tmp_path: Path) -> None:
    package, trt = tmp_path / "pkg", trt_10()
    graphs = [graph(tmp_path, "trunk"), graph(tmp_path, "branch-0")]
    records = build_engines(package, graphs, EngineOptions(), env=ENV, trt=trt, progress=False)
    assert [r.name for r in records] == ["trunk", "branch-0"] and all(r.built for r in records)
    assert builds(trt) == 2
    for spec, record in zip(graphs, records):
        assert record.key == engine_key(spec.onnx_sha256, ENV, EngineOptions())
        assert record.path == package / "engines" / record.key / f"{spec.name}.engine"
        meta = json.loads((record.path.parent / "engine.json").read_text())
        assert meta["graph"] == spec.name and meta["key"] == record.key and "refittable" not in meta
        assert meta["parts"]["onnx_sha256"] == spec.onnx_sha256 and meta["parts"]["compute_capability"] == "8.7"
        assert meta["parts"]["precision"] == "fp32" and meta["parts"]["profile"] == ShapeProfile().to_json()
        assert meta["tensorrt_version"] == "10.3.0" and meta["input"]["name"] == "images" and meta["input"]["tail"] == list(TAIL)
        assert meta["engine_sha256"] == hashlib.sha256(record.path.read_bytes()).hexdigest()
        assert isinstance(meta["build_seconds"], float)
        assert find_engine(package, spec, ENV, EngineOptions()) == record.path
    assert decode(records[1].path.read_bytes())["flags"] == []

    again = build_engines(package, graphs, EngineOptions(), env=ENV, trt=trt, progress=False)
    assert builds(trt) == 2  # the fake builder was not called again
    assert [(r.path, r.built) for r in again] == [(r.path, False) for r in records]


def test_new_onnx_sha_gets_a_new_directory(tmp_path: Path) -> None:
    package, trt = tmp_path / "pkg", trt_10()
    old = build_engines(package, [graph(tmp_path, "trunk", content=b"v1")], EngineOptions(), env=ENV, trt=trt, progress=False)[0]
    new = build_engines(package, [graph(tmp_path, "trunk", content=b"v2")], EngineOptions(), env=ENV, trt=trt, progress=False)[0]
    assert new.built and new.key != old.key and new.path.parent != old.path.parent
    assert old.path.is_file() and new.path.is_file() and builds(trt) == 2


def test_other_precision_or_gpu_is_a_new_engine(tmp_path: Path) -> None:
    package, trt, spec = tmp_path / "pkg", trt_10(), graph(tmp_path)
    fp32 = build_engines(package, [spec], EngineOptions(), env=ENV, trt=trt, progress=False)[0]
    fp16 = build_engines(package, [spec], EngineOptions(precision="fp16"), env=ENV, trt=trt, progress=False)[0]
    other_gpu = TrtEnvironment("10.3.0", "9.0", "H100")
    h100 = build_engines(package, [spec], EngineOptions(), env=other_gpu, trt=trt, progress=False)[0]
    assert fp16.built and h100.built and len({fp32.key, fp16.key, h100.key}) == 3
    assert find_engine(package, spec, ENV, EngineOptions(workspace_mib=1)) == fp32.path  # workspace: same engine


def test_timing_cache_shared_by_a_package_build(tmp_path: Path) -> None:
    package, trt = tmp_path / "pkg", trt_10()
    graphs = [graph(tmp_path, "trunk"), graph(tmp_path, "branch-0")]
    records = build_engines(package, graphs, EngineOptions(), env=ENV, trt=trt, progress=False)
    cache = package / "engines" / "timing-10.3.0-sm87.cache"
    assert cache.read_bytes() == b"[timed][timed]"
    assert [decode(r.path.read_bytes())["timing_in"] for r in records] == ["", "[timed]"]
    build_engines(package, [graph(tmp_path, "full")], EngineOptions(), env=ENV, trt=trt, progress=False)
    assert [c[1] for c in trt.calls if c[0] == "create_timing_cache"][-1] == b"[timed][timed]"


def test_damaged_cache_entries_are_rebuilt(tmp_path: Path) -> None:
    package, trt, spec = tmp_path / "pkg", trt_10(), graph(tmp_path)
    record = build_engines(package, [spec], EngineOptions(), env=ENV, trt=trt, progress=False)[0]
    record.path.write_bytes(b"truncated")
    assert find_engine(package, spec, ENV, EngineOptions()) is None
    rebuilt = build_engines(package, [spec], EngineOptions(), env=ENV, trt=trt, progress=False)[0]
    assert rebuilt.built and builds(trt) == 2 and find_engine(package, spec, ENV, EngineOptions()) == rebuilt.path

    meta_path = rebuilt.path.parent / "engine.json"
    meta = json.loads(meta_path.read_text())
    meta["parts"]["tensorrt_version"] = "10.2.0"
    meta_path.write_text(json.dumps(meta))
    assert find_engine(package, spec, ENV, EngineOptions()) is None
    meta_path.write_text("{not json")
    assert find_engine(package, spec, ENV, EngineOptions()) is None


def test_find_engine_before_any_build(tmp_path: Path) -> None:
    assert find_engine(tmp_path, graph(tmp_path), ENV, EngineOptions()) is None


def test_identical_onnx_under_two_names_shares_one_engine(tmp_path: Path) -> None:
    package, trt = tmp_path / "pkg", trt_10()
    a, b = graph(tmp_path, "branch-0", content=b"same"), graph(tmp_path, "branch-1", content=b"same")
    first = build_engines(package, [a, b], EngineOptions(), env=ENV, trt=trt, progress=False)
    assert [r.built for r in first] == [True, False] and first[0].path == first[1].path and builds(trt) == 1


def test_build_engines_with_trt11_fake(tmp_path: Path) -> None:
    trt = trt_11()
    record = build_engines(tmp_path / "pkg", [graph(tmp_path)], EngineOptions(), env=ENV_11, trt=trt, progress=True)[0]
    assert record.built and decode(record.path.read_bytes())["network_flags"] == 0
    assert (tmp_path / "pkg" / "engines" / "timing-11.0.0-sm90.cache").is_file()


def test_build_engines_rejects_duplicate_names_and_version_mismatch(tmp_path: Path) -> None:
    spec = graph(tmp_path)
    with pytest.raises(ValueError, match="unique"):
        build_engines(tmp_path, [spec, spec], EngineOptions(), env=ENV, trt=trt_10(), progress=False)
    with pytest.raises(MemoEdgeError, match="TensorRT 10.3.0 but the loaded module is 11.0.0"):
        build_engines(tmp_path, [spec], EngineOptions(), env=ENV, trt=trt_11(), progress=False)


def test_build_engines_probes_the_environment_when_not_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import memo_edge.runtime.engine_cache as mod

    monkeypatch.setattr(mod, "_cuda_gpu_probe", lambda: GpuInfo("8.7", "Orin"))
    record = build_engines(tmp_path, [graph(tmp_path)], EngineOptions(), trt=trt_10(), progress=False)[0]
    assert record.key == engine_key(graph(tmp_path).onnx_sha256, ENV, EngineOptions())


def test_engine_record_to_json(tmp_path: Path) -> None:
    record = EngineRecord("trunk", "k" * 32, tmp_path / "trunk.engine", False, 0.12345)
    assert record.to_json() == {"name": "trunk", "key": "k" * 32, "path": str(tmp_path / "trunk.engine"), "built": False, "seconds": 0.123}


# ---------------------------------------------------------------------------------------------
# Environment probing


def no_tensorrt() -> Any:
    raise ImportError("No module named 'tensorrt'")


def test_probe_environment_reports_version_and_gpu() -> None:
    env = probe_environment(import_tensorrt=trt_10, gpu_probe=lambda: GpuInfo("8.7", "Orin"))
    assert env == ENV


def test_missing_tensorrt_says_how_to_install() -> None:
    with pytest.raises(MemoEdgeError) as info:
        probe_environment(import_tensorrt=no_tensorrt, gpu_probe=lambda: GpuInfo("8.7", "Orin"))
    assert "pip install 'memo-edge[trt]'" in str(info.value) and "JetPack 6" in str(info.value)
    assert "no NVIDIA GPU" not in str(info.value)


def test_missing_gpu_says_so() -> None:
    with pytest.raises(MemoEdgeError) as info:
        probe_environment(import_tensorrt=trt_10, gpu_probe=lambda: None)
    assert "no NVIDIA GPU visible" in str(info.value) and "built on the GPU that will run them" in str(info.value)
    assert "pip install" not in str(info.value)


def test_missing_both_is_one_message_naming_both() -> None:
    with pytest.raises(MemoEdgeError) as info:
        probe_environment(import_tensorrt=no_tensorrt, gpu_probe=lambda: None)
    message = str(info.value)
    assert "pip install 'memo-edge[trt]'" in message and "no NVIDIA GPU visible" in message
    assert "\n" not in message


def test_load_tensorrt_without_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(MemoEdgeError, match=r"TensorRT is not installed: pip install 'memo-edge\[trt\]'"):
        load_tensorrt()
    with pytest.raises(MemoEdgeError, match="pip install"):
        probe_environment(gpu_probe=lambda: GpuInfo("9.0", "H100"))


def test_export_probes_the_gpu_through_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from memo_edge.export.exporter import torch_gpu_probe

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MemoEdgeError, match="no NVIDIA GPU visible"):
        probe_environment(import_tensorrt=trt_10, gpu_probe=torch_gpu_probe)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 7))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Orin")
    assert probe_environment(import_tensorrt=trt_10, gpu_probe=torch_gpu_probe) == ENV


def test_the_default_gpu_probe_needs_no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import memo_edge.runtime.cuda as cuda

    monkeypatch.setattr(cuda, "load_cudart", lambda: "cudart")
    monkeypatch.setattr(cuda, "cuda_gpu_probe", lambda rt: GpuInfo("8.7", "Orin") if rt == "cudart" else None)
    assert probe_environment(import_tensorrt=trt_10) == ENV


def test_module_imports_without_tensorrt() -> None:
    code = "import sys; sys.modules['tensorrt'] = None; import memo_edge.runtime.engine_cache as m; print(m.ShapeProfile().max_batch)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1], check=True)
    assert out.stdout.strip() == "32"
