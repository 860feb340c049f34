"""Named phases of long work, for whoever measures it: a benchmark wraps the work in ``record()`` and
gets the exclusive wall time of each phase; with nobody recording, a phase costs one lookup.

The library marks these phases (stable names: ``benchmarks/update_speed.py`` reads them):

- ``model_blobs``: serializing a model's files (export/exporter.py); inside it ``full_graph`` and
  ``branch_graph``, the ONNX export of the full graph and of one branch (export/graphs.py);
- ``verify_package``: the verification of a new version (export/verify.py); inside it
  ``torch_reference``, PyTorch's run through the trunk, every branch and the head;
- ``ort_session``: creating one ONNX Runtime session (runtime/backends/ort.py); ``split_path`` and
  ``full_graph_run``: a backend's trunk-then-branches features and its full graph's logits
  (runtime/backends/base.py);
- ``commit``: storing and committing a version (runtime/writer.py); ``collect_garbage``
  (runtime/versions.py).

Times are exclusive: a phase inside another is taken out of the outer one, so the names add up to the
time spent in any of them. Only the recording thread's phases count (a context variable). Torch-free.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

__all__ = ["phase", "timed", "record"]

F = TypeVar("F", bound=Callable[..., Any])


class _Recorder:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.inner: list[float] = []  # per open phase: the time of the phases nested in it


_recorder: ContextVar[_Recorder | None] = ContextVar("memo_edge_phase_recorder", default=None)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the block as phase ``name`` (exclusive of the phases inside it) when someone records."""
    recorder = _recorder.get()
    if recorder is None:
        yield
        return
    recorder.inner.append(0.0)
    start = time.perf_counter()
    try:
        yield
    finally:
        took = time.perf_counter() - start
        nested = recorder.inner.pop()
        recorder.seconds[name] = recorder.seconds.get(name, 0.0) + took - nested
        if recorder.inner:
            recorder.inner[-1] += took


def timed(name: str) -> Callable[[F], F]:
    """Decorate a function as phase ``name``: a plain call, one lookup longer, while nobody records."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if _recorder.get() is None:
                return fn(*args, **kwargs)
            with phase(name):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


@contextlib.contextmanager
def record() -> Iterator[dict[str, float]]:
    """Record the phases run inside the block: the dict it yields fills with seconds by phase name.

    Clearing the dict mid-block starts the count again (a benchmark times only what follows an event)."""
    recorder = _Recorder()
    token = _recorder.set(recorder)
    try:
        yield recorder.seconds
    finally:
        _recorder.reset(token)
