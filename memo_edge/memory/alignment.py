"""Memory alignment's integer arithmetic: bytes of a model and of an exemplar, and how many fit.

MEMO (Zhou et al., ICLR 2023, Sec. 5) compares methods at equal memory: model bytes are
4 x learnable parameters (float32, classifiers excluded), an exemplar costs H x W x C bytes (uint8),
and whatever the model leaves of the total budget is exemplar memory. Each method's model bytes and the
paper's equal budget live with the methods (``model/methods.py``); how the exemplar memory is shared
between classes is ``memory/policy.py``. Everything is integer arithmetic, so the reference figures
(603 exemplars per ResNet-32, 3,312 MEMO exemplars on CIFAR-100 B0Inc10, ...) come out exactly.
No torch import: ``count_parameters`` only needs ``.parameters()`` and ``.numel()``.
"""

from __future__ import annotations

from typing import Any

from memo_edge.utils.checks import check_int

__all__ = [
    "BYTES_PER_PARAM",
    "BASE_EXEMPLARS",
    "count_parameters",
    "param_bytes",
    "model_bytes",
    "exemplar_bytes",
    "exemplars_that_fit",
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


def param_bytes(parameters: int) -> int:
    """Bytes of ``parameters`` float32 weights: the one place the 4 B per parameter is applied."""
    return BYTES_PER_PARAM * check_int("parameters", parameters)


def model_bytes(*modules: Any) -> int:
    """Bytes of the live ``modules`` (``count_parameters``)."""
    return param_bytes(count_parameters(*modules))


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
