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
from torch import Tensor, nn
from tqdm.auto import tqdm

from memo_edge.data.sources import ArraySource, ImageSource, concat_sources
from memo_edge.errors import MemoEdgeError
from memo_edge.memory.alignment import exemplar_bytes
from memo_edge.memory.codec import Codec, StoredForms
from memo_edge.memory.exemplars import ExemplarSet, select_exemplars
from memo_edge.model import MemoNet
from memo_edge.train.codec_mix import CodecMix
from memo_edge.train.distributed import World, all_sum, current_world, end_training, shard_batch, wrap_for_training
from memo_edge.train.features import class_means, extract
from memo_edge.train.precision import (
    autocast,
    batch_memory_format,
    exact_float32,
    make_scaler,
    to_memory_format,
    use_channels_last,
)
from memo_edge.train.plan import TaskPlan
from memo_edge.train.recipe import Recipe, build_optimizer, build_scheduler
from memo_edge.train.transfer import to_device

__all__ = ["TaskResult", "learn_task", "train_step"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskResult:
    exemplars: ExemplarSet
    class_means: np.ndarray
    align_gamma: float
    final_loss: float
    images_per_second: float
    per_class: int  # raw exemplars per class the memory rule allows (the share over H x W x C bytes)
    step_losses: tuple[float, ...] = ()  # mean loss of each global batch, all epochs in order
    class_bytes: int = 0  # stored bytes per class the memory rule allows
    codec_seconds: float = 0.0  # encoding and decoding the new task's images under the exemplar codec
    train_seconds: float = 0.0  # the training epochs alone (no herding, class means or codec work)


def learn_task(
    model: MemoNet,
    plan: TaskPlan,
    new_data: ImageSource,
    exemplars: ExemplarSet,
    *,
    num_new: int,
    generator: torch.Generator,
    desc: str = "task",
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> TaskResult:
    """Run one MEMO task of ``num_new`` classes on ``new_data`` (labels already in the incremental label
    space) as ``plan`` says (``train/plan.py``: its recipe for this task, the memory rule, transforms,
    device, precision, codec settings).

    ``on_epoch(epoch, epochs, mean_loss)`` is called after each training epoch (1-based), e.g. to report
    progress to another process.

    The plan's precision (``memo_edge.train.precision``) is used for training and for the feature
    extraction of herding and class means; weights stay float32. ``channels_last`` (None: where it
    measured faster) holds the model in NHWC while it trains, NCHW again afterwards. ``stack_frozen``:
    the frozen old branches train as one grouped network (``MemoNet.stack_frozen_branches``: faster,
    equal up to float rounding); herding and evaluation use the plain modules.

    The exemplars' codec (``exemplars.codec``) is the memory's: new exemplars are chosen among the new
    images as they decode under it, and each class keeps what fits in its byte share
    (``MemoryPolicy.class_bytes``). ``codec_mix``: the probability, redrawn every epoch, that a new
    training image is its round trip through a lossy codec (``train/codec_mix.py``).

    In a process group (``memo_edge.train.distributed``) every process calls this with the same
    arguments: each trains on its share of every batch, and all end with the same model and exemplars.
    """
    codec, device, precision = exemplars.codec, plan.device, plan.precision
    recipe = plan.recipe(model.num_tasks)  # the tasks learned so far: this task's index
    # The new images as the memory would hold them: before training only when training sees them too.
    new = _through_codec(new_data, codec) if plan.codec_mix > 0 and codec.lossy else None
    train_new = new_data if new is None else CodecMix(new.original, new.seen, new_data.labels, plan.codec_mix)
    model.expand(num_new)
    model.to(device)
    if model.num_tasks > 1:
        model.freeze_old_branches()  # nothing to freeze for a single-backbone model
        if not plan.train_base:
            model.freeze_trunk()
    data = concat_sources([train_new, ArraySource(exemplars.images, exemplars.labels)]) if len(exemplars) else train_new
    nhwc = use_channels_last(precision, device) if plan.channels_last is None else plan.channels_last
    with exact_float32(device):
        if nhwc:  # before stacking: the stack's derived weights take the layout of the weights they come from
            to_memory_format(model, True)
        if plan.stack_frozen and model.num_branches > 1 and not model.stack_frozen_branches():
            log.debug("%s: these branches cannot be stacked; the plain path trains", desc)
        try:
            loss, speed, steps, seconds = _train(model, data, recipe, plan.transforms.train, device, generator, desc,
                                                 on_epoch, precision=precision, channels_last=nhwc,
                                                 mix=train_new if isinstance(train_new, CodecMix) else None)
        finally:
            model.unstack_frozen_branches()
            if nhwc:  # checkpoints, export and the device want plain contiguous tensors
                to_memory_format(model, False)
        gamma = model.weight_align()
        new = new or _through_codec(new_data, codec)
        updated, means, per_class, share = _remember(model, new_data.labels, new, exemplars, plan)
    return TaskResult(updated, means, gamma, loss, speed, per_class, steps, share, round(new.seconds, 3),
                      round(seconds, 3))


@dataclass(frozen=True)
class _NewImages:
    """A task's new images, as read and as the exemplar codec gives them back, with their stored forms."""

    original: np.ndarray
    seen: np.ndarray
    forms: StoredForms
    seconds: float  # the codec's encoding and decoding (raw: a view, nothing)


def _through_codec(new_data: ImageSource, codec: Codec) -> _NewImages:
    images = new_data.take(np.arange(len(new_data)))
    start = time.perf_counter()
    seen, forms = codec.round_trip(images)
    return _NewImages(images, seen, forms, time.perf_counter() - start)


def _remember(model: MemoNet, labels: np.ndarray, new: _NewImages, exemplars: ExemplarSet,
              plan: TaskPlan) -> tuple[ExemplarSet, np.ndarray, int, int]:
    """Steps 5-6 of a task, after training: (the new exemplar memory, every class's mean, raw exemplars per
    class, stored bytes per class). New exemplars are herded on ``new.seen``, the images as stored."""
    codec, memory, test = exemplars.codec, plan.memory, plan.transforms.test
    device, precision = plan.device, plan.precision
    raw = exemplar_bytes(new.original.shape[1:])
    per_class = memory.per_class(model.num_classes, model_bytes=model.model_bytes(), bytes_per_exemplar=raw)
    share = memory.class_bytes(model.num_classes, model_bytes=model.model_bytes(), bytes_per_exemplar=raw)
    kept = exemplars.fit(share)
    new_features, _ = extract(model, ArraySource(new.seen, labels), test, device, precision=precision)
    selected = select_exemplars(new.seen, labels, new_features, class_bytes=share, encoded=new.forms, codec=codec)
    updated = kept.extend(selected)
    _check_every_class_kept(updated, model.num_classes, share, codec)
    # Prototypes of every seen class come from the current model (old classes' features moved too).
    feats, _ = extract(model, ArraySource(updated.images, updated.labels), test, device, precision=precision)
    return updated, class_means(feats, updated.labels, model.num_classes), per_class, share


def _check_every_class_kept(exemplars: ExemplarSet, num_classes: int, share: int, codec: Codec) -> None:
    """A stored image can be larger than its share (PNG of noise, JPEG at quality 100, a raw image over a
    tiny share): a class that cannot keep its first exemplar is an error, not a class with no prototype."""
    missing = sorted(set(range(num_classes)) - set(exemplars.classes().tolist()))
    if missing:
        raise MemoEdgeError(f"class {missing[0]} keeps no exemplar: its share of {share:,} B cannot hold its first "
                            f"exemplar under {codec}; raise the memory or choose a smaller codec")


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, known: int,
               *, loss_scale: float = 1.0, precision: str = "fp32",
               scaler: torch.amp.GradScaler | None = None) -> Tensor:
    """One SGD step on a preprocessed batch; returns the loss (the batch mean) as a detached 0-d tensor on
    the batch's device: reading it (``float(loss)``) waits for the GPU, so the trainer reads its steps'
    losses once an epoch, not after every step.

    ``model``: a MemoNet, or DDP over one. ``loss_scale`` weights this process's share of a global batch
    (its size x processes / global size): DDP averages gradients over processes, which then gives the
    gradient of the global batch's mean loss even when the shares differ in size. ``precision``: the
    forward pass and the loss under autocast (fp32: none); ``scaler``: fp16's gradient scaler.
    """
    with autocast(precision, x.device):
        out = model(x)
        loss = F.cross_entropy(out.logits, y)
        if out.aux_logits is not None:
            # Auxiliary target: 0 = "some old class", k + 1 = k-th new class (reference Sec. 4).
            aux_y = torch.where(y >= known, y - known + 1, torch.zeros_like(y))
            loss = loss + F.cross_entropy(out.aux_logits, aux_y)
    optimizer.zero_grad(set_to_none=True)
    scaled = loss * loss_scale if loss_scale != 1.0 else loss
    if scaler is None:
        scaled.backward()
        optimizer.step()
    else:
        scaler.scale(scaled).backward()
        # Skipped (and the scale lowered) when a gradient overflowed. With a fused optimizer (CUDA,
        # train/recipe.py) the overflow check stays on the GPU; otherwise it reads one flag back.
        scaler.step(optimizer)
        scaler.update()
    return loss.detach()


def _batches(order: np.ndarray, batch_size: int, world_size: int) -> list[np.ndarray]:
    """An epoch's global batches. A last one smaller than max(2, processes) is dropped: BatchNorm cannot
    train on a single sample, and every process needs a share (so one process drops only a single image)."""
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < max(2, world_size):
        batches.pop()
    return batches


def _train(
    model: MemoNet,
    data: ImageSource,
    recipe: Recipe,
    augment: Callable[[Tensor, torch.Generator], Tensor],
    device: torch.device,
    generator: torch.Generator,
    desc: str,
    on_epoch: Callable[[int, int, float], None] | None = None,
    *,
    precision: str = "fp32",
    channels_last: bool = False,
    mix: CodecMix | None = None,
) -> tuple[float, float, tuple[float, ...], float]:
    """Train for ``recipe.epochs``; returns (mean loss of the last epoch, images per second, step losses,
    seconds spent in the epochs).

    In a distributed run every process walks the same global batches and trains on its share of each.
    ``mix``: the part of ``data`` whose codec round trips are redrawn before every epoch.
    """
    world = current_world()
    if min(len(data), recipe.batch_size) < world.size:
        raise MemoEdgeError(f"{len(data)} training images in batches of {recipe.batch_size} cannot be shared by "
                            f"{world.size} processes")
    net = wrap_for_training(model, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, recipe)
    scheduler = build_scheduler(optimizer, recipe)
    step = _Step(known=model.known_classes, world=world, precision=precision, scaler=make_scaler(precision, device),
                 memory_format=batch_memory_format(device, channels_last),
                 resident=None if mix is not None else _resident(data, device, world))
    seen, elapsed, loss_mean, steps = 0, 0.0, float("nan"), []
    succeeded = False
    try:
        for epoch in range(recipe.epochs):
            net.train()
            start = time.perf_counter()
            if mix is not None:
                mix.redraw(generator)
            order_t = torch.randperm(len(data), generator=generator)
            order = order_t.numpy()
            batches = _batches(order, recipe.batch_size, world.size)
            if step.resident is not None:  # one host-to-device copy of the epoch's order, none per batch
                step.resident.order = to_device(order_t, device)
            losses, shares, count = [], [], 0
            bar = tqdm(batches, desc=f"{desc} epoch {epoch + 1}/{recipe.epochs}", leave=False, unit="batch",
                       disable=None if world.is_writer else True)
            for b, idx in enumerate(bar):
                loss, local = _step(net, optimizer, data, idx, augment, generator, device, step,
                                    offset=b * recipe.batch_size)
                losses.append(loss)
                shares.append(local)
                count += len(idx)
                if not bar.disable and (b + 1) % _BAR_LOSS_EVERY == 0:  # shown, so read back: one sync
                    bar.set_postfix(loss=f"{_mean_loss(losses, shares):.3f}",
                                    img_s=f"{count / (time.perf_counter() - start):.0f}")
            scheduler.step()
            # The epoch's step losses read back at once: the only wait for the GPU in the epoch.
            epoch_losses = torch.stack(losses).float().tolist() if losses else []
            sums = [loss * local for loss, local in zip(epoch_losses, shares)]
            if world.size > 1:  # each step's loss over the global batch: one all-reduce an epoch
                sums = all_sum(sums)
                epoch_losses = [s / len(b) for s, b in zip(sums, batches)]
            steps.extend(epoch_losses)
            total = 0.0
            for s in sums:
                total += s
            elapsed += time.perf_counter() - start
            seen += count
            loss_mean = total / max(count, 1)
            log.debug("%s epoch %d: loss %.4f", desc, epoch + 1, loss_mean)
            if on_epoch is not None:
                on_epoch(epoch + 1, recipe.epochs, loss_mean)
        succeeded = True
    finally:
        end_training(model, succeeded=succeeded)
    return loss_mean, seen / elapsed if elapsed else 0.0, tuple(steps), elapsed


_BAR_LOSS_EVERY = 25  # steps between the progress bar's loss readings (each one waits for the GPU)


def _mean_loss(losses: list[Tensor], shares: list[int]) -> float:
    """This process's mean loss over the steps so far (a progress display, not a result): one read-back."""
    values = torch.stack(losses).float().cpu()
    return float((values * torch.tensor(shares, dtype=torch.float32)).sum()) / max(sum(shares), 1)


RESIDENT_BYTES = 2 << 30  # training images up to this size stay on the GPU for the whole task


@dataclass
class _Resident:
    """A task's training images (uint8) and labels held on the training device, and the epoch's order there."""

    images: Tensor
    labels: Tensor
    order: Tensor | None = None


def _resident(data: ImageSource, device: torch.device, world: World) -> _Resident | None:
    """On a GPU (one process), the task's images uploaded once: batches are gathered there, no copy per batch."""
    nbytes = len(data) * int(np.prod(data.image_shape))
    if device.type != "cuda" or world.size != 1 or nbytes > RESIDENT_BYTES:
        return None
    images = torch.from_numpy(data.take(np.arange(len(data)))).to(device)
    return _Resident(images, torch.from_numpy(np.asarray(data.labels)).to(device))


@dataclass(frozen=True)
class _Step:
    """What every step of a task shares."""

    known: int
    world: World
    precision: str
    scaler: torch.amp.GradScaler | None
    memory_format: torch.memory_format | None  # the layout every batch is put in (None: as augmented)
    resident: _Resident | None = None


def _step(net: nn.Module, optimizer: torch.optim.Optimizer, data: ImageSource, idx: np.ndarray,
          augment: Callable[[Tensor, torch.Generator], Tensor], generator: torch.Generator, device: torch.device,
          step: _Step, *, offset: int = 0) -> tuple[Tensor, int]:
    """One step on global batch ``idx`` (``order[offset : offset + len(idx)]``); returns (this process's mean
    loss, a 0-d tensor on the device, and its number of images)."""
    world = step.world
    if step.resident is not None and step.resident.order is not None:
        ids = step.resident.order[offset : offset + len(idx)]
        x = augment(step.resident.images[ids], generator)
        y = step.resident.labels[ids]
        scale = 1.0
    elif world.size == 1:
        x = augment(to_device(torch.from_numpy(data.take(idx)), device), generator)
        y = to_device(torch.from_numpy(data.labels[idx]), device)
        scale = 1.0
    else:
        x, y = shard_batch(data, idx, augment, generator, device, world)
        scale = len(y) * world.size / len(idx)
    if step.memory_format is not None:
        x = x.contiguous(memory_format=step.memory_format)
    return train_step(net, optimizer, x, y, step.known, loss_scale=scale, precision=step.precision,
                      scaler=step.scaler), len(y)
