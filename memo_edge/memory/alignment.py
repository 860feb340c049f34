"""Memory alignment: one budget rule, in bytes, for the paper's tables, the trainer and the device.

MEMO (Zhou et al., ICLR 2023, Sec. 5) compares methods at equal memory: model bytes are
4 x learnable parameters (float32, classifiers excluded), an exemplar costs H x W x C bytes (uint8),
and whatever the model leaves of the total budget is exemplar memory. Everything here is integer
arithmetic, so the reference figures (603 exemplars per ResNet-32, 3,312 MEMO exemplars on CIFAR-100
B0Inc10, ...) come out exactly. No torch import: ``count_parameters`` only needs ``.parameters()``
and ``.numel()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memo_edge.utils.checks import check_int

__all__ = [
    "BYTES_PER_PARAM",
    "BASE_EXEMPLARS",
    "count_parameters",
    "model_bytes",
    "exemplar_bytes",
    "exemplars_that_fit",
    "memo_model_bytes",
    "der_total_bytes",
    "memo_aligned_exemplars",
    "single_backbone_aligned_exemplars",
    "Quota",
    "exemplar_quota",
    "per_class_quota",
    "AlignedRow",
    "aligned_table",
    "QuotaRow",
    "quota_table",
]

BYTES_PER_PARAM = 4  # float32 weights
BASE_EXEMPLARS = 2000  # the reference memory for CIFAR-100 / ImageNet-100


def count_parameters(*modules: Any) -> int:
    """Learnable parameters of ``modules``: every parameter, frozen ones included; no buffers.

    Frozen old branches still occupy memory, so ``requires_grad`` is ignored. BN running statistics
    are buffers, not parameters, and are not counted (as in the paper's 463,504 for ResNet-32).
    A parameter shared between the given modules is counted once.
    """
    seen: set[int] = set()
    total = 0
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += int(p.numel())
    return total


def model_bytes(*modules: Any) -> int:
    return BYTES_PER_PARAM * count_parameters(*modules)


def exemplar_bytes(image_shape: tuple[int, int, int]) -> int:
    """Bytes of one uint8 exemplar of shape (H, W, C): 3,072 for 32x32x3."""
    if len(image_shape) != 3:
        raise ValueError(f"image shape must be (H, W, C), got {image_shape!r}")
    h, w, c = (check_int("image size", s, minimum=1) for s in image_shape)
    return h * w * c


def exemplars_that_fit(budget_bytes: int, bytes_per_exemplar: int) -> int:
    """Whole exemplars in ``budget_bytes``; a negative budget (model over the total) fits none."""
    budget_bytes = check_int("budget_bytes", budget_bytes, minimum=None)
    bytes_per_exemplar = check_int("bytes_per_exemplar", bytes_per_exemplar, minimum=1)
    return max(budget_bytes, 0) // bytes_per_exemplar


def memo_model_bytes(num_tasks: int, trunk_params: int, branch_params: int) -> int:
    """MEMO after T tasks: one trunk G plus T branches S, i.e. 4 * (G + T*S)."""
    t = check_int("num_tasks", num_tasks, minimum=1)
    g = check_int("trunk_params", trunk_params)
    s = check_int("branch_params", branch_params)
    return BYTES_PER_PARAM * (g + t * s)


def der_total_bytes(
    num_tasks: int,
    backbone_params: int,
    bytes_per_exemplar: int,
    base_exemplars: int = BASE_EXEMPLARS,
) -> int:
    """The "fair" total: what DER holds after T tasks (T full backbones + the base exemplars)."""
    t = check_int("num_tasks", num_tasks, minimum=1)
    p = check_int("backbone_params", backbone_params)
    img = check_int("bytes_per_exemplar", bytes_per_exemplar, minimum=1)
    base = check_int("base_exemplars", base_exemplars)
    return BYTES_PER_PARAM * t * p + base * img


def memo_aligned_exemplars(
    num_tasks: int,
    trunk_params: int,
    branch_params: int,
    bytes_per_exemplar: int,
    base_exemplars: int = BASE_EXEMPLARS,
) -> int:
    """MEMO's exemplars at DER's total: 2000 + floor((T*P - (G + T*S)) * 4 / img)."""
    backbone = trunk_params + branch_params
    total = der_total_bytes(num_tasks, backbone, bytes_per_exemplar, base_exemplars)
    model = memo_model_bytes(num_tasks, trunk_params, branch_params)
    return exemplar_quota(total, model, bytes_per_exemplar, 1).total_exemplars


def single_backbone_aligned_exemplars(
    num_tasks: int,
    backbone_params: int,
    bytes_per_exemplar: int,
    base_exemplars: int = BASE_EXEMPLARS,
) -> int:
    """A one-backbone method (iCaRL, ...) at DER's total: 2000 + floor((T-1) * P * 4 / img)."""
    total = der_total_bytes(num_tasks, backbone_params, bytes_per_exemplar, base_exemplars)
    model = BYTES_PER_PARAM * backbone_params
    return exemplar_quota(total, model, bytes_per_exemplar, 1).total_exemplars


@dataclass(frozen=True)
class Quota:
    total_exemplars: int  # (total - model) // bytes per exemplar
    per_class: int  # total_exemplars // seen classes (herding prefixes of equal length)
    exemplar_bytes: int  # the exemplar budget: total - model bytes (not all of it need be used)


def exemplar_quota(
    total_bytes: int, model_bytes: int, bytes_per_exemplar: int, seen_classes: int
) -> Quota:
    """The design's rule: what the model leaves of the total is exemplars, split evenly."""
    total_bytes = check_int("total_bytes", total_bytes)
    model_bytes = check_int("model_bytes", model_bytes)
    seen_classes = check_int("seen_classes", seen_classes, minimum=1)
    if model_bytes > total_bytes:
        raise ValueError(
            f"the model needs {model_bytes:,} bytes, more than the total budget of {total_bytes:,}"
        )
    budget = total_bytes - model_bytes
    count = exemplars_that_fit(budget, bytes_per_exemplar)
    return Quota(total_exemplars=count, per_class=count // seen_classes, exemplar_bytes=budget)


def per_class_quota(memory: int, seen_classes: int) -> int:
    """Fixed total memory M split over the seen classes: M // seen (2000 -> 200, 100, 66, ...)."""
    memory = check_int("memory", memory)
    seen_classes = check_int("seen_classes", seen_classes, minimum=1)
    return memory // seen_classes


@dataclass(frozen=True)
class AlignedRow:
    scenario: str
    num_tasks: int
    memo_exemplars: int
    single_backbone_exemplars: int
    der_exemplars: int  # DER keeps the base exemplars; its backbones take the rest
    der_total_bytes: int


def aligned_table(
    trunk_params: int,
    branch_params: int,
    bytes_per_exemplar: int,
    scenarios: Sequence[tuple[str, int]],
    base_exemplars: int = BASE_EXEMPLARS,
) -> list[AlignedRow]:
    """The paper's aligned-exemplar table: one row per (scenario name, number of tasks)."""
    backbone = trunk_params + branch_params
    rows = []
    for name, num_tasks in scenarios:
        rows.append(
            AlignedRow(
                scenario=name,
                num_tasks=num_tasks,
                memo_exemplars=memo_aligned_exemplars(
                    num_tasks, trunk_params, branch_params, bytes_per_exemplar, base_exemplars
                ),
                single_backbone_exemplars=single_backbone_aligned_exemplars(
                    num_tasks, backbone, bytes_per_exemplar, base_exemplars
                ),
                der_exemplars=base_exemplars,
                der_total_bytes=der_total_bytes(
                    num_tasks, backbone, bytes_per_exemplar, base_exemplars
                ),
            )
        )
    return rows


@dataclass(frozen=True)
class QuotaRow:
    tasks: int
    model_bytes: int
    exemplar_bytes: int  # total - model bytes
    exemplars: int
    per_class: int


def quota_table(
    total_bytes: int,
    trunk_params: int,
    branch_params: int,
    bytes_per_exemplar: int,
    tasks: Sequence[int],
    seen_classes: Sequence[int],
) -> list[QuotaRow]:
    """How a fixed total splits between MEMO's growing model and its exemplars, task by task.

    ``seen_classes[i]`` is the number of classes seen after ``tasks[i]`` tasks (B50 runs start big).
    """
    if len(tasks) != len(seen_classes):
        raise ValueError(f"tasks and seen_classes differ in length: {len(tasks)} vs {len(seen_classes)}")
    rows = []
    for t, seen in zip(tasks, seen_classes):
        model = memo_model_bytes(t, trunk_params, branch_params)
        quota = exemplar_quota(total_bytes, model, bytes_per_exemplar, check_int("seen_classes", seen, minimum=1))
        rows.append(
            QuotaRow(
                tasks=t,
                model_bytes=model,
                exemplar_bytes=quota.exemplar_bytes,
                exemplars=quota.total_exemplars,
                per_class=quota.per_class,
            )
        )
    return rows
