"""The optimisation recipe of one task: the paper's defaults, optimizer and schedule builders."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
from torch import nn

from memo_edge.errors import InvalidValue
from memo_edge.options import SCHEDULES

__all__ = ["Recipe", "paper_recipe", "build_optimizer", "build_scheduler", "default_train_base"]

Schedule = Literal["step", "cosine"]


@dataclass(frozen=True)
class Recipe:
    epochs: int
    lr: float
    weight_decay: float
    milestones: tuple[int, ...]
    schedule: Schedule = "step"
    gamma: float = 0.1
    momentum: float = 0.9
    batch_size: int = 128

    def to_json(self) -> dict[str, object]:
        return asdict(self)


# Reference configs: task 0 lr 0.1, wd 5e-4, 200 epochs, milestones 60/120/170;
# tasks >= 1 lr 0.1, wd 2e-4, 170 epochs, milestones 80/120/150 (batch 128, SGD momentum 0.9).
_INITIAL = Recipe(epochs=200, lr=0.1, weight_decay=5e-4, milestones=(60, 120, 170))
_INCREMENTAL = Recipe(epochs=170, lr=0.1, weight_decay=2e-4, milestones=(80, 120, 150))


def paper_recipe(task: int, *, epochs: int | None = None, schedule: Schedule = "step", batch_size: int = 128) -> Recipe:
    """The paper's recipe for ``task``; a shorter ``epochs`` scales the milestones proportionally."""
    if schedule not in SCHEDULES:
        raise InvalidValue(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    base = _INITIAL if task == 0 else _INCREMENTAL
    if epochs is None or epochs == base.epochs:
        return replace(base, schedule=schedule, batch_size=batch_size)
    if epochs < 1:
        raise InvalidValue(f"epochs must be >= 1, got {epochs}")
    milestones = tuple(sorted({max(1, round(m * epochs / base.epochs)) for m in base.milestones if m * epochs / base.epochs < epochs}))
    return replace(base, epochs=epochs, milestones=milestones, schedule=schedule, batch_size=batch_size)


def build_optimizer(params: Iterable[nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    """SGD with the recipe's settings; fused (one kernel for every parameter) when they all live on a GPU.

    Fused SGD takes fp16's gradient scale and overflow flag as tensors, so with a GradScaler a step
    needs no read-back from the GPU; the CPU keeps torch's default implementation (bit for bit what
    it always trained with).
    """
    params = list(params)
    fused = bool(params) and all(p.device.type == "cuda" for p in params) and _sgd_fuses()
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                           **({"fused": True} if fused else {}))


def _sgd_fuses() -> bool:
    return "fused" in inspect.signature(torch.optim.SGD.__init__).parameters  # torch >= 2.3


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LRScheduler:
    if recipe.schedule == "cosine":
        # The authors' benchmark scripts: cosine annealing over the task's epochs.
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(recipe.milestones), gamma=recipe.gamma)


def default_train_base(first_task_classes: int, num_classes: int) -> bool:
    """Train the trunk after task 0 only when the first task is small (B0Inc5/10/20 in the reference).

    The reference freezes it for B50 runs and B0Inc50, where the first task already holds half the
    classes and the trunk has learned general features.
    """
    return 2 * first_task_classes < num_classes
