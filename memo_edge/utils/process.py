"""Child processes that run this same memo_edge (``python -m memo_edge ...``), installed or not."""

from __future__ import annotations

import os
from pathlib import Path

import memo_edge

__all__ = ["child_env"]


def child_env() -> dict[str, str]:
    """This environment, with the directory holding this ``memo_edge`` first on PYTHONPATH."""
    root = str(Path(memo_edge.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}
