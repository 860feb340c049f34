"""The backend table, ``auto`` selection and ``create_backend``."""

from __future__ import annotations

import logging
from typing import Any

from memo_edge.errors import InputError
from memo_edge.runtime.backends.base import Backend
from memo_edge.runtime.backends.ort import OrtCpuBackend, OrtCudaBackend, OrtTrtBackend
from memo_edge.runtime.backends.tensorrt import TensorRTBackend
from memo_edge.runtime.package import PackageVersion

__all__ = ["BACKENDS", "AUTO_ORDER", "create_backend", "precision_options"]

log = logging.getLogger(__name__)

BACKENDS: dict[str, type[Backend]] = {
    cls.name: cls for cls in (OrtCpuBackend, OrtCudaBackend, OrtTrtBackend, TensorRTBackend)
}
AUTO_ORDER = ("tensorrt", "ort-trt", "ort-cuda", "ort-cpu")


def _pick_auto(options: dict[str, Any]) -> tuple[type[Backend], dict[str, Any]]:
    """The first available backend of AUTO_ORDER, and the options it takes (others dropped, logged)."""
    reasons = []
    for name in AUTO_ORDER:
        cls = BACKENDS[name]
        problem = cls.missing()
        if problem is None:
            accepted = cls.options
            ignored = sorted(set(options) - accepted)
            # An option the picked backend does not take (say precision=int8 when auto picks tensorrt)
            # was asked for explicitly: say so louder than the usual choice.
            (log.warning if ignored else log.info)("backend auto: using %s%s", name,
                                                   f" (ignoring {', '.join(ignored)})" if ignored else "")
            return cls, {k: v for k, v in options.items() if k in accepted}
        reasons.append(f"{name}: {problem}")
    # What this machine lacks is the user's to install: a user-side condition, like a missing file.
    raise InputError("no backend is available: " + "; ".join(reasons))


def precision_options(precision: str) -> dict[str, str]:
    """Backend options for a requested precision: none for "auto", which every backend accepts."""
    return {} if precision == "auto" else {"precision": precision}


def create_backend(name: str, version: PackageVersion, *, hints: dict[str, Any] | None = None,
                   **options: Any) -> Backend:
    """Backend ``name`` ("auto" = first available of AUTO_ORDER) for ``version``.

    ``options`` were asked for: a backend without one is refused (or, for auto, warned about).
    ``hints`` are passed to the backend only where it takes them, silently (the service's
    ``spinning=False`` means nothing to TensorRT)."""
    if name == "auto":
        cls, options = _pick_auto(options)
    else:
        found = BACKENDS.get(name)
        if found is None:
            raise InputError(f"unknown backend {name!r}; choose from auto, {', '.join(BACKENDS)}")
        cls = found
        problem = cls.missing()
        if problem is not None:
            raise InputError(f"backend {name} is not available here: {problem}")
        unknown = sorted(set(options) - cls.options)
        if unknown:
            raise InputError(f"backend {name} has no option {', '.join(unknown)} (it takes "
                             f"{', '.join(sorted(cls.options))})")
    taken = {k: v for k, v in (hints or {}).items() if k in cls.options and k not in options}
    return cls(version, **options, **taken)
