"""An int8 copy of the full graph for CPU inference: ONNX Runtime static quantization.

The float32 graphs stay the source of truth; ``full-int8`` is an extra file a package may carry
(``memo-edge export --int8``), re-made by every ``update`` from the new version's float graph, and
checked like the others (``export/verify.py``: top-1 agreement with PyTorch). Activation ranges are
calibrated on the version's own exemplars: they are on the device for every update, cover every
seen class, and come from the training data.

How it is quantized is ``Int8Options``; the default is what measured fastest at no measurable
accuracy cost on this repository's machine (``benchmarks/ort_levers.py`` for speed,
``benchmarks/int8_accuracy.py --variants`` for accuracy, both in docs/benchmarks.md):

- QDQ format, int8 weights per output channel, uint8 activations with MinMax ranges, and 7-bit
  weights (``reduce_range``). uint8 activations x int8 weights is the pairing ONNX Runtime's x86
  kernels are fastest at with AVX512-VNNI/AVX-VNNI; on x86 CPUs without VNNI (AVX2 only) the same
  kernels add the u8 x s8 products pairwise into int16, which saturates with full-range weights
  (ONNX Runtime's quantization documentation). A package is exported on one machine and runs on
  others, so its int8 graph must be right on every CPU it may meet: on an AVX2-only CPU the
  full-range graph agreed with float32 on 82.8% of the test suite's verification images (export
  refuses under 95%), the reduce_range one on 98.6%; on a VNNI CPU reduce_range cost 98.21% -> 97.07%
  agreement and 1.38x -> 1.35x speed over float32 (docs/benchmarks.md). ARM64's int8 kernels do
  not saturate either way.
- ``shortcut_conv``: before quantizing, each parameter-free "option A" shortcut of the CIFAR ResNets
  (stride-2 subsample, then zero channels appended: Slice, Slice, Shape, ConstantOfShape, Concat)
  becomes the same arithmetic as one 1x1 stride-2 convolution with fixed 0/1 weights. ONNX Runtime
  runs int8 convolutions channels-last; the Slice/Concat shortcut is not, so it kept a layout
  Transpose in front of and behind every later residual Add.
  As a convolution the shortcut stays channels-last too (its 0/1 weights are exact in int8).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from memo_edge.errors import InputError, MemoEdgeError
from memo_edge.export.graphs import IMAGE

__all__ = ["CALIBRATION_IMAGES", "Int8Options", "DEFAULT_INT8", "calibration_images", "quantize_full",
           "shortcuts_as_convs"]

# 64 to 2,000 exemplars gave int8 top-1 within 0.3 points of each other on a trained CIFAR-100 run
# (docs/benchmarks.md); 512 covers many classes and keeps calibration at seconds.
CALIBRATION_IMAGES = 512
FORMATS = ("qdq", "qoperator")
CALIBRATIONS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Int8Options:
    """How ``quantize_full`` quantizes (each field a lever measured in docs/benchmarks.md)."""

    format: str = "qdq"  # "qdq" (QuantizeLinear/DequantizeLinear pairs, fused by ONNX Runtime) or "qoperator" (QLinearConv...)
    per_channel: bool = True  # int8 weights with one scale per output channel, else one per tensor
    reduce_range: bool = True  # 7-bit weights: right on x86 CPUs without VNNI too, where u8 x s8 sums saturate
    calibration: str = "minmax"  # activation ranges: "minmax", "entropy" or "percentile" (99.999%)
    shortcut_conv: bool = True  # option-A shortcuts as 1x1 convolutions first (see the module docstring)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InputError(f"int8 format {self.format!r}: choose from {', '.join(FORMATS)}")
        if self.calibration not in CALIBRATIONS:
            raise InputError(f"int8 calibration {self.calibration!r}: choose from {', '.join(CALIBRATIONS)}")

    def describe(self) -> str:
        return (f"{self.format.upper() if self.format == 'qdq' else 'QOperator'}, weights per "
                f"{'channel' if self.per_channel else 'tensor'}{', reduce_range' if self.reduce_range else ', full range'}, "
                f"{self.calibration} calibration{', shortcuts as 1x1 convs' if self.shortcut_conv else ''}")


DEFAULT_INT8 = Int8Options()


def calibration_images(images: np.ndarray, labels: np.ndarray, count: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Up to ``count`` images, spread evenly over the classes (round robin over each class's rows)."""
    classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    order = [rows[i] for i in range(max((len(r) for r in classes), default=0)) for rows in classes if i < len(rows)]
    return images[np.sort(np.array(order[:count], dtype=np.int64))]


