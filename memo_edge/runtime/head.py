"""The classifier head, applied in numpy the same way for every backend (so backends agree)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from memo_edge.runtime.package import PackageError

__all__ = ["Head", "softmax"]


@dataclass(frozen=True)
class Head:
    weight: np.ndarray  # float32 [classes, feature_dim * tasks]
    bias: np.ndarray  # float32 [classes]

    @classmethod
    def load(cls, path: Path) -> Head:
        tensors = load_file(str(path))
        weight, bias = tensors.get("weight"), tensors.get("bias")
        if weight is None or bias is None or weight.ndim != 2 or bias.shape != weight.shape[:1]:
            raise PackageError(f"{path}: not a classifier head (expected weight [classes, features] and bias [classes])")
        return cls(weight.astype(np.float32), bias.astype(np.float32))

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weight.T + self.bias


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)
