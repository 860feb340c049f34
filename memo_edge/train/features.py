"""Batched inference over an image source: features for herding and NME, logits for evaluation."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from memo_edge.data.sources import ImageSource
from memo_edge.memory.herding import l2_normalize
from memo_edge.model import MemoNet
from memo_edge.train.distributed import current_world, gather_rows, shard_bounds
from memo_edge.train.metrics import TaskMetrics, nme_scores, task_metrics
from memo_edge.train.precision import autocast, batch_memory_format
from memo_edge.train.transfer import to_device

__all__ = ["iter_batches", "extract", "class_means", "evaluate"]

Transform = Callable[[Tensor], Tensor]


def iter_batches(source: ImageSource, indices: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images uint8 [b,H,W,C], labels) in the order of ``indices``."""
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        yield source.take(idx), source.labels[idx]


@torch.inference_mode()
def extract(
    model: MemoNet, source: ImageSource, transform: Transform, device: torch.device, *, batch_size: int = 256,
    precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated branch features [N, d*T] and logits [N, classes] as float32, in the source's order.

    ``precision`` (resolved): the forward pass under autocast, as in training; the arrays are float32
    whatever it is, so herding and NME compute in float32.

    In a distributed run each process computes its contiguous share and every process gets all rows.
    """
    was_training = model.training
    model.eval()
    world = current_world()
    lo, hi = shard_bounds(len(source), world.rank, world.size)
    layout = batch_memory_format(device, channels_last=False)  # the model is contiguous outside training
    feats, logits = [], []
    for images, _ in iter_batches(source, np.arange(lo, hi), batch_size):
        x = transform(to_device(torch.from_numpy(images), device))
        with autocast(precision, device):
            out = model(x if layout is None else x.contiguous(memory_format=layout))
        feats.append(out.features.float().cpu().numpy())
        logits.append(out.logits.float().cpu().numpy())
    model.train(was_training)
    dim = model.feature_dim * model.num_branches
    if feats:
        feats_np, logits_np = np.concatenate(feats), np.concatenate(logits)
    else:
        feats_np, logits_np = np.zeros((0, dim), np.float32), np.zeros((0, model.num_classes), np.float32)
    if world.size > 1:  # one gather for both arrays
        rows = gather_rows(np.concatenate([feats_np, logits_np], axis=1), len(source))
        feats_np, logits_np = rows[:, :dim], rows[:, dim:]
    return feats_np, logits_np


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """NME prototypes: the normalised mean of each class's normalised features (iCaRL)."""
    feats = l2_normalize(features)
    means = np.zeros((num_classes, feats.shape[1]), np.float64)
    for c in range(num_classes):
        members = feats[labels == c]
        if len(members):
            means[c] = members.mean(axis=0)
    return l2_normalize(means)


def evaluate(
    model: MemoNet,
    test: ImageSource,
    means: np.ndarray,
    *,
    task: int,
    boundaries: list[int],
    transform: Transform,
    device: torch.device,
    precision: str = "fp32",
) -> TaskMetrics:
    """CNN and NME accuracies on the test images of every class seen so far (inference in ``precision``)."""
    features, logits = extract(model, test, transform, device, precision=precision)
    return task_metrics(task, logits, nme_scores(features, means), test.labels, boundaries, model.known_classes)
