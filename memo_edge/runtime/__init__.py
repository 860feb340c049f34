"""The on-device side: package format, backends, inference, updates. Importing it never imports torch.

    rt = memo_edge.runtime.load("pkg/")
    labels, scores = rt.predict(batch_uint8)
"""

from __future__ import annotations

from memo_edge.runtime.package import Manifest, PackageError, PackageVersion, open_package
from memo_edge.runtime.predict import Runtime, load

__all__ = ["Manifest", "PackageError", "PackageVersion", "Runtime", "load", "open_package"]
