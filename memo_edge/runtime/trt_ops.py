"""TensorRT's ONNX parser as data (the op types, input types and attribute rules each TensorRT of a
supported JetPack takes) and ``check_graph``, which names every node a version would refuse.

Why: engines are built on the device, often on first use (``runtime/engine_build.py``); a graph the
parser refuses should fail on the workstation or in CI instead, naming the node. Torch-free, ``onnx``
imported lazily. The table holds the op types of memo-edge's graphs (trunk, branch-K, full, full-int8,
every backbone), a few that small changes would bring in, and ONNX Runtime's integer ops as refusals;
an op type not in it is reported, never assumed supported. Sources (onnx/onnx-tensorrt unless named):

[D85] TensorRT 8.5.2 (JetPack 5.1.x): ``docs/operators.md`` at 7583da4c62475e84b7be31f4b8fb0c101873d434,
      the parser NVIDIA/TensorRT tag ``8.5.2`` pins (``parsers/onnx``); for these ops the same rows
      as tag ``release/8.5-GA`` (3b008c466bcb). github.com/onnx/onnx-tensorrt/blob/<commit>/docs/operators.md
[C85] ``builtin_op_importers.cpp`` there: Q/DQ refuse UINT8 data and a UINT8 QuantizeLinear zero point,
      need all three inputs, zero points of zeros, positive scales, per-channel scales as many as
      ``dim[axis]``; Cast takes UINT8 to/from FLOAT/FLOAT16 only (the 8.5 GA changelog: "importing ONNX
      networks with UINT8 I/O types", which the 8.5 Cast row omits); pooling dilations must be 1; Conv
      with constant weights needs a constant bias; GEMM needs 2D inputs; Slice needs known axes.
[D86] TensorRT 8.6 (JetPack 6.0: 8.6.2): ``docs/operators.md`` at 6ba67d3428e05f690145373ca87fb8d32f98df45
      (tag ``v8.6.1`` of NVIDIA/TensorRT pins it): [D85]'s rows for these ops, Cast listing UINT8;
      its Q/DQ importer keeps [C85]'s rules.
[D10] TensorRT 10.3 (JetPack 6.1, 6.2): NVIDIA/TensorRT tag ``v10.3.0`` pins 62bdde2a04fc, whose docs
      were not in reach; the rows are tag ``release/10.1-GA``'s (96e781103cfc), identical for every op
      here in the 10.6 docs (0137504e2b25) but Slice, whose "`axes` must be an initializer" the
      changelog drops in 10.3 GA ("Added support for tensor `axes` inputs for `Slice` nodes"). The
      Q/DQ importer (``onnxOpImporters.cpp``) is the same at both: UINT8 data and UINT8 QuantizeLinear
      zero points refused, constant zero points must be zeros. Opsets 9 to 20, as the 10.1 docs say.
[H]   NVIDIA/TensorRT ``include/NvInfer.h`` at ``8.5.2`` and ``v10.3.0``, IQuantizeLayer: symmetric
      quantization only, the scale a build-time constant, "Per-channel quantization is supported only
      for weight inputs. Thus, Activations cannot be quantized per-channel."; ``DataType::kUINT8``:
      network inputs and outputs only, converted to or from FLOAT/HALF.
JetPack releases and the TensorRTs they ship: ``runtime/jetpack.py``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memo_edge.errors import InputError, MemoEdgeError

if TYPE_CHECKING:
    import onnx

__all__ = ["OpSupport", "TrtTable", "Unsupported", "TRT_TABLES", "SUPPORTED_TENSORRT", "trt_table", "table_for",
           "check_graph", "require_parsable"]


@dataclass(frozen=True)
class OpSupport:
    """One row of ``docs/operators.md``: the input types the parser takes, and its restriction text."""

    types: frozenset[str]  # TensorRT's names (FP32, INT8, ...); empty: the row says "N"
    note: str = ""


@dataclass(frozen=True)
class TrtTable:
    """What one TensorRT's ONNX parser takes, with the rules the op-specific checks need."""

    version: str  # major.minor
    source: str  # the [tag] of the module docstring
    opsets: tuple[int, int]  # inclusive range of the default domain's opset
    ops: Mapping[str, OpSupport]
    axes_constant: frozenset[str]  # ops whose ``axes`` input must be an initializer / Constant
    qdq_needs_zero_point: bool  # 8.x: "requires 3 inputs for the (INT8) QuantizeLinear/DequantizeLinear"
    int64_as_int32: bool  # 8.x: "TensorRT will attempt to cast down INT64 to INT32"


