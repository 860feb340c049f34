"""Backends run a package's graphs; the head is applied in numpy afterwards, the same for all.

One small interface and one table of backends (``BACKENDS``). This module holds ONNX Runtime on
the CPU; GPU execution providers and native TensorRT engines join the table with the runtime issue.
Nothing here imports torch.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from memo_edge.errors import MemoEdgeError
from memo_edge.runtime.head import Head
from memo_edge.runtime.package import PackageVersion

__all__ = ["Backend", "OrtCpuBackend", "BACKENDS", "load_onnxruntime", "create_backend"]


class Backend(Protocol):
    name: str

    @classmethod
    def available(cls) -> bool: ...

    def trunk(self, images: np.ndarray) -> np.ndarray: ...

    def branch(self, task: int, trunk_features: np.ndarray) -> np.ndarray: ...

    def features(self, images: np.ndarray) -> np.ndarray: ...

    def logits(self, images: np.ndarray) -> np.ndarray: ...


def load_onnxruntime() -> Any:
    """Import onnxruntime, refusing a broken install with both the CPU and GPU wheels present."""
    dists = {d.metadata["Name"].lower() for d in importlib.metadata.distributions() if d.metadata["Name"]}
    if {"onnxruntime", "onnxruntime-gpu"} <= dists:
        raise MemoEdgeError("both onnxruntime and onnxruntime-gpu are installed and overwrite each other; "
                            "pip uninstall -y onnxruntime onnxruntime-gpu, then install one of them")
    try:
        import onnxruntime
    except ImportError:
        raise MemoEdgeError("onnxruntime is not installed: pip install 'memo-edge[onnx]' "
                            "(or 'memo-edge[gpu]' for CUDA)") from None
    return onnxruntime


class OrtBackend:
    """Runs trunk, branch and full graphs with ONNX Runtime sessions (one per graph)."""

    name = "ort"
    providers: Sequence[str] = ("CPUExecutionProvider",)

    def __init__(self, version: PackageVersion, *, use_full: bool = True) -> None:
        ort = load_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

        def session(entry):  # noqa: ANN001, ANN202
            return ort.InferenceSession(str(version.path(entry)), sess_options=options, providers=list(self.providers))

        m = version.manifest
        trunk = m.file("trunk")
        if trunk is None:
            raise MemoEdgeError(f"{version.root}: the manifest lists no trunk graph")
        self._trunk = session(trunk)
        self._branches = [session(entry) for entry in m.branches()]
        full = m.file("full")
        self._full = session(full) if use_full and full is not None else None
        head = m.file("head")
        if head is None:
            raise MemoEdgeError(f"{version.root}: the manifest lists no head")
        self.head = Head.load(version.path(head))

    @classmethod
    def available(cls) -> bool:
        try:
            ort = load_onnxruntime()
        except MemoEdgeError:
            return False
        return all(p in ort.get_available_providers() for p in cls.providers)

    def trunk(self, images: np.ndarray) -> np.ndarray:
        return self._trunk.run(None, {"image": images})[0]

    def branch(self, task: int, trunk_features: np.ndarray) -> np.ndarray:
        return self._branches[task].run(None, {"trunk_features": trunk_features})[0]

    def features(self, images: np.ndarray) -> np.ndarray:
        shared = self.trunk(images)
        return np.concatenate([self.branch(t, shared) for t in range(len(self._branches))], axis=1)

    def logits(self, images: np.ndarray) -> np.ndarray:
        if self._full is not None:
            return self._full.run(None, {"image": images})[0]
        return self.head(self.features(images))

    def full_logits(self, images: np.ndarray) -> np.ndarray | None:
        return None if self._full is None else self._full.run(None, {"image": images})[0]


class OrtCpuBackend(OrtBackend):
    name = "ort-cpu"


BACKENDS: dict[str, type[OrtBackend]] = {"ort-cpu": OrtCpuBackend}


def create_backend(name: str, version: PackageVersion, **options: Any) -> OrtBackend:
    try:
        cls = BACKENDS[name]
    except KeyError:
        raise MemoEdgeError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}") from None
    return cls(version, **options)
