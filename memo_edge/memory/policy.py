"""How many exemplars each class may keep after a task: one rule for the trainer and the device.

- ``total``: a fixed number of exemplars shared by all seen classes (the reference's 2,000).
- ``per_class``: a fixed number per class.
- ``bytes``: a fixed byte budget for model + exemplars (memory alignment; the device's rule):
  whatever the model does not use is exemplar memory, split evenly over the seen classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from memo_edge.memory.alignment import exemplars_that_fit, per_class_quota

__all__ = ["MemoryPolicy"]

PolicyKind = Literal["total", "per_class", "bytes"]


@dataclass(frozen=True)
class MemoryPolicy:
    kind: PolicyKind
    value: int

    def __post_init__(self) -> None:
        if self.kind not in ("total", "per_class", "bytes"):
            raise ValueError(f"unknown memory policy {self.kind!r}; choose total, per_class or bytes")
        if self.value < 0:
            raise ValueError(f"memory must be >= 0, got {self.value}")

    def per_class(self, seen_classes: int, *, model_bytes: int, bytes_per_exemplar: int) -> int:
        """Exemplars each of ``seen_classes`` may keep, given the current model size."""
        if self.kind == "per_class":
            return self.value
        if self.kind == "total":
            return per_class_quota(self.value, seen_classes)
        return exemplars_that_fit(self.value - model_bytes, bytes_per_exemplar) // seen_classes

    def describe(self) -> str:
        if self.kind == "per_class":
            return f"{self.value} exemplars per class"
        if self.kind == "total":
            return f"{self.value} exemplars in total"
        return f"{self.value:,} bytes for model + exemplars"

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "value": self.value}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> MemoryPolicy:
        return cls(kind=data["kind"], value=int(data["value"]))  # type: ignore[arg-type]
