"""Runtime backends: the table, ``auto``, clear errors for what is missing, ONNX Runtime on a real
package, and the GPU backends against recording fakes of onnxruntime, tensorrt and cuda-python.

The TensorRT fake follows the TensorRT 10 Python API the backend uses (Runtime.deserialize_cuda_engine,
ICudaEngine.num_io_tensors / get_tensor_name / get_tensor_mode / get_tensor_dtype, IExecutionContext
.set_input_shape / get_tensor_shape / set_tensor_address / execute_async_v3) plus the builder calls of
runtime/engine_build.py; the cuda-python fake returns ``(error, *values)`` tuples like cuda.bindings.runtime
and keeps "device memory" in bytearrays, so the data really travels host -> device -> host.
"""

from __future__ import annotations

import ctypes
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from conftest import SPEC, make_package
from memo_edge.errors import InputError, MemoEdgeError
from memo_edge.export.graphs import Preprocess
from memo_edge.runtime.engine_cache import ENGINES_DIR, ShapeProfile, engine_graphs
from memo_edge.model import MemoNet
from memo_edge.runtime import backends
from memo_edge.runtime import cuda as runtime_cuda
from memo_edge.runtime.backends import (
    AUTO_ORDER,
    BACKENDS,
    OrtCpuBackend,
    OrtCudaBackend,
    OrtTrtBackend,
    TensorRTBackend,
    create_backend,
)
from memo_edge.runtime.package import PackageVersion, open_package

@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[MemoNet, PackageVersion]:
    return make_package(tmp_path_factory.mktemp("backends") / "pkg")


@pytest.fixture
def package(packaged: tuple[MemoNet, PackageVersion]) -> PackageVersion:
    return packaged[1]


def images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *SPEC.shape), dtype=np.uint8)


def _gpu_here() -> bool:
    return any(BACKENDS[name].available() for name in ("tensorrt", "ort-trt", "ort-cuda"))


cpu_only = pytest.mark.skipif(_gpu_here(), reason="this machine has a GPU backend")


# ---------------------------------------------------------------------------------------------
# The table, auto and errors


def test_every_backend_is_in_the_table_under_its_name() -> None:
    classes = (OrtCpuBackend, OrtCudaBackend, OrtTrtBackend, TensorRTBackend)
    assert {cls.name: cls for cls in classes} == BACKENDS
    assert set(AUTO_ORDER) == set(BACKENDS) and AUTO_ORDER[0] == "tensorrt" and AUTO_ORDER[-1] == "ort-cpu"


@cpu_only
def test_auto_picks_ort_cpu_here_and_says_so(package: PackageVersion, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="memo_edge.runtime.backends"):
        backend = create_backend("auto", package, fp16=True)  # fp16 means nothing on the CPU: dropped, logged
    assert isinstance(backend, OrtCpuBackend) and backend.name == "ort-cpu"
    assert "backend auto: using ort-cpu (ignoring fp16)" in caplog.text
    assert [r.levelno for r in caplog.records if "ignoring" in r.getMessage()] == [logging.WARNING]


def _cuda_python_sees_a_gpu() -> bool:
    try:
        return runtime_cuda.cuda_gpu_probe(runtime_cuda.load_cudart()) is not None
    except MemoEdgeError:
        return False


# A GPU machine without TensorRT (the lent GPU machines) has no GPU backend either, yet cuda-python finds
# its GPU there: the tensorrt line then names TensorRT alone.
_TENSORRT_MISSING = ["TensorRT is not installed: pip install 'memo-edge[trt]'"] + (
    [] if _cuda_python_sees_a_gpu() else ["no NVIDIA GPU visible"])


@cpu_only
@pytest.mark.parametrize("name, fragments", [
    ("ort-cuda", ["CUDAExecutionProvider", "pip install 'memo-edge[gpu]'"]),
    ("ort-trt", ["TensorrtExecutionProvider", "pip install 'memo-edge[gpu]'", "TensorRT"]),
    ("tensorrt", _TENSORRT_MISSING),
])
def test_unavailable_backend_says_what_is_missing(package: PackageVersion, name: str, fragments: list[str]) -> None:
    with pytest.raises(MemoEdgeError) as info:
        create_backend(name, package)
    message = str(info.value)
    assert message.startswith(f"backend {name} is not available here: ")
    assert all(f in message for f in fragments), message
    assert "Traceback" not in message and "\n" not in message
    assert not BACKENDS[name].available()


