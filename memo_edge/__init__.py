"""memo-edge: MEMO class-incremental learning from the workstation to edge GPUs."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
