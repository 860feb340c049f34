"""Domain errors. The CLI maps them to exit codes in one place (`memo_edge.cli`)."""

from __future__ import annotations

__all__ = ["MemoEdgeError", "InputError"]


class MemoEdgeError(Exception):
    """A failure the user should read as one line (CLI exit code 1)."""


class InputError(MemoEdgeError):
    """Bad input from the user: options, data, run directories (CLI exit code 2)."""
