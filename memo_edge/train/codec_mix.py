"""Codec-matched training: new-task images seen, some of the time, as the exemplar memory would hold them.

Exemplars stored under a lossy codec (``memory/codec.py``) come back with its artefacts, while the new
task's images are clean: a domain shift between old and new classes (Luo et al., CVPR 2023). With
probability ``p``, redrawn every epoch, a new image is replaced by its round trip through the codec.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["CodecMix"]


class CodecMix:
    """An in-memory image source over (original, round-tripped) pairs; ``redraw`` picks per image which one."""

    def __init__(self, original: np.ndarray, round_trip: np.ndarray, labels: np.ndarray, probability: float) -> None:
        if original.shape != round_trip.shape or len(labels) != len(original):
            raise ValueError("original images, their round trips and labels must match in length and shape")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"the codec-matching probability must be in [0, 1], got {probability}")
        self.original, self.round_trip, self.probability = original, round_trip, probability
        self.labels = np.asarray(labels, np.int64)
        self.use = np.zeros(len(original), bool)  # which images are their round trip this epoch

    @property
    def image_shape(self) -> tuple[int, int, int]:
        h, w, c = self.original.shape[1:]
        return (int(h), int(w), int(c))

    def __len__(self) -> int:
        return len(self.original)

    def redraw(self, generator: torch.Generator) -> None:
        """This epoch's choice: one uniform draw per image from ``generator`` (the same on every process)."""
        self.use = (torch.rand(len(self), generator=generator) < self.probability).numpy()

    def take(self, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, np.int64)
        return np.where(self.use[idx, None, None, None], self.round_trip[idx], self.original[idx])

    def subset(self, indices: np.ndarray) -> CodecMix:
        idx = np.asarray(indices, np.int64)
        part = CodecMix(self.original[idx], self.round_trip[idx], self.labels[idx], self.probability)
        part.use = self.use[idx]
        return part

    def with_labels(self, labels: np.ndarray) -> CodecMix:
        other = CodecMix(self.original, self.round_trip, labels, self.probability)
        other.use = self.use
        return other