def test_unknown_backend_lists_the_valid_ones(package: PackageVersion) -> None:
    with pytest.raises(InputError, match="unknown backend 'onnx'; choose from auto, ort-cpu, ort-cuda, ort-trt, tensorrt"):
        create_backend("onnx", package)


def test_an_option_the_named_backend_does_not_take_is_refused(package: PackageVersion) -> None:
    with pytest.raises(InputError, match="backend ort-cpu has no option fp16"):
        create_backend("ort-cpu", package, fp16=True)


def test_no_backend_at_all_names_every_reason(monkeypatch: pytest.MonkeyPatch, package: PackageVersion) -> None:
    for name, cls in BACKENDS.items():
        monkeypatch.setattr(cls, "missing", classmethod(lambda c: f"{c.name} lacks X"))
    with pytest.raises(MemoEdgeError) as info:
        create_backend("auto", package)
    assert all(f"{name}: {name} lacks X" in str(info.value) for name in AUTO_ORDER)


# ---------------------------------------------------------------------------------------------
# ONNX Runtime on the CPU, on a real package


def test_ort_cpu_full_graph_equals_the_split_path(packaged: tuple[MemoNet, PackageVersion]) -> None:
    model, package = packaged
    backend = create_backend("ort-cpu", package)
    assert set(backend._graphs) == {"full"}  # logits needs only the full graph: the split ones load on use
    x = images(7)
    full, split = backend.logits(x), backend.head(backend.features(x))
    assert full.shape == (7, model.num_classes)
    assert np.abs(full - split).max() <= 1e-5
    no_full = create_backend("ort-cpu", package, use_full=False)
    assert no_full.full_logits(x) is None and set(no_full._graphs) == {"trunk", "branch-0", "branch-1"}
    assert np.abs(no_full.logits(x) - split).max() <= 1e-5
    with torch.no_grad():
        reference = model(Preprocess(SPEC.mean, SPEC.std)(torch.from_numpy(x))).logits.numpy()
    assert np.allclose(full, reference, atol=1e-4)


def test_split_sessions_do_not_spin_the_full_one_may(package: PackageVersion) -> None:
    backend = create_backend("ort-cpu", package, threads=1)
    assert backend.session_options("trunk").get_session_config_entry("session.intra_op.allow_spinning") == "0"
    full = backend.session_options("full")
    assert full.intra_op_num_threads == 1
    with pytest.raises(RuntimeError, match="does not have configuration with key"):  # left at the default
        full.get_session_config_entry("session.intra_op.allow_spinning")


def test_hints_reach_only_the_backends_that_take_them(package: PackageVersion, caplog: pytest.LogCaptureFixture) -> None:
    quiet = create_backend("ort-cpu", package, hints={"spinning": False, "no-such-option": 1})  # dropped silently
    assert quiet.session_options("full").get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert create_backend("ort-cpu", package, spinning=True, hints={"spinning": False}).spinning  # asked for wins
    with caplog.at_level(logging.INFO, logger="memo_edge"):
        assert create_backend("auto", package, hints={"spinning": False, "fp16": True}).spinning is False
    assert "ignoring" not in caplog.text  # a hint is not an option the user asked for


def test_images_of_the_wrong_shape_or_type_are_refused(package: PackageVersion) -> None:
    backend = create_backend("ort-cpu", package)
    with pytest.raises(InputError, match=r"uint8 \[N, 32, 32, 3\]"):
        backend.logits(np.zeros((2, 3, 32, 32), np.uint8))
    with pytest.raises(InputError, match="float32"):
        backend.logits(np.zeros((2, 32, 32, 3), np.float32))


def test_engine_graphs_describe_every_graph(package: PackageVersion) -> None:
    specs = {g.name: g for g in engine_graphs(package)}
    assert set(specs) == {"trunk", "full", *(f"branch-{e.task}" for e in package.manifest.branches())}
    assert specs["trunk"].input_name == "image" and specs["trunk"].input_tail == package.manifest.input.shape


