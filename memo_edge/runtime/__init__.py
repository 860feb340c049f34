"""The on-device side: package format, backends, inference. Importing it never imports torch."""

from __future__ import annotations

from memo_edge.runtime.package import Manifest, PackageError, PackageVersion, open_package

__all__ = ["Manifest", "PackageError", "PackageVersion", "open_package"]