@dataclass(frozen=True)
class Unsupported:
    """A node one TensorRT's parser would refuse, and why."""

    node: str  # the node's name, or "#<index> -> <first output>" when it has none
    op_type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op_type}): {self.reason}"


_SHORT = {"F": "FP32,FP16,BF16", "FI": "FP32,FP16,BF16,INT32,INT64", "FIB": "FP32,FP16,BF16,INT32,INT64,BOOL"}


def _rows(text: str) -> tuple[dict[str, OpSupport], dict[str, OpSupport]]:
    """``Op  8.x-types  10.3-types | restriction`` lines into the 8.x and the 10.3 rows (``N``: refused)."""
    rows: tuple[dict[str, OpSupport], dict[str, OpSupport]] = ({}, {})
    for line in filter(None, (raw.strip() for raw in text.splitlines())):
        head, _, note = line.partition("|")
        ops, *types = head.split()
        for row, listed in zip(rows, types):
            names = {n for short in listed.split(",") for n in _SHORT.get(short, short).split(",")}
            row.update({op: OpSupport(frozenset() if listed == "N" else frozenset(names), note.strip())
                        for op in ops.split(",")})
    return rows


# The rows of [D85] (8.x column; [D86] has the same ones) and [D10] (10.3 column), restrictions as
# there, shortened; "8.x:"/"10.3:" mark a restriction of one column only; _SHORT spells out F, FI, FIB.
_ROWS_8, _ROWS_103 = _rows("""
Add                FP32,FP16,INT32               FI
AveragePool        FP32,FP16,INT8,INT32          F    | 2D or 3D Pooling only. 10.3: `dilations` empty or all ones
BatchNormalization FP32,FP16                     F
Cast               FP32,FP16,INT32,INT8,UINT8,BOOL FIB,UINT8 | 8.5 lists no UINT8; its importer takes it [C85]
Concat             FP32,FP16,INT32,INT8,BOOL     FIB
Constant           FP32,FP16,INT32,INT8,BOOL     FIB  | `sparse_value`, `value_string(s)` unsupported (8.5: [C85])
ConstantOfShape    FP32                          FIB
Conv               FP32,FP16,INT8                F
DequantizeLinear   INT8                          INT8,FP8,INT4 | `x_zero_point` must be zero
Div                FP32,FP16,INT32               FI
Flatten            FP32,FP16,INT32,BOOL          FIB
Gemm               FP32,FP16,INT8                F
GlobalAveragePool  FP32,FP16,INT8                F
Identity           FP32,FP16,INT32,INT8,BOOL     FIB
MatMul             FP32,FP16                     F
MaxPool            FP32,FP16,INT8                F    | 2D or 3D pooling only. `Indices` output unsupported. 10.3: as AveragePool
Mul                FP32,FP16,INT32               FI
QuantizeLinear     FP32,FP16                     F    | `y_zero_point` must be 0
Relu               FP32,FP16,INT8                FI
Reshape            FP32,FP16,INT32,INT8,BOOL     FIB
Resize             FP32,FP16                     F    | the modes of _RESIZE_MODES. 10.3: aspect ratio `stretch`, no antialias
Shape              FP32,FP16,INT32,INT8,BOOL     FIB
Slice              FP32,FP16,INT32,INT8,BOOL     FIB  | 8.x: `axes` must be an initializer
Squeeze            FP32,FP16,INT32,INT8,BOOL     FIB  | `axes` must be an initializer
Sub                FP32,FP16,INT32               FI
Transpose          FP32,FP16,INT32,INT8,BOOL     FIB
Unsqueeze          FP32,FP16,INT32,INT8,BOOL     FIB  | `axes` must be a constant tensor
ConvInteger,DynamicQuantizeLinear,MatMulInteger,QLinearConv,QLinearMatMul N N
""")

