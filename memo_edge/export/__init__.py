"""Export: ONNX graphs, numerical verification, the package, TensorRT engines (needs ``memo-edge[onnx]``)."""

from __future__ import annotations