# ---------------------------------------------------------------------------------------------
# A recording fake of onnxruntime: the GPU execution providers


class FakeSessionOptions:
    def __init__(self) -> None:
        self.entries: dict[str, str] = {}
        self.intra_op_num_threads = 0
        self.graph_optimization_level = None

    def add_session_config_entry(self, key: str, value: str) -> None:
        self.entries[key] = value


def fake_onnxruntime(providers: list[str], *, active: list[str] | None = None) -> SimpleNamespace:
    sessions: list[dict[str, Any]] = []

    class InferenceSession:
        def __init__(self, path: str, sess_options: FakeSessionOptions, providers: list[Any]) -> None:
            self.record = {"path": path, "options": sess_options, "providers": providers}
            sessions.append(self.record)
            names = [p if isinstance(p, str) else p[0] for p in providers]
            self._active = names if active is None else active

        def get_providers(self) -> list[str]:
            return self._active

        def get_inputs(self) -> list[SimpleNamespace]:
            return [SimpleNamespace(name="image")]

        def run(self, outputs: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            return [np.zeros((len(feeds["image"]), 6), np.float32)]

    return SimpleNamespace(__version__="1.20.1", sessions=sessions, SessionOptions=FakeSessionOptions,
                           GraphOptimizationLevel=SimpleNamespace(ORT_ENABLE_ALL="ALL"), InferenceSession=InferenceSession,
                           get_available_providers=lambda: list(providers))


GPU_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize("fp16", [False, True])
def test_ort_trt_caches_engines_inside_the_package(monkeypatch: pytest.MonkeyPatch, package: PackageVersion,
                                                   fp16: bool) -> None:
    ort = fake_onnxruntime(GPU_PROVIDERS)
    monkeypatch.setattr(backends.ort, "load_onnxruntime", lambda: ort)
    backend = create_backend("ort-trt", package, **({"fp16": True} if fp16 else {}))
    (session,) = ort.sessions  # the full graph only
    assert session["path"] == str(package.path(package.manifest.file("full")))
    (trt_name, options), *rest = session["providers"]
    assert trt_name == "TensorrtExecutionProvider" and rest == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert options["trt_engine_cache_enable"] is True and options["trt_fp16_enable"] is fp16
    cache = Path(options["trt_engine_cache_path"])
    assert cache == backend.cache_dir and cache.is_dir()
    assert cache.parent == package.root / ENGINES_DIR / "ort-trt"
    assert cache.name.startswith("ort1.20.1-") and cache.name.endswith("fp16" if fp16 else "fp32")
    assert backend.logits(images(2)).shape == (2, 6)


def test_ort_cuda_puts_cuda_first_then_cpu(monkeypatch: pytest.MonkeyPatch, package: PackageVersion) -> None:
    ort = fake_onnxruntime(GPU_PROVIDERS)
    monkeypatch.setattr(backends.ort, "load_onnxruntime", lambda: ort)
    create_backend("ort-cuda", package, use_full=False)
    assert len(ort.sessions) == 3  # trunk and two branches
    assert all(s["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"] for s in ort.sessions)


def test_auto_prefers_ort_trt_over_ort_cuda(monkeypatch: pytest.MonkeyPatch, package: PackageVersion) -> None:
    monkeypatch.setattr(backends.ort, "load_onnxruntime", lambda: fake_onnxruntime(GPU_PROVIDERS))
    monkeypatch.setattr(TensorRTBackend, "missing", classmethod(lambda cls: "no tensorrt"))
    assert create_backend("auto", package).name == "ort-trt"
    monkeypatch.setattr(backends.ort, "load_onnxruntime", lambda: fake_onnxruntime(GPU_PROVIDERS[1:]))
    assert create_backend("auto", package).name == "ort-cuda"


def test_a_gpu_provider_that_falls_back_to_the_cpu_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                              package: PackageVersion) -> None:
    ort = fake_onnxruntime(GPU_PROVIDERS, active=["CPUExecutionProvider"])
    monkeypatch.setattr(backends.ort, "load_onnxruntime", lambda: ort)
    with pytest.raises(MemoEdgeError, match="could not enable CUDAExecutionProvider for graph full"):
        create_backend("ort-cuda", package)