class _Batches:
    """ONNX Runtime's CalibrationDataReader protocol over a uint8 image array."""

    def __init__(self, images: np.ndarray, batch_size: int) -> None:
        self._batches = iter([{IMAGE: np.ascontiguousarray(images[i : i + batch_size])}
                              for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_full(data: bytes, images: np.ndarray, *, batch_size: int = 64,
                  options: Int8Options = DEFAULT_INT8) -> bytes:
    """The int8 version of a serialized full graph, calibrated on uint8 ``images``."""
    if len(images) == 0:
        raise MemoEdgeError("int8 calibration needs at least one image (the version has no exemplars)")
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError:
        raise MemoEdgeError("onnxruntime is not installed (needed for --int8): pip install 'memo-edge[onnx]'") from None
    model = onnx.load_from_string(data)
    if options.shortcut_conv:
        shortcuts_as_convs(model)
    extra: dict[str, Any] = {"WeightSymmetric": True, "ActivationSymmetric": False}
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[options.calibration]
    fmt = QuantFormat.QDQ if options.format == "qdq" else QuantFormat.QOperator
    quiet = _QuietRootLogger()  # the quantizer logs advice about its own pre-processing to the root logger
    with tempfile.TemporaryDirectory(prefix="memo-edge-int8-") as tmp, quiet:
        out = Path(tmp) / "full-int8.onnx"
        quantize_static(
            model, out, _Batches(images, batch_size), quant_format=fmt, per_channel=options.per_channel,
            reduce_range=options.reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=method, extra_options=extra,
        )
        model = onnx.load(str(out))
    model.producer_name = "memo-edge"
    model.doc_string = f"memo-edge full graph, int8 (static; {options.describe()})"
    onnx.checker.check_model(model)
    return model.SerializeToString()


def shortcuts_as_convs(model: onnx.ModelProto) -> int:
    """Replace, in place, every option-A shortcut of ``model`` by a 1x1 convolution; return how many.

    The pattern, as ``torch.onnx`` writes ``ShortcutA``: ``s = Slice(Slice(x))`` (steps on the two
    spatial axes, from 0), then ``Concat([s, ConstantOfShape(Shape(s))], axis=1)``. Its equal: ``Conv(x, W)``
    with a 1x1 kernel, the slices' steps as strides, and ``W[i, i] = 1`` for the C input channels, zero
    for the C appended ones. Anything else in the graph is left as it is.
    """
    g = model.graph
    producer = {out: node for node in g.node for out in node.output}
    constants = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    constants |= {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node
                  if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    found = [(concat, match) for concat in g.node if (match := _shortcut(concat, producer, constants)) is not None]
    channels = _channels(model) if found else {}  # shape inference only where there is something to rewrite
    replaced: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    for concat, (x, strides, chain) in found:
        c = channels.get(x, 0)
        if c <= 0:
            continue
        weight = np.zeros((2 * c, c, 1, 1), np.float32)
        weight[np.arange(c), np.arange(c)] = 1.0
        name = f"{concat.output[0]}.identity_weight"
        g.initializer.append(numpy_helper.from_array(weight, name))
        replaced[id(concat)] = helper.make_node("Conv", [x, name], [concat.output[0]], name=f"{concat.name}_as_conv",
                                                kernel_shape=[1, 1], strides=list(strides))
        dropped.update(id(n) for n in chain)
    if not replaced:
        return 0
    nodes = [replaced.get(id(n), n) for n in g.node if id(n) not in dropped]
    used = {name for n in nodes for name in n.input} | {o.name for o in g.output}
    nodes = [n for n in nodes if not (n.op_type == "Constant" and n.output[0] not in used)]
    del g.node[:]
    g.node.extend(nodes)
    return len(replaced)


def _shortcut(concat: onnx.NodeProto, producer: dict[str, onnx.NodeProto],
              constants: dict[str, np.ndarray]) -> tuple[str, tuple[int, int], list[onnx.NodeProto]] | None:
    """(x, (stride_h, stride_w), the nodes it replaces) when ``concat`` ends an option-A shortcut."""
    if concat.op_type != "Concat" or len(concat.input) != 2 or _axis(concat) != 1:
        return None
    sliced, zeros = (producer.get(name) for name in concat.input)
    if sliced is None or zeros is None or zeros.op_type != "ConstantOfShape" or sliced.op_type != "Slice":
        return None
    shape = producer.get(zeros.input[0])
    fill = next((numpy_helper.to_array(a.t) for a in zeros.attribute if a.name == "value"), np.zeros(1))
    if shape is None or shape.op_type != "Shape" or shape.input[0] != sliced.output[0] or np.any(fill != 0):
        return None
    chain, strides, x = [shape, zeros], {2: 1, 3: 1}, sliced.output[0]  # NCHW: axes 2 and 3
    while x in producer and producer[x].op_type == "Slice":
        node = producer[x]
        if len(node.input) != 5 or any(name not in constants for name in node.input[1:]):
            return None
        starts, ends, axes, steps = (constants[name].tolist() for name in node.input[1:])
        for start, end, axis, step in zip(starts, ends, axes, steps):
            if start != 0 or end < 2**31 - 1 or step < 1 or axis % 4 not in strides:  # whole axis, forwards
                return None
            strides[axis % 4] *= step
        chain.append(node)
        x = node.input[0]
    return x, (strides[2], strides[3]), chain


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _channels(model: onnx.ModelProto) -> dict[str, int]:
    """The static channel count (axis 1) of every 4-D tensor shape inference can tell."""
    inferred = onnx.shape_inference.infer_shapes(model)
    found = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value"):
            found[info.name] = dims[1].dim_value
    return found


class _QuietRootLogger:
    def __enter__(self) -> None:
        self._level = logging.root.level
        logging.root.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        logging.root.setLevel(self._level)
