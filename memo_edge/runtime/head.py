"""The classifier head, applied in numpy the same way for every backend (so backends agree)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

__all__ = ["Head", "softmax"]


@dataclass(frozen=True)
class Head:
    weight: np.ndarray  # float32 [classes, feature_dim * tasks]
    bias: np.ndarray  # float32 [classes]

    @classmethod
    def load(cls, path: Path) -> Head:
        tensors = load_file(str(path))
        return cls(tensors["weight"].astype(np.float32), tensors["bias"].astype(np.float32))

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weight.T + self.bias


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)