TRT_TABLES: dict[str, TrtTable] = {
    "8.5": TrtTable("8.5", "[D85] [C85] [H]", (1, 17), _ROWS_8, frozenset({"Slice", "Squeeze", "Unsqueeze"}),
                    qdq_needs_zero_point=True, int64_as_int32=True),
    "8.6": TrtTable("8.6", "[D86] [C85] [H]", (1, 17), _ROWS_8, frozenset({"Slice", "Squeeze", "Unsqueeze"}),
                    qdq_needs_zero_point=True, int64_as_int32=True),
    "10.3": TrtTable("10.3", "[D10] [H]", (9, 20), _ROWS_103, frozenset({"Squeeze", "Unsqueeze"}),
                     qdq_needs_zero_point=False, int64_as_int32=False),
}
SUPPORTED_TENSORRT = tuple(TRT_TABLES)  # the TensorRTs of the JetPacks memo-edge targets


_ONNX_TO_TRT = {1: "FP32", 10: "FP16", 16: "BF16", 11: "FP32", 6: "INT32", 7: "INT64", 3: "INT8", 2: "UINT8",
                9: "BOOL", 17: "FP8", 22: "INT4"}  # DOUBLE (11) is cast down to FLOAT, every table says
_FLOATS = {1, 10}  # the types a UINT8 network input may be cast to (FLOAT, FLOAT16) [H]
_RESIZE_MODES = {"mode": {"nearest", "linear"},
                 "nearest_mode": {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"},
                 "coordinate_transformation_mode": {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn",
                                                    "asymmetric", "align_corners"}}
_AXES_INPUT = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1}


def trt_table(version: str) -> TrtTable:
    """The table of a supported TensorRT, by ``major.minor`` (or a full version such as 10.3.0.26)."""
    if (table := table_for(version)) is None:
        raise InputError(f"no TensorRT op table for {version!r}: choose from {', '.join(SUPPORTED_TENSORRT)}")
    return table


def table_for(version: str) -> TrtTable | None:
    """The table for an installed TensorRT version string, None when memo-edge has none for it."""
    match = re.match(r"(\d+)\.(\d+)", str(version))
    return TRT_TABLES.get(f"{match.group(1)}.{match.group(2)}") if match else None


