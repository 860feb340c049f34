"""The paper's experiments: memory-aligned comparison of methods, accuracy-memory curves (AUC)."""

from __future__ import annotations