# ---------------------------------------------------------------------------------------------
# Recording fakes of tensorrt and cuda-python: the native TensorRT backend


class FakeCudart:
    """cuda.bindings.runtime: (error, *values) tuples; device memory in bytearrays, keyed by address."""

    def __init__(self, devices: int = 1) -> None:
        self.cudaError_t = SimpleNamespace(cudaSuccess=0, cudaErrorNoDevice=100)
        self.cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice="H2D", cudaMemcpyDeviceToHost="D2H")
        self.devices, self.memory, self.calls = devices, {}, []
        self._next = 0x1000

    def cudaGetDeviceCount(self) -> tuple[int, int]:
        return (0, self.devices) if self.devices else (self.cudaError_t.cudaErrorNoDevice, 0)

    def cudaGetDeviceProperties(self, device: int) -> tuple[int, SimpleNamespace]:
        return 0, SimpleNamespace(major=8, minor=7, name=b"Orin\0\0\0")

    def cudaStreamCreate(self) -> tuple[int, int]:
        self.calls.append(("cudaStreamCreate",))
        return 0, 77

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:
        self.calls.append(("cudaStreamSynchronize", stream))
        return (0,)

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:
        self.calls.append(("cudaStreamDestroy", stream))
        return (0,)

    def cudaMalloc(self, nbytes: int) -> tuple[int, int]:
        self.calls.append(("cudaMalloc", nbytes))
        ptr, self._next = self._next, self._next + nbytes + 0x100
        self.memory[ptr] = bytearray(nbytes)
        return 0, ptr

    def cudaFree(self, ptr: int) -> tuple[int]:
        self.calls.append(("cudaFree", ptr))
        del self.memory[ptr]
        return (0,)

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: str, stream: int) -> tuple[int]:
        self.calls.append(("cudaMemcpyAsync", kind, count, stream))
        if kind == "H2D":
            self.memory[dst][:count] = ctypes.string_at(src, count)
        else:
            ctypes.memmove(dst, bytes(self.memory[src][:count]), count)
        return (0,)


def _onnx_io(data: bytes) -> dict[str, Any]:
    import onnx

    graph = onnx.load_from_string(data).graph
    out = graph.output[0]
    return {"output": out.name, "output_tail": [d.dim_value for d in out.type.tensor_type.shape.dim[1:]]}


class FakeBuilderConfig:
    def __init__(self) -> None:
        self.flags: list[str] = []
        self.profiles: list[dict[str, Any]] = []

    def set_memory_pool_limit(self, pool: str, nbytes: int) -> None:
        self.workspace = nbytes

    def set_flag(self, flag: str) -> None:
        self.flags.append(flag)

    def add_optimization_profile(self, profile: SimpleNamespace) -> int:
        self.profiles.append(profile.shapes)
        return 0


class FakeTrt:
    """tensorrt 10.x: the builder calls of runtime/engine_build.py and the runtime calls of the backend."""

    __version__ = "10.3.0"

    def __init__(self, gpu: FakeCudart) -> None:
        self.gpu, self.calls = gpu, []
        self.Logger = type("Logger", (), {"WARNING": "W", "__init__": lambda s, severity="W": None})
        self.TensorIOMode = SimpleNamespace(INPUT="IN", OUTPUT="OUT")
        self.BuilderFlag = SimpleNamespace(FP16="FP16", REFIT="REFIT")
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")

    @staticmethod
    def nptype(dtype: str) -> type:
        return {"UINT8": np.uint8, "FLOAT": np.float32}[dtype]

    # -- building (runtime/engine_build.py) -------------------------------------------------------
    def Builder(self, logger: Any) -> SimpleNamespace:  # noqa: N802 (TensorRT's names)
        def build(network: SimpleNamespace, config: FakeBuilderConfig) -> memoryview:
            self.calls.append(("build", network.io["output"]))
            (shapes,) = config.profiles
            engine = {**network.io, "shapes": shapes, "flags": config.flags}
            return memoryview(json.dumps(engine).encode())

        return SimpleNamespace(
            platform_has_fast_fp16=True,
            create_network=lambda flags=0: SimpleNamespace(io={}),
            create_builder_config=FakeBuilderConfig,
            create_optimization_profile=lambda: _FakeProfile(),
            build_serialized_network=build,
        )

    def OnnxParser(self, network: SimpleNamespace, logger: Any) -> SimpleNamespace:  # noqa: N802
        def parse(data: bytes, path: str | None = None) -> bool:
            network.io.update(_onnx_io(data))
            return True

        return SimpleNamespace(parse=parse, num_errors=0)

    # -- running -----------------------------------------------------------------------------
    def Runtime(self, logger: Any) -> SimpleNamespace:  # noqa: N802
        def deserialize(data: bytes) -> FakeEngine:
            self.calls.append(("deserialize_cuda_engine", len(data)))
            return FakeEngine(json.loads(data), self)

        return SimpleNamespace(deserialize_cuda_engine=deserialize)


