"""The version being served, and its hot swap.

Before each batch the batcher calls ``maybe_refresh``: at most every ``check_interval_s`` it reads the
catalog's current version (one small SQLite read); when it changed, the new version is loaded and
verified in a worker thread while the old one keeps serving, then swapped in between two batches.
A version that fails to load is logged and not retried until the current version changes again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memo_edge.errors import MemoEdgeError
from memo_edge.runtime.backends import precision_options
from memo_edge.runtime.catalog import catalog, current_version
from memo_edge.runtime.predict import Runtime, load

__all__ = ["ServiceState"]

log = logging.getLogger(__name__)
# ONNX Runtime's threads do not spin between runs here: between batches the event loop needs the CPU
# to read the next requests (benchmarks/serve_load.py measures both; docs/benchmarks.md).
SERVICE_HINTS = {"spinning": False}


class ServiceState:
    """The loaded ``Runtime``; ``runtime`` is only replaced between batches (by the batcher's task)."""

    def __init__(self, root: str | Path, *, backend: str = "auto", precision: str = "auto",
                 check_interval_s: float = 0.2, on_swap: Callable[[int], None] | None = None) -> None:
        self.root = Path(root)
        self.backend = backend
        self.options = precision_options(precision)
        self.check_interval_s = check_interval_s
        self.on_swap = on_swap
        self.runtime: Runtime | None = None
        self.failed: int | None = None  # a version that did not load, not retried until the head moves
        self.swaps = 0
        self._checked = float("-inf")
        self._loading: asyncio.Task[None] | None = None

    def load_now(self) -> Runtime:
        """Load the current version in this thread (at start-up: a broken package stops the service)."""
        self.runtime = self._load(None)
        return self.runtime

    @property
    def version(self) -> int | None:
        return None if self.runtime is None else self.runtime.package.manifest.version

    def _load(self, version: int | None) -> Runtime:
        rt = load(self.root, backend=self.backend, version=version, hints=SERVICE_HINTS, **self.options)
        log.info("serving %s version %d, backend %s (%s)", self.root, rt.package.manifest.version,
                 rt.backend.name, rt.backend.precision)
        return rt

    def head(self) -> int | None:
        with catalog(self.root) as conn:
            return current_version(conn)

    async def maybe_refresh(self) -> None:
        """Start loading the current version in the background if it is not the one served."""
        now = time.monotonic()
        if self._loading is not None or now - self._checked < self.check_interval_s:
            return
        self._checked = now
        try:
            head = await asyncio.to_thread(self.head)
        except MemoEdgeError as exc:
            log.warning("cannot read the current version of %s (%s); still serving version %s", self.root, exc,
                        self.version)
            return
        if head is not None and head != self.version and head != self.failed:
            self._loading = asyncio.get_running_loop().create_task(self._swap(head))

    async def swap_to(self, version: int) -> None:
        """Load ``version`` now and serve it (after a rollback through the service); raises if it fails."""
        if self._loading is not None:
            await asyncio.gather(self._loading, return_exceptions=True)
        rt = await asyncio.to_thread(self._load, version)
        self._install(rt)

    async def _swap(self, version: int) -> None:
        try:
            rt = await asyncio.to_thread(self._load, version)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old version serving
            self.failed = version
            log.error("version %d of %s did not load (%s: %s); still serving version %s", version, self.root,
                      type(exc).__name__, exc, self.version)
        else:
            self._install(rt)
        finally:
            self._loading = None

    def _install(self, rt: Runtime) -> None:
        old, self.runtime, self.failed = self.version, rt, None
        self.swaps += 1
        log.info("swapped version %s -> %d", old, rt.package.manifest.version)
        if self.on_swap is not None:
            self.on_swap(rt.package.manifest.version)

    def describe(self) -> dict[str, Any]:
        rt = self.runtime
        if rt is None:
            return {"version": None}
        m = rt.package.manifest
        b = m.budget
        return {"version": m.version, "parent": m.parent, "classes": list(m.class_names), "tasks": len(m.task_classes),
                "input": {"height": m.input.height, "width": m.input.width, "channels": m.input.channels},
                "budget": {"used_bytes": b.model_bytes + b.exemplar_bytes, "total_bytes": b.total_bytes,
                           "model_bytes": b.model_bytes, "exemplar_bytes": b.exemplar_bytes, "exemplars": b.exemplars},
                "backend": rt.backend.name, "precision": rt.backend.precision}
