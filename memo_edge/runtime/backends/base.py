"""The backend interface: one package version's graphs run by name, logits out.

The classifier head is applied in numpy afterwards (``runtime/head.py``), the same for every backend.
Each backend class declares the keyword options it takes (``options``), so ``create_backend`` can
refuse or drop the others without inspecting signatures. Nothing here imports torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from memo_edge.errors import InputError, MemoEdgeError
from memo_edge.runtime.engine_cache import graph_name
from memo_edge.runtime.head import Head
from memo_edge.runtime.package import FileEntry, PackageError, PackageVersion
from memo_edge.utils.phases import timed

__all__ = ["Backend", "GraphFn"]

GraphFn = Callable[[np.ndarray], np.ndarray]


class Backend(ABC):
    """Runs one package version's graphs by name; the head is numpy, the same for every backend.

    The graphs ``logits`` needs (full, else trunk and branches) are loaded when the backend is
    created, so a broken install fails there; the others on first use, so a predicting process
    never holds the split graphs' weights twice.
    """

    name: ClassVar[str] = ""
    # The keyword options __init__ takes: what create_backend passes through (or refuses, or drops for auto).
    options: ClassVar[frozenset[str]] = frozenset({"use_full"})
    precision: str = "fp32"  # of the arithmetic that produces the logits
    full_role: str = "full"  # the package file with the one-graph path (image -> logits)

    def __init__(self, version: PackageVersion, *, use_full: bool = True) -> None:
        problem = type(self).missing()
        if problem is not None:
            raise InputError(f"backend {self.name} is not available here: {problem}")
        m = version.manifest
        if m.file("trunk") is None:
            raise MemoEdgeError(f"{version.root}: the manifest lists no trunk graph")
        head = m.file("head")
        if head is None:
            raise MemoEdgeError(f"{version.root}: the manifest lists no head")
        self.version = version
        self.head = Head.load(version.path(head))
        if self.head.weight.shape[0] != len(m.class_names):
            raise PackageError(f"{version.path(head)}: the head has {self.head.weight.shape[0]} classes, the manifest "
                               f"of version {m.version} names {len(m.class_names)}")
        self.tasks = len(m.branches())
        self.has_full = use_full and m.file(self.full_role) is not None
        self._graphs: dict[str, GraphFn] = {}
        self._open()
        for graph in [self.full_role] if self.has_full else ["trunk", *(f"branch-{t}" for t in range(self.tasks))]:
            self._graph(graph)

    @classmethod
    def missing(cls) -> str | None:
        """What this machine lacks to run this backend (with the install hint), None when nothing."""
        return None

    @classmethod
    def available(cls) -> bool:
        return cls.missing() is None

    def _open(self) -> None:
        """Set up what the graphs share (a runtime, a stream); called once, before any graph loads."""

    @abstractmethod
    def _load(self, graph: str, entry: FileEntry) -> GraphFn:
        """One graph of the package as a function of its input batch."""

    def _graph(self, graph: str) -> GraphFn:
        fn = self._graphs.get(graph)
        if fn is None:
            entry = next((f for f in self.version.manifest.files if graph_name(f) == graph), None)
            if entry is None:
                raise MemoEdgeError(f"{self.version.root}: version {self.version.manifest.version} has no graph {graph}")
            fn = self._graphs[graph] = self._load(graph, entry)
        return fn

    def _check_images(self, images: np.ndarray) -> np.ndarray:
        spec = self.version.manifest.input
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[1:] != spec.shape:
            got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
            raise InputError(f"images must be uint8 [N, {', '.join(map(str, spec.shape))}] (NHWC), got {got}")
        return np.ascontiguousarray(images)

    def trunk(self, images: np.ndarray) -> np.ndarray:
        return self._graph("trunk")(self._check_images(images))

    def branch(self, task: int, trunk_features: np.ndarray) -> np.ndarray:
        return self._graph(f"branch-{task}")(np.ascontiguousarray(trunk_features, dtype=np.float32))

    @timed("split_path")
    def features(self, images: np.ndarray) -> np.ndarray:
        shared = self.trunk(images)
        return np.concatenate([self.branch(t, shared) for t in range(self.tasks)], axis=1)

    @timed("full_graph_run")
    def full_logits(self, images: np.ndarray) -> np.ndarray | None:
        return self._graph(self.full_role)(self._check_images(images)) if self.has_full else None

    def logits(self, images: np.ndarray) -> np.ndarray:
        full = self.full_logits(images)
        return full if full is not None else self.head(self.features(images))

    def close(self) -> None:
        self._graphs.clear()


