"""Argument checks shared by the pure-arithmetic modules (ValueError naming the argument, never assert)."""

from __future__ import annotations

import operator
from typing import Any

__all__ = ["check_int"]


def check_int(name: str, value: Any, *, minimum: int | None = 0) -> int:
    """``value`` as a plain int >= ``minimum`` (None: no bound); bools and floats are refused."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value
