"""TensorRT op support on the CPU: every ONNX graph a package holds, checked against the ONNX parser
tables of the TensorRTs of the supported JetPacks (``memo_edge/runtime/trt_ops.py``, with their
sources), and the checker itself on hand-made graphs.

The packages are written by the exporter's own code (``model_blobs``, the int8 copy included, then
``PackageWriter``) without the ONNX Runtime verification step: numbers are not this file's concern,
op types are, and random weights would not pass the int8 agreement bar.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from memo_edge.errors import InputError, MemoEdgeError
from memo_edge.export import exporter
from memo_edge.export.exporter import model_blobs, model_manifest
from memo_edge.export.quantize import calibration_images
from memo_edge.memory.exemplars import ExemplarSet
from memo_edge.model import MemoNet
from memo_edge.runtime.backends import OrtTrtBackend, TensorRTBackend
from memo_edge.runtime.engine_cache import ENGINE_ROLES, engine_graphs, graph_name
from memo_edge.runtime.package import INT8_ROLE, InputSpec, PackageVersion
from memo_edge.runtime.writer import PackageWriter
from memo_edge.runtime.jetpack import JETPACK
from memo_edge.runtime.trt_ops import (
    SUPPORTED_TENSORRT,
    TRT_TABLES,
    check_graph,
    require_parsable,
    table_for,
    trt_table,
)

SPEC = InputSpec(32, 32, 3, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
BACKBONES = {"resnet8": 3, "resnet32": 2}  # backbone: tasks (branches); the real CIFAR backbone kept cheap


def write_int8_package(out: Path, backbone: str, tasks: int) -> PackageVersion:
    """A random MEMO with ``tasks`` branches, packaged with every graph export writes, full-int8 included."""
    torch.manual_seed(0)
    model = MemoNet(backbone)
    for _ in range(tasks):
        model.expand(3)
    model.eval()
    rng = np.random.default_rng(0)
    labels = np.arange(model.num_classes, dtype=np.int64)  # one exemplar a class: the int8 calibration set
    exemplars = ExemplarSet(rng.integers(0, 256, (len(labels), *SPEC.shape), dtype=np.uint8), labels,
                            np.zeros(len(labels), np.int64))
    manifest = model_manifest(1, model, exemplars, spec=SPEC, class_names=[f"c{i}" for i in range(model.num_classes)],
                              augment="cifar", total_budget_bytes=model.model_bytes() + exemplars.nbytes, source={})
    blobs = model_blobs(model, SPEC, branches=range(tasks), trunk=True, full=True,
                        int8_calibration=calibration_images(exemplars.images, exemplars.labels))
    with PackageWriter.create(out) as writer:
        writer.commit(manifest, exemplars, np.zeros(len(labels), np.int64), blobs=blobs)
    return writer.written


@pytest.fixture(scope="module", params=list(BACKBONES))
def package(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> PackageVersion:
    with pytest.MonkeyPatch.context() as patch:
        # The manifest's producer versions import torchvision (seconds): nothing to do with op types.
        patch.setattr(exporter, "producer_versions", lambda: {})
        return write_int8_package(tmp_path_factory.mktemp("trt-ops") / "pkg", request.param, BACKBONES[request.param])


def onnx_graphs(version: PackageVersion) -> dict[str, onnx.ModelProto]:
    """Every ONNX file of ``version``, by graph name (trunk, branch-K, full, full-int8)."""
    return {graph_name(e): onnx.load(str(version.path(e))) for e in version.manifest.files if e.name.endswith(".onnx")}


# ---------------------------------------------------------------------------------------------
# The package's graphs


def test_a_package_holds_these_onnx_graphs_and_tensorrt_is_given_the_float_ones(package: PackageVersion) -> None:
    tasks = len(package.manifest.branches())
    expected = {"trunk", "full", INT8_ROLE, *(f"branch-{t}" for t in range(tasks))}
    assert set(onnx_graphs(package)) == expected
    # the head and the training weights are safetensors, never a graph TensorRT compiles
    others = [e for e in package.manifest.files if not e.name.endswith(".onnx")]
    assert "head" in {e.role for e in others} and all(e.name.endswith(".safetensors") for e in others)
    assert {spec.name for spec in engine_graphs(package)} == expected - {INT8_ROLE}


@pytest.mark.parametrize("trt", SUPPORTED_TENSORRT)
def test_every_graph_tensorrt_builds_parses_on_every_supported_tensorrt(package: PackageVersion, trt: str) -> None:
    for spec in engine_graphs(package):
        found = check_graph(onnx.load(str(spec.onnx_path)), trt)
        assert found == [], f"{spec.name} on TensorRT {trt}:\n" + "\n".join(map(str, found))
        require_parsable(spec.onnx_path, trt, spec.name)  # the builder's hook agrees


@pytest.mark.parametrize("trt", SUPPORTED_TENSORRT)
def test_the_int8_graph_is_not_tensorrt_parsable(package: PackageVersion, trt: str) -> None:
    """ONNX Runtime's static QDQ: UINT8 asymmetric activations and INT32 biases, which no supported
    TensorRT parses. Only the INT8 per-channel weights (zero points 0) would be accepted."""
    model = onnx_graphs(package)[INT8_ROLE]
    found = check_graph(model, trt)
    refused = {u.node for u in found}
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    inits = {i.name: i for i in model.graph.initializer}
    weights = [n for n in dequantize if n.input[0] in inits and inits[n.input[0]].data_type == TensorProto.INT8]
    biases = [n for n in dequantize if n.input[0] in inits and inits[n.input[0]].data_type == TensorProto.INT32]
    activations = [n for n in dequantize if n.input[0] not in inits]
    assert quantize and weights and biases and activations
    assert {u.op_type for u in found} == {"QuantizeLinear", "DequantizeLinear"}
    assert {n.name for n in quantize + biases + activations} == refused
    assert all(any("UINT8" in u.reason for u in found if u.node == n.name) for n in quantize + activations)
    assert all(any("is INT32" in u.reason for u in found if u.node == n.name) for n in biases)
    assert any("symmetric" in u.reason for u in found)  # some calibrated zero points are not 0 either
    with pytest.raises(MemoEdgeError, match=rf"ONNX graph full-int8 would not parse on TensorRT {trt}: \S+ \(Dequ"):
        require_parsable(package.path(package.manifest.file(INT8_ROLE)), trt, INT8_ROLE)


def test_memo_edge_never_hands_the_int8_graph_to_tensorrt() -> None:
    assert INT8_ROLE not in ENGINE_ROLES  # engine_graphs: what export --trt and the tensorrt backend build
    assert TensorRTBackend.full_role == "full" and OrtTrtBackend.full_role == "full"
    assert "precision" not in TensorRTBackend.options | OrtTrtBackend.options  # only ort-cpu picks full-int8


# ---------------------------------------------------------------------------------------------
# The checker on hand-made graphs


def model_of(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], output: onnx.ValueInfoProto, *,
             inits: dict[str, np.ndarray] | None = None, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, [output],
                              [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def image(name: str = "x", dtype: int = TensorProto.FLOAT, shape: tuple = ("N", 4, 8, 8)) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape))


def reasons(model: onnx.ModelProto, trt: str) -> dict[str, str]:
    return {f"{u.node} ({u.op_type})": u.reason for u in check_graph(model, trt)}


@pytest.mark.parametrize("trt", SUPPORTED_TENSORRT)
def test_an_op_outside_the_table_or_refused_by_it_is_named(trt: str) -> None:
    model = model_of([helper.make_node("Relu", ["x"], ["a"], name="fine"),
                      helper.make_node("NonZero", ["a"], ["b"], name="unknown"),
                      helper.make_node("QLinearConv", ["b"], ["c"], name="refused"),
                      helper.make_node("QLinearAdd", ["c"], ["y"], name="custom", domain="com.microsoft")],
                     [image()], image("y"))
    found = reasons(model, trt)
    assert set(found) == {"unknown (NonZero)", "refused (QLinearConv)", "custom (QLinearAdd)"}
    assert "not in memo-edge's TensorRT" in found["unknown (NonZero)"]
    assert "does not support QLinearConv" in found["refused (QLinearConv)"]
    assert "com.microsoft" in found["custom (QLinearAdd)"]


@pytest.mark.parametrize("trt", SUPPORTED_TENSORRT)
def test_attributes_tensorrt_refuses_are_named(trt: str) -> None:
    model = model_of([helper.make_node("MaxPool", ["x"], ["a"], name="dilated", kernel_shape=[2, 2], dilations=[2, 2]),
                      helper.make_node("Resize", ["a", "", "s"], ["y"], name="cubic", mode="cubic")],
                     [image()], image("y"), inits={"s": np.array([1, 1, 2, 2], np.float32)})
    found = reasons(model, trt)
    assert set(found) == {"dilated (MaxPool)", "cubic (Resize)"}
    assert "dilations" in found["dilated (MaxPool)"] and "'cubic'" in found["cubic (Resize)"]


@pytest.mark.parametrize("trt", SUPPORTED_TENSORRT)
def test_uint8_is_taken_only_as_a_network_input_cast_to_float(trt: str) -> None:
    cast = model_of([helper.make_node("Cast", ["x"], ["a"], name="cast", to=TensorProto.FLOAT),
                     helper.make_node("Relu", ["a"], ["y"], name="relu")], [image(dtype=TensorProto.UINT8)], image("y"))
    assert check_graph(cast, trt) == []
    direct = model_of([helper.make_node("Relu", ["x"], ["y"], name="relu")], [image(dtype=TensorProto.UINT8)],
                      image("y", TensorProto.UINT8))
    assert "UINT8" in reasons(direct, trt)["relu (Relu)"]


def test_slice_axes_must_be_constant_before_tensorrt_10_3() -> None:
    """Computed axes: refused by the 8.x parsers, taken since 10.3 ("Added support for tensor axes")."""
    model = model_of([helper.make_node("Shape", ["x"], ["shape"], name="shape", start=0, end=1),
                      helper.make_node("Sub", ["shape", "one"], ["axes"], name="axes"),
                      helper.make_node("Slice", ["x", "zero", "one", "axes"], ["y"], name="slice")],
                     [image()], image("y"), inits={"zero": np.array([0]), "one": np.array([1])})
    assert "axes" in reasons(model, "8.5")["slice (Slice)"]
    assert "axes" in reasons(model, "8.6")["slice (Slice)"]
    assert check_graph(model, "10.3") == []


def qdq_conv(*, zero: int = 0, zero_type: int = TensorProto.INT8, act_scales: int = 1) -> onnx.ModelProto:
    """Q -> DQ -> Conv, with per-channel INT8 weights through their own DQ: TensorRT's explicit quantization."""
    zp_dtype = np.int8 if zero_type == TensorProto.INT8 else np.uint8
    inits = {"s": np.full(act_scales, 0.1, np.float32), "z": np.full(act_scales, zero, zp_dtype),
             "w": np.ones((4, 4, 3, 3), np.int8), "ws": np.full(4, 0.05, np.float32), "wz": np.zeros(4, np.int8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q", axis=1),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], name="dq", axis=1),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], name="weight", axis=0),
             helper.make_node("Conv", ["d", "wf"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    return model_of(nodes, [image()], image("y"), inits=inits)


@pytest.mark.parametrize("trt", SUPPORTED_TENSORRT)
def test_symmetric_int8_qdq_parses_and_each_departure_is_named(trt: str) -> None:
    assert check_graph(qdq_conv(), trt) == []
    assert "symmetric" in reasons(qdq_conv(zero=3), trt)["q (QuantizeLinear)"]
    uint8 = reasons(qdq_conv(zero_type=TensorProto.UINT8), trt)
    assert "UINT8" in uint8["q (QuantizeLinear)"] and "UINT8" in uint8["dq (DequantizeLinear)"]
    assert "activation" in reasons(qdq_conv(act_scales=4), trt)["q (QuantizeLinear)"]


def test_a_zero_point_is_required_by_the_8x_parsers_only() -> None:
    model = qdq_conv()
    for node in model.graph.node[:2]:
        del node.input[2]
    assert "zero-point" in reasons(model, "8.5")["q (QuantizeLinear)"]
    assert check_graph(model, "10.3") == []


def test_the_opset_range_of_each_table() -> None:
    relu = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    assert check_graph(model_of(relu, [image()], image("y"), opset=18), "10.3") == []
    (found,) = check_graph(model_of(relu, [image()], image("y"), opset=18), "8.5")
    assert found.op_type == "opset" and "1 to 17" in found.reason


# ---------------------------------------------------------------------------------------------
# Versions, JetPacks and the builder's hook


def test_versions_resolve_to_their_tables_and_unknown_ones_are_refused() -> None:
    assert table_for("10.3.0.26") is TRT_TABLES["10.3"] and table_for("8.5.2.2") is TRT_TABLES["8.5"]
    assert table_for("10.7.0") is None and table_for("system") is None
    with pytest.raises(InputError, match="choose from 8.5, 8.6, 10.3"):
        trt_table("8.4")


def test_every_supported_tensorrt_is_a_jetpack_s() -> None:
    tables = [table_for(j.tensorrt) for j in JETPACK if j.tensorrt is not None]
    shipped = {t.version for t in tables if t is not None}
    assert shipped == set(SUPPORTED_TENSORRT)
    by_release = {j.jetpack: j.tensorrt for j in JETPACK}
    assert by_release["5.1.2"] == "8.5.2" and by_release["6.1"] == by_release["6.2"] == "10.3"
    assert all(j.source for j in JETPACK)


def test_require_parsable_names_the_node_and_passes_tensorrts_it_has_no_table_for(tmp_path: Path) -> None:
    path = tmp_path / "g.onnx"
    onnx.save(qdq_conv(zero=3), str(path))
    with pytest.raises(MemoEdgeError, match=r"graph g would not parse on TensorRT 10\.3\.0: q \(QuantizeLinear\)"):
        require_parsable(path, "10.3.0", "g")
    require_parsable(path, "10.7.0", "g")  # no table: TensorRT's own parser decides
