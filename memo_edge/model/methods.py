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
from functools import lru_cache

from memo_edge.errors import InvalidValue
from memo_edge.memory.alignment import BASE_EXEMPLARS, exemplars_that_fit, param_bytes
from memo_edge.model import split_parameter_counts
from memo_edge.utils.checks import check_int

__all__ = ["Method", "METHODS", "method_names", "get_method", "method_model_bytes", "aligned_budget_bytes",
           "aligned_exemplars"]

# Building a backbone to count it takes up to a second (ResNet-18); the counts never change.
_parameter_counts = lru_cache(maxsize=None)(split_parameter_counts)


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
    """Model bytes of ``method`` after ``num_tasks`` tasks: the trunk and a branch per task (one branch for
    all tasks if it does not grow), counted on freshly built modules at the method's split.

    The one model-bytes rule of the comparison, the budget report and the trainer's aligned memory.
    """
    num_tasks = check_int("num_tasks", num_tasks, minimum=1)
    trunk, branch = _parameter_counts(backbone, split=method.resolved_split(split))
    return param_bytes(trunk + (num_tasks if method.grow else 1) * branch)


def aligned_budget_bytes(backbone: str, num_tasks: int, bytes_per_exemplar: int,
                         base_exemplars: int = BASE_EXEMPLARS) -> int:
    """The paper's equal budget: what DER holds after ``num_tasks`` tasks (a whole backbone per task) plus
    ``base_exemplars`` exemplars (CIFAR-100 B0Inc10 with ResNet-32: 24,684,160 B)."""
    base_exemplars = check_int("base_exemplars", base_exemplars)
    bytes_per_exemplar = check_int("bytes_per_exemplar", bytes_per_exemplar, minimum=1)
    return method_model_bytes(METHODS["der"], backbone, num_tasks) + base_exemplars * bytes_per_exemplar


def aligned_exemplars(method: Method, backbone: str, num_tasks: int, bytes_per_exemplar: int, *,
                      split: int | None = None, base_exemplars: int = BASE_EXEMPLARS) -> int:
    """Exemplars ``method`` gets when its model + exemplars take DER's bytes (``aligned_budget_bytes``).

    CIFAR-100 B0Inc10 with ResNet-32: MEMO 3312, DER 2000, single backbone 7431 (memo-reference.md).
    """
    total = aligned_budget_bytes(backbone, num_tasks, bytes_per_exemplar, base_exemplars)
    return exemplars_that_fit(total - method_model_bytes(method, backbone, num_tasks, split=split), bytes_per_exemplar)