@dataclass(frozen=True)
class _Graph:
    """What the checks read about tensors: element types, shapes, constant values, graph I/O."""

    types: dict[str, int]
    shapes: dict[str, tuple[int | None, ...]]
    constants: dict[str, np.ndarray | None]  # initializers and Constant outputs (None: not readable)
    weights: frozenset[str]  # constants, and what Q / Cast / Identity make of them: per-channel may apply
    inputs: frozenset[str]
    outputs: frozenset[str]

    @classmethod
    def of(cls, model: onnx.ModelProto) -> _Graph:
        import onnx
        from onnx import numpy_helper

        with contextlib.suppress(Exception):  # onnx raises several types; without inference, what the
            model = onnx.shape_inference.infer_shapes(model)  # model declares is all the checks see
        g = model.graph
        types, shapes = {}, {}
        for info in [*g.input, *g.output, *g.value_info]:
            tensor = info.type.tensor_type
            types[info.name] = tensor.elem_type
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        constants: dict[str, np.ndarray | None] = {}
        for init in g.initializer:
            constants[init.name] = numpy_helper.to_array(init)
            types[init.name], shapes[init.name] = init.data_type, tuple(init.dims)
        weights = set(constants)
        for node in g.node:
            if node.op_type == "Constant":
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                constants[node.output[0]] = None if value is None else numpy_helper.to_array(value)
                weights.add(node.output[0])
            elif node.op_type in ("QuantizeLinear", "Cast", "Identity") and node.input[0] in weights:
                weights.add(node.output[0])
            if node.op_type == "QuantizeLinear" and not any(node.input[2:3]):
                types[node.output[0]] = 3  # no zero point: UINT8 to ONNX, INT8 to the parser [D10]
        return cls(types, shapes, constants, frozenset(weights), frozenset(i.name for i in g.input) - set(constants),
                   frozenset(o.name for o in g.output))

    def trt_type(self, name: str, table: TrtTable) -> str | None:
        elem = self.types.get(name, 0)
        found = _ONNX_TO_TRT.get(elem, f"ONNX type {elem}") if elem else None
        return "INT32" if found == "INT64" and table.int64_as_int32 else found


