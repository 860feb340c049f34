"""Learn one task: expand -> train -> weight-align -> select exemplars.

The one implementation of a MEMO task step. The workstation trainer (``memo_edge.train.run``) and the
on-device update call it alike; they differ only in where inputs come from and outputs go.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from memo_edge.data.sources import ArraySource, ImageSource, concat_sources
from memo_edge.memory.alignment import exemplar_bytes
from memo_edge.memory.exemplars import ExemplarSet, select_exemplars
from memo_edge.memory.policy import MemoryPolicy
from memo_edge.model import MemoNet
from memo_edge.train.features import class_means, extract
from memo_edge.train.recipe import Recipe, build_optimizer, build_scheduler

__all__ = ["TaskResult", "Transforms", "learn_task", "train_step"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transforms:
    train: Callable[[Tensor, torch.Generator], Tensor]  # augmentation, batched, uint8 BHWC -> float NCHW
    test: Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class TaskResult:
    exemplars: ExemplarSet
    class_means: np.ndarray
    align_gamma: float
    final_loss: float
    images_per_second: float
    per_class: int


def learn_task(
    model: MemoNet,
    new_data: ImageSource,
    exemplars: ExemplarSet,
    *,
    num_new: int,
    recipe: Recipe,
    train_base: bool,
    memory: MemoryPolicy,
    transforms: Transforms,
    device: torch.device,
    generator: torch.Generator,
    desc: str = "task",
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> TaskResult:
    """Run one MEMO task on ``new_data`` (labels already in the incremental label space).

    ``on_epoch(epoch, epochs, mean_loss)`` is called after each training epoch (1-based), e.g. to report
    progress to another process.
    """
    model.expand(num_new)
    model.to(device)
    if model.num_tasks > 1:
        model.freeze_old_branches()  # nothing to freeze for a single-backbone model
        if not train_base:
            model.freeze_trunk()
    data = concat_sources([new_data, ArraySource(exemplars.images, exemplars.labels)]) if len(exemplars) else new_data
    loss, speed = _train(model, data, recipe, transforms.train, device, generator, desc, on_epoch)
    gamma = model.weight_align()

    per_class = memory.per_class(
        model.num_classes, model_bytes=model.model_bytes(), bytes_per_exemplar=exemplar_bytes(new_data.image_shape)
    )
    kept = exemplars.reduce(per_class)
    new_features, _ = extract(model, new_data, transforms.test, device)
    images = new_data.take(np.arange(len(new_data)))
    updated = kept.extend(select_exemplars(images, new_data.labels, new_features, per_class))
    # Prototypes of every seen class come from the current model (old classes' features moved too).
    feats, _ = extract(model, ArraySource(updated.images, updated.labels), transforms.test, device)
    means = class_means(feats, updated.labels, model.num_classes)
    return TaskResult(updated, means, gamma, loss, speed, per_class)


def train_step(model: MemoNet, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, known: int) -> float:
    """One SGD step on a preprocessed batch; returns the loss."""
    out = model(x)
    loss = F.cross_entropy(out.logits, y)
    if out.aux_logits is not None:
        # Auxiliary target: 0 = "some old class", k + 1 = k-th new class (reference Sec. 4).
        aux_y = torch.where(y >= known, y - known + 1, torch.zeros_like(y))
        loss = loss + F.cross_entropy(out.aux_logits, aux_y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def _train(
    model: MemoNet,
    data: ImageSource,
    recipe: Recipe,
    augment: Callable[[Tensor, torch.Generator], Tensor],
    device: torch.device,
    generator: torch.Generator,
    desc: str,
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> tuple[float, float]:
    """Train for ``recipe.epochs``; returns (mean loss of the last epoch, images per second)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, recipe)
    scheduler = build_scheduler(optimizer, recipe)
    known = model.known_classes
    seen, elapsed, loss_mean = 0, 0.0, float("nan")
    for epoch in range(recipe.epochs):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(data), generator=generator).numpy()
        batches = [order[i : i + recipe.batch_size] for i in range(0, len(order), recipe.batch_size)]
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches.pop()  # BatchNorm cannot train on a single sample
        total, count = 0.0, 0
        bar = tqdm(batches, desc=f"{desc} epoch {epoch + 1}/{recipe.epochs}", leave=False, unit="batch", disable=None)
        for idx in bar:
            x = augment(torch.from_numpy(data.take(idx)).to(device, non_blocking=True), generator)
            y = torch.from_numpy(data.labels[idx]).to(device)
            total += train_step(model, optimizer, x, y, known) * len(idx)
            count += len(idx)
            bar.set_postfix(loss=f"{total / count:.3f}", img_s=f"{count / (time.perf_counter() - start):.0f}")
        scheduler.step()
        elapsed += time.perf_counter() - start
        seen += count
        loss_mean = total / max(count, 1)
        log.debug("%s epoch %d: loss %.4f", desc, epoch + 1, loss_mean)
        if on_epoch is not None:
            on_epoch(epoch + 1, recipe.epochs, loss_mean)
    return loss_mean, seen / elapsed if elapsed else 0.0
