"""The plan of a run's tasks: everything fixed before a task starts, checked and resolved once.

The trainer (``train/run.py``, once per run) and the device update (once per update) build it with
``plan_tasks`` and hand it to ``learn_task``: transforms, the recipes, the memory rule, whether the
trunk trains, the device, the resolved precision and the codec settings. ``check_options`` is the
part that needs no data, so ``--nproc``'s launcher checks the options without loading the dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from memo_edge.errors import InputError
from memo_edge.memory.codec import Codec
from memo_edge.memory.policy import MemoryPolicy
from memo_edge.train.augment import TestTransform, build_augment
from memo_edge.train.config import TaskOptions
from memo_edge.train.precision import resolve_precision
from memo_edge.train.recipe import Recipe, paper_recipe

__all__ = ["Transforms", "TaskPlan", "plan_tasks", "check_options"]


@dataclass(frozen=True)
class Transforms:
    train: Callable[[Tensor, torch.Generator], Tensor]  # augmentation, batched, uint8 BHWC -> float NCHW
    test: Callable[[Tensor], Tensor]

    @classmethod
    def of(cls, augment: str, mean: Sequence[float], std: Sequence[float], size: int) -> Transforms:
        """The augmentation ``augment`` (cifar, imagenet) and the test transform of images normalised so."""
        return cls(build_augment(augment, tuple(mean), tuple(std), size), TestTransform(tuple(mean), tuple(std)))


@dataclass(frozen=True)
class TaskPlan:
    """What ``learn_task`` needs besides the model, the data and the exemplars; the same for every task."""

    transforms: Transforms
    recipes: tuple[Recipe, Recipe]  # the first task's, every later task's
    memory: MemoryPolicy
    train_base: bool  # the trunk trains after the first task
    device: torch.device
    precision: str = "fp32"  # resolved: fp32, bf16 or fp16 (memo_edge.train.precision)
    codec_mix: float = 0.0  # probability that a new training image is its round trip through a lossy codec
    stack_frozen: bool = False  # the frozen old branches train as one grouped network (model/frozen.py)
    channels_last: bool | None = None  # None: where it measured faster (use_channels_last)

    def recipe(self, task: int) -> Recipe:
        """The recipe of task ``task`` (0-based)."""
        return self.recipes[0 if task == 0 else 1]


def check_options(options: TaskOptions, device: torch.device, codec: Codec) -> tuple[tuple[Recipe, Recipe], str]:
    """The recipes and the precision ``options`` resolve to on ``device``; every mistake an InputError.

    Needs no data: what the ``--nproc`` launcher checks before it starts any process.
    """
    recipes = tuple(paper_recipe(task, epochs=epochs, schedule=options.schedule, batch_size=options.batch_size)  # type: ignore[arg-type]
                    for task, epochs in ((0, options.init_epochs), (1, options.epochs)))
    precision = resolve_precision(options.precision, device)
    if not 0.0 <= options.codec_mix <= 1.0:
        raise InputError(f"--codec-mix must be a probability in [0, 1], got {options.codec_mix}")
    if options.codec_mix and not codec.lossy:
        raise InputError(f"--codec-mix shows new images through a lossy exemplar codec (jpeg:Q, webp:Q); the memory "
                         f"stores its exemplars as {codec}, which gives them back unchanged")
    return recipes, precision  # type: ignore[return-value]


def plan_tasks(options: TaskOptions, transforms: Transforms, *, memory: MemoryPolicy, train_base: bool,
               device: torch.device, codec: Codec) -> TaskPlan:
    """The plan of every task ``options`` describe, on ``device``, under the exemplar ``codec``."""
    recipes, precision = check_options(options, device, codec)
    return TaskPlan(transforms, recipes, memory, train_base, device, precision, options.codec_mix,
                    options.stack_frozen)
