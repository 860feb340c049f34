"""How many exemplars each class may keep after a task: one rule for the trainer and the device.

- ``total``: a fixed number of exemplars shared by all seen classes (the reference's 2,000).
- ``per_class``: a fixed number per class.
- ``exemplar_bytes``: a fixed number of exemplar bytes shared by all seen classes (``--memory-bytes``).
- ``bytes``: a fixed byte budget for model + exemplars (memory alignment; the device's rule):
  whatever the model does not use is exemplar memory, split evenly over the seen classes.

Underneath, every rule is a byte share per class (``class_bytes``): a count N means the bytes of N raw
exemplars (N x H x W x C), so under a codec (``memory/codec.py``) a class keeps whatever of its herding
order fits in its share. Under raw the counts are exactly the old ones (floor division nests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from memo_edge.utils.checks import check_int

__all__ = ["MemoryPolicy"]

PolicyKind = Literal["total", "per_class", "exemplar_bytes", "bytes"]
_KINDS = ("total", "per_class", "exemplar_bytes", "bytes")


@dataclass(frozen=True)
class MemoryPolicy:
    kind: PolicyKind
    value: int

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown memory policy {self.kind!r}; choose {', '.join(_KINDS)}")
        if self.value < 0:
            raise ValueError(f"memory must be >= 0, got {self.value}")

    def per_class(self, seen_classes: int, *, model_bytes: int, bytes_per_exemplar: int) -> int:
        """Raw exemplars each of ``seen_classes`` may keep, given the current model size: the count that
        fits in ``class_bytes`` (floor divisions nest, so these are the counts of the count rules)."""
        bytes_per_exemplar = check_int("bytes_per_exemplar", bytes_per_exemplar, minimum=1)
        return self.class_bytes(seen_classes, model_bytes=model_bytes,
                                bytes_per_exemplar=bytes_per_exemplar) // bytes_per_exemplar

    def class_bytes(self, seen_classes: int, *, model_bytes: int, bytes_per_exemplar: int) -> int:
        """Stored bytes each of ``seen_classes`` may keep (encoded bytes under a codec)."""
        seen_classes = check_int("seen_classes", seen_classes, minimum=1)
        if self.kind == "per_class":
            return self.value * bytes_per_exemplar
        if self.kind == "total":
            return self.value * bytes_per_exemplar // seen_classes
        if self.kind == "exemplar_bytes":
            return self.value // seen_classes
        return max(self.value - model_bytes, 0) // seen_classes

    def describe(self) -> str:
        if self.kind == "per_class":
            return f"{self.value} exemplars per class"
        if self.kind == "total":
            return f"{self.value} exemplars in total"
        if self.kind == "exemplar_bytes":
            return f"{self.value:,} exemplar bytes"
        return f"{self.value:,} bytes for model + exemplars"

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "value": self.value}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> MemoryPolicy:
        return cls(kind=data["kind"], value=int(data["value"]))  # type: ignore[arg-type]
