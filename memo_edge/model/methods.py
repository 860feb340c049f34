"""The methods of the memory-aligned comparison, all trained by the same trainer.

Each is MemoNet with other settings (one table, the single source of truth):
- ``memo``: shared trunk, one branch (the specialised blocks) per task;
- ``der``: DER-style expansion, a whole new backbone per task (``split=0``: nothing shared), the same
  classifier, auxiliary-classifier and weight-alignment rules as MEMO, no pruning;
- ``replay``: one backbone for all tasks (iCaRL-style replay without distillation), the classifier
  grows, trained on new data + exemplars.
"""

from __future__ import annotations

from dataclasses import dataclass

from memo_edge.errors import InvalidValue
from memo_edge.memory.alignment import der_total_bytes, exemplars_that_fit
from memo_edge.model import split_parameter_counts

__all__ = ["Method", "METHODS", "method_names", "get_method", "method_model_bytes", "aligned_exemplars"]


@dataclass(frozen=True)
class Method:
    name: str
    split: int | None  # stages in the shared trunk; None: the backbone's MEMO cut, 0: nothing shared
    grow: bool  # a branch per task, or one branch for all tasks
    summary: str

    def resolved_split(self, requested: int | None) -> int | None:
        """MEMO honours ``--split``; the baselines' structure is fixed by definition."""
        return requested if self.name == "memo" else self.split


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("memo", None, True, "MEMO: shared trunk, one specialised branch per task"),
        Method("der", 0, True, "DER-style: a whole backbone per task"),
        Method("replay", 0, False, "single backbone with exemplar replay"),
    )
}


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise InvalidValue(f"unknown method {name!r}; choose from {', '.join(METHODS)}") from None


def method_model_bytes(method: Method, backbone: str, num_tasks: int, *, split: int | None = None) -> int:
    """Model bytes of ``method`` after ``num_tasks`` tasks, counted on freshly built modules."""
    trunk, branch = split_parameter_counts(backbone, split=method.resolved_split(split))
    return 4 * (trunk + (num_tasks if method.grow else 1) * branch)


def aligned_exemplars(method: Method, backbone: str, num_tasks: int, bytes_per_exemplar: int, *,
                      split: int | None = None, base_exemplars: int = 2000) -> int:
    """Exemplars ``method`` gets when its model + exemplars take DER's bytes (T backbones + 2000 exemplars).

    CIFAR-100 B0Inc10 with ResNet-32: MEMO 3312, DER 2000, single backbone 7431 (memo-reference.md).
    """
    trunk, branch = split_parameter_counts(backbone)
    total = der_total_bytes(num_tasks, trunk + branch, bytes_per_exemplar, base_exemplars)
    return exemplars_that_fit(total - method_model_bytes(method, backbone, num_tasks, split=split), bytes_per_exemplar)
