"""An int8 copy of the full graph for CPU inference: ONNX Runtime static quantization (QDQ).

The float32 graphs stay the source of truth; ``full-int8`` is an extra file a package may carry
(``memo-edge export --int8``), re-made by every ``update`` from the new version's float graph, and
checked like the others (``export/verify.py``: top-1 agreement with PyTorch). Weights are int8 per
output channel, activations uint8 with ranges calibrated on the version's own exemplars: they are
on the device for every update, cover every seen class, and come from the training data.

uint8 activations x int8 weights is the pairing ONNX Runtime's x86 kernels are fastest at with
AVX512-VNNI/AVX-VNNI (its documentation warns of saturation on older x86 CPUs without VNNI; ARM64
CPUs such as a Jetson's have int8 dot-product instructions).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from memo_edge.errors import MemoEdgeError
from memo_edge.export.graphs import IMAGE

__all__ = ["CALIBRATION_IMAGES", "calibration_images", "quantize_full"]

# 64 to 2,000 exemplars gave int8 top-1 within 0.3 points of each other on a trained CIFAR-100 run
# (docs/benchmarks.md); 512 covers many classes and keeps calibration at seconds.
CALIBRATION_IMAGES = 512


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


def quantize_full(data: bytes, images: np.ndarray, *, batch_size: int = 64) -> bytes:
    """The int8 QDQ version of a serialized full graph, calibrated on uint8 ``images``."""
    if len(images) == 0:
        raise MemoEdgeError("int8 calibration needs at least one image (the version has no exemplars)")
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError:
        raise MemoEdgeError("onnxruntime is not installed (needed for --int8): pip install 'memo-edge[onnx]'") from None
    options: dict[str, Any] = {"WeightSymmetric": True, "ActivationSymmetric": False}
    quiet = _QuietRootLogger()  # the quantizer logs advice about its own pre-processing to the root logger
    with tempfile.TemporaryDirectory(prefix="memo-edge-int8-") as tmp, quiet:
        out = Path(tmp) / "full-int8.onnx"
        quantize_static(
            onnx.load_from_string(data), out, _Batches(images, batch_size), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, extra_options=options,
        )
        model = onnx.load(str(out))
    model.producer_name, model.doc_string = "memo-edge", "memo-edge full graph, int8 (QDQ, static)"
    onnx.checker.check_model(model)
    return model.SerializeToString()


class _QuietRootLogger:
    def __enter__(self) -> None:
        self._level = logging.root.level
        logging.root.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        logging.root.setLevel(self._level)
