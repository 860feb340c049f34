"""The per-task MEMO trainer: recipe, task step, evaluation, checkpoints, whole runs."""

from __future__ import annotations

from memo_edge.train.config import TrainConfig

__all__ = ["TrainConfig"]