def check_graph(model: onnx.ModelProto, trt_version: str) -> list[Unsupported]:
    """Every node of ``model`` TensorRT ``trt_version``'s ONNX parser would refuse, in graph order."""
    table = trt_table(trt_version)
    graph = _Graph.of(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    low, high = table.opsets
    found = [] if low <= opset <= high else [Unsupported("<model>", "opset", f"opset {opset}; TensorRT {table.version} "
                                                         f"parses {low} to {high}")]
    for index, node in enumerate(model.graph.node):
        name = node.name or f"#{index} -> {node.output[0] if node.output else '?'}"
        found += [Unsupported(name, node.op_type, reason) for reason in _node_problems(node, graph, table)]
    return found


def require_parsable(onnx_path: Path, trt_version: str, name: str) -> None:
    """Raise naming the nodes when TensorRT ``trt_version`` would refuse the graph at ``onnx_path``: for the
    engine builder, before minutes of building. A TensorRT without a table here (a desktop 10.x) passes."""
    if table_for(trt_version) is None:
        return
    import onnx  # the CLI names the extra to install when it is missing (errors.user_error)

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 (protobuf's DecodeError, OSError)
        raise MemoEdgeError(f"cannot read ONNX graph {name} at {onnx_path}: {exc}") from exc
    found = check_graph(model, trt_version)
    if found:
        more = f"; and {len(found) - 3} more" if len(found) > 3 else ""
        raise MemoEdgeError(f"ONNX graph {name} would not parse on TensorRT {trt_version}: "
                            + "; ".join(map(str, found[:3])) + more)


def _node_problems(node: onnx.NodeProto, graph: _Graph, table: TrtTable) -> list[str]:
    """The checks of one node: its domain and op type, its input types, then the op's own rules."""
    if node.domain not in ("", "ai.onnx"):
        return [f"domain {node.domain!r}: the ONNX parser imports standard ops only (this would need a plugin)"]
    row = table.ops.get(node.op_type)
    if row is None:
        return [f"{node.op_type} is not in memo-edge's TensorRT {table.version} table: add its row from "
                "onnx-tensorrt's docs/operators.md before relying on it"]
    if not row.types:
        return [f"TensorRT {table.version}'s ONNX parser does not support {node.op_type}"]
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        return _qdq(node, graph, table)
    problems = _types(node, graph, table, row)
    axes = node.input[_AXES_INPUT[node.op_type]:][:1] if node.op_type in table.axes_constant else []
    if any(axes) and axes[0] not in graph.constants:
        problems.append(f"`axes` ({axes[0]}) must be an initializer or a Constant in TensorRT {table.version}")
    check = _OP_CHECKS.get(node.op_type)
    return problems + (check(node, graph, table) if check else [])


def _types(node: onnx.NodeProto, graph: _Graph, table: TrtTable, row: OpSupport) -> list[str]:
    """The data input's type (every input's for Concat; none for ConstantOfShape, whose row is about its
    ``value``: ``_fill``) against the row; UINT8 only as [H] allows."""
    names = node.input if node.op_type == "Concat" else [] if node.op_type == "ConstantOfShape" else node.input[:1]
    problems = []
    for name in filter(None, names):
        trt = graph.trt_type(name, table)
        if trt is None:
            problems.append(f"the type of input {name} is unknown (shape inference could not tell)")
        elif trt == "UINT8":
            if not (node.op_type == "Cast" and name in graph.inputs and _attr(node, "to", 0) in _FLOATS):
                problems.append(f"input {name} is UINT8: TensorRT takes UINT8 only as a network input that a "
                                "Cast to FLOAT/FLOAT16 consumes")
        elif trt not in row.types:
            problems.append(f"input {name} is {trt}; TensorRT {table.version} takes {_names(row.types)}")
    return problems


def _fill(node: onnx.NodeProto, graph: _Graph, table: TrtTable) -> list[str]:
    value = _attr(node, "value", None)
    trt = "FP32" if value is None else _ONNX_TO_TRT.get(value.data_type, f"ONNX type {value.data_type}")
    allowed = table.ops["ConstantOfShape"].types
    return [] if trt in allowed else [f"value is {trt}; TensorRT {table.version} takes {_names(allowed)}"]


def _names(types: frozenset[str]) -> str:
    return ", ".join(sorted(types))


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    import onnx

    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else onnx.helper.get_attribute_value(found)


def _cast(node: onnx.NodeProto, graph: _Graph, table: TrtTable) -> list[str]:
    to = _attr(node, "to", 0)
    trt = _ONNX_TO_TRT.get(to, f"ONNX type {to}")
    if trt == "UINT8":  # [H]: a network output, from FLOAT/FLOAT16
        ok = node.output[0] in graph.outputs and graph.types.get(node.input[0], 0) in _FLOATS
        return [] if ok else ["a cast to UINT8 must produce a network output from FLOAT/FLOAT16"]
    allowed = table.ops["Cast"].types
    return [] if trt in allowed or (trt == "INT64" and table.int64_as_int32) else [
        f"cast to {trt}; TensorRT {table.version} casts to {_names(allowed)}"]


def _conv(node: onnx.NodeProto, graph: _Graph, table: TrtTable) -> list[str]:
    problems = []
    weight = graph.shapes.get(node.input[1]) if len(node.input) > 1 else None
    if weight is not None and len(weight) not in (3, 4, 5):  # [C85]: 1D (expanded), 2D or 3D
        problems.append(f"a {len(weight) - 2}D convolution: TensorRT takes 1D to 3D")
    data, group = graph.shapes.get(node.input[0]) or (), _attr(node, "group", 1)
    if weight and len(data) > 1 and None not in (data[1], weight[1]) and weight[1] * group != data[1]:
        problems.append(f"weight channels {weight[1]} x group {group} != input channels {data[1]}")
    bias = node.input[2] if len(node.input) > 2 else ""
    if bias and node.input[1] in graph.constants and bias not in graph.constants:
        problems.append("the bias must be an initializer when the weights are one [C85]")
    return problems


def _pool(node: onnx.NodeProto, graph: _Graph, table: TrtTable) -> list[str]:
    problems, kernel, rank = [], _attr(node, "kernel_shape", []), len(graph.shapes.get(node.input[0]) or ())
    if not (len(kernel) in (2, 3) or (len(kernel) == 1 and rank == 3)):
        problems.append(f"{len(kernel)}D pooling: TensorRT pools in 2D or 3D")
    if any(d != 1 for d in _attr(node, "dilations", [])):
        problems.append("dilations other than 1 (the 10.x table, and the 8.x pooling importer [C85])")
    if len(node.output) > 1 and node.output[1]:
        problems.append("the `Indices` output is unsupported")
    return problems


def _resize(node: onnx.NodeProto, graph: _Graph, table: TrtTable) -> list[str]:
    defaults = {"mode": b"nearest", "nearest_mode": b"round_prefer_floor", "coordinate_transformation_mode": b"half_pixel"}
    chosen = {key: _attr(node, key, default).decode() for key, default in defaults.items()}
    problems = [f"{key} {value!r} is not one TensorRT supports" for key, value in chosen.items()
                if value not in _RESIZE_MODES[key]]
    if _attr(node, "antialias", 0) or _attr(node, "keep_aspect_ratio_policy", b"stretch") != b"stretch":
        problems.append("antialiasing and aspect ratio policies other than `stretch` are unsupported")
    return problems


def _constant(node: onnx.NodeProto, graph: _Graph, table: TrtTable) -> list[str]:
    bad = sorted({a.name for a in node.attribute} & {"sparse_value", "value_string", "value_strings"})
    return [f"attribute {', '.join(bad)} is unsupported"] if bad else []


def _gemm(node: onnx.NodeProto, graph: _Graph, table: TrtTable) -> list[str]:
    return [] if all(len(graph.shapes.get(n, (0, 0))) == 2 for n in node.input[:2]) else ["GEMM needs 2D inputs [C85]"]


def _qdq(node: onnx.NodeProto, graph: _Graph, table: TrtTable) -> list[str]:
    """QuantizeLinear / DequantizeLinear: symmetric INT8 only [C85] [D10] [H]."""
    quantize, (data, scale, zero) = node.op_type == "QuantizeLinear", [*node.input, "", ""][:3]
    problems, trt, allowed = [], graph.trt_type(data, table), table.ops[node.op_type].types
    if trt == "UINT8":
        problems.append(f"input {data} is UINT8: TensorRT quantizes to INT8 only (the parser refuses UINT8)")
    elif trt not in allowed:
        verb = "quantizes" if quantize else "dequantizes"
        problems.append(f"input {data} is {trt}; TensorRT {table.version} {verb} {_names(allowed)} only")
    if not zero and table.qdq_needs_zero_point:
        problems.append(f"TensorRT {table.version} needs the zero-point input (all three inputs)")
    if zero:
        if quantize and graph.trt_type(zero, table) == "UINT8":
            problems.append(f"zero point {zero} is UINT8: TensorRT quantizes to INT8 only")
        value = graph.constants.get(zero)
        if value is not None and np.any(value != 0):
            problems.append(f"zero point {zero} is not all zeros: TensorRT supports symmetric quantization only")
    scales = graph.constants.get(scale)
    if scale not in graph.constants:
        problems.append(f"scale {scale} must be a build-time constant")
    elif scales is not None and np.any(scales <= 0):
        problems.append(f"scale {scale} has coefficients <= 0; TensorRT needs them positive")
    if scales is not None and scales.size > 1:  # per-channel
        problems += _per_channel(node, graph, scales.size)
    return problems


def _per_channel(node: onnx.NodeProto, graph: _Graph, count: int) -> list[str]:
    data = node.input[0]
    if data not in graph.weights:
        return [f"per-channel scales on {data}, an activation: TensorRT quantizes only weights per channel [H]"]
    shape = graph.shapes.get(data) or ()
    axis = _attr(node, "axis", 0)  # the parser's default here is the first axis, not ONNX's 1 [C85]
    axis = axis + len(shape) if axis < 0 else axis
    if axis < len(shape) and shape[axis] is not None and shape[axis] != count:
        return [f"{count} scales for axis {axis} of size {shape[axis]}"]
    return []


_OP_CHECKS = {"Cast": _cast, "Conv": _conv, "MaxPool": _pool, "AveragePool": _pool, "Resize": _resize,
              "Constant": _constant, "ConstantOfShape": _fill, "Gemm": _gemm}
