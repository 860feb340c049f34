"""The on-device inference side: package format, backends, predict, bench. Never imports torch.

    rt = memo_edge.runtime.load("pkg/")
    labels, scores = rt.predict(batch_uint8)

The names below load on first use (PEP 562), so ``import memo_edge.runtime.package`` does not pull in
the backends, ONNX Runtime or tqdm.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Manifest", "PackageError", "PackageVersion", "Runtime", "load", "open_package"]

_HOME = {"Manifest": "package", "PackageError": "package", "PackageVersion": "package", "open_package": "package",
         "Runtime": "predict", "load": "predict"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