class _FakeProfile:
    def set_shape(self, name: str, min: tuple, opt: tuple, max: tuple) -> None:  # noqa: A002 (TensorRT's names)
        self.shapes = {"input": name, "min": list(min), "opt": list(opt), "max": list(max)}


class FakeEngine:
    def __init__(self, meta: dict[str, Any], trt: FakeTrt) -> None:
        self.meta, self.trt = meta, trt
        self.names = [meta["shapes"]["input"], meta["output"]]
        self.num_io_tensors = 2

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return "IN" if name == self.names[0] else "OUT"

    def get_tensor_dtype(self, name: str) -> str:
        return "UINT8" if name == "image" else "FLOAT"

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeContext:
    """Computes, per sample, the mean of its input, and fills the sample's output with it."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.calls = engine, engine.trt.calls
        self.addresses: dict[str, int] = {}
        self.shape: tuple[int, ...] | None = None

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.calls.append(("set_input_shape", name, tuple(shape)))
        s = self.engine.meta["shapes"]
        ok = name == s["input"] and list(shape[1:]) == s["max"][1:] and s["min"][0] <= shape[0] <= s["max"][0]
        self.shape = tuple(shape) if ok else None
        return ok

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        assert name == self.engine.meta["output"] and self.shape is not None
        return (self.shape[0], *self.engine.meta["output_tail"])

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.calls.append(("set_tensor_address", name, ptr))
        self.addresses[name] = ptr

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.calls.append(("execute_async_v3", stream_handle))
        memory = self.engine.trt.gpu.memory
        in_name, out_name = self.engine.names
        in_dtype = np.uint8 if in_name == "image" else np.float32
        count = int(np.prod(self.shape))
        x = np.frombuffer(memory[self.addresses[in_name]], in_dtype, count).reshape(self.shape)
        out_shape = self.get_tensor_shape(out_name)
        y = np.broadcast_to(x.reshape(len(x), -1).mean(1, dtype=np.float64).astype(np.float32).reshape(
            (len(x),) + (1,) * (len(out_shape) - 1)), out_shape)
        memory[self.addresses[out_name]][: y.nbytes] = np.ascontiguousarray(y).tobytes()
        return True


def per_sample_mean(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).mean(1, dtype=np.float64).astype(np.float32)


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeTrt, FakeCudart]:
    gpu = FakeCudart()
    trt = FakeTrt(gpu)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", gpu)
    return trt, gpu


@pytest.fixture
def pkg_copy(package: PackageVersion, tmp_path: Path) -> PackageVersion:
    import shutil

    shutil.copytree(package.root, tmp_path / "pkg")
    return open_package(tmp_path / "pkg")


def names(calls: list[tuple]) -> list[str]:
    return [c[0] for c in calls]


def test_tensorrt_builds_a_missing_engine_on_first_use_then_reuses_it(fake_gpu: tuple[FakeTrt, FakeCudart],
                                                                      pkg_copy: PackageVersion) -> None:
    trt, gpu = fake_gpu
    backend = create_backend("tensorrt", pkg_copy)
    assert backend.env.compute_capability == "8.7" and backend.env.gpu_name == "Orin"
    assert names(trt.calls) == ["build", "deserialize_cuda_engine"]  # the full graph, built into the cache
    assert len(list((pkg_copy.root / ENGINES_DIR).glob("*/engine.json"))) == 1
    trt.calls.clear()
    again = create_backend("tensorrt", pkg_copy)
    assert names(trt.calls) == ["deserialize_cuda_engine"]  # cached: no build
    again.close()
    with pytest.raises(MemoEdgeError, match="no cached TensorRT engine for trunk"):
        TensorRTBackend(pkg_copy, use_full=False, build=False)
    backend.close()


def test_tensorrt_splits_batches_above_the_profile_max(fake_gpu: tuple[FakeTrt, FakeCudart],
                                                       pkg_copy: PackageVersion) -> None:
    trt, gpu = fake_gpu
    backend = create_backend("tensorrt", pkg_copy, profile=ShapeProfile(1, 2, 4))
    trt.calls.clear()
    x = images(10)
    logits = backend.logits(x)
    classes = len(pkg_copy.manifest.class_names)
    assert logits.shape == (10, classes) and logits.dtype == np.float32
    assert np.allclose(logits, per_sample_mean(x)[:, None])  # each row came back from its own image
    shapes = [c[2][0] for c in trt.calls if c[0] == "set_input_shape"]
    assert shapes == [4, 4, 2] and names(trt.calls).count("execute_async_v3") == 3
    # Buffers for the max batch, allocated and bound once; every run on the backend's stream.
    addresses = [c for c in trt.calls if c[0] == "set_tensor_address"]
    assert [c[1] for c in addresses] == ["image", "logits"]
    mallocs = [c[1] for c in gpu.calls if c[0] == "cudaMalloc"]
    assert mallocs == [4 * 32 * 32 * 3, 4 * classes * 4]
    assert {c[1] for c in trt.calls if c[0] == "execute_async_v3"} == {77}
    trt.calls.clear()
    assert np.allclose(backend.logits(x[:3]), per_sample_mean(x[:3])[:, None])  # smaller: as is, one run
    assert [c for c in trt.calls if c[0] == "set_input_shape"] == [("set_input_shape", "image", (3, 32, 32, 3))]
    backend.close()
    assert gpu.memory == {} and ("cudaStreamDestroy", 77) in gpu.calls


def test_tensorrt_split_path_and_a_batch_below_the_profile_min(fake_gpu: tuple[FakeTrt, FakeCudart],
                                                               pkg_copy: PackageVersion) -> None:
    trt, gpu = fake_gpu
    backend = create_backend("tensorrt", pkg_copy, use_full=False, profile=ShapeProfile(2, 2, 4))
    assert sorted(c[1] for c in trt.calls if c[0] == "build") == ["features", "features", "trunk_features"]
    x = images(1)
    features = backend.features(x)  # one image, profile min 2: padded, the padding's row dropped
    assert features.shape == (1, 2 * 64)
    assert np.allclose(features, per_sample_mean(x)[:, None])
    assert [c[2][0] for c in trt.calls if c[0] == "set_input_shape"] == [2, 2, 2]
    expected = backend.head(features)
    assert np.allclose(backend.logits(x), expected)
    backend.close()


def test_tensorrt_without_a_gpu_names_only_that(monkeypatch: pytest.MonkeyPatch, package: PackageVersion) -> None:
    gpu = FakeCudart(devices=0)
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTrt(gpu))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", gpu)
    assert TensorRTBackend.missing() == backends.NO_GPU
    with pytest.raises(MemoEdgeError, match="backend tensorrt is not available here: no NVIDIA GPU visible"):
        create_backend("tensorrt", package)


def test_tensorrt_without_cuda_python_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTrt(FakeCudart()))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)  # makes the import raise ImportError
    monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    message = TensorRTBackend.missing()
    assert message is not None and message.startswith("cuda-python is not installed: pip install 'memo-edge[trt]'")
    assert "TensorRT is not installed" not in message


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_each_backend_declares_exactly_the_options_it_takes(name: str) -> None:
    import inspect

    params = inspect.signature(BACKENDS[name].__init__).parameters.values()
    assert BACKENDS[name].options == {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
