"""The stages of a MemoNet as the analyses see them: their outputs on images and their parameters.

The backbone declares its stages (``MemoNet.stage_info``, see ``memo_edge.model.backbones.StageInfo``);
this module runs them on a batch, flattens each output per image and gathers each stage's weights.
Trunk stages are shared by all tasks; branch stages are taken from one branch, chosen by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memo_edge.model import MemoNet
from memo_edge.model.backbones import StageInfo

__all__ = [
    "newest_branch",
    "stage_layout",
    "stage_names",
    "stage_kinds",
    "stage_features",
    "stage_shapes",
    "stage_vector",
    "used_features",
]

_BATCH = 128


def newest_branch(model: MemoNet) -> int:
    """Index of the branch the model's latest task trained (its last one)."""
    if not len(model.branches):
        raise ValueError("the model has no branch yet: call expand() first")
    return len(model.branches) - 1


def stage_layout(model: MemoNet) -> list[StageInfo]:
    """The declared stages of ``model`` in forward order: the stem, then the trunk's and a branch's stages.

    The stem lives in the trunk, or in the branch when nothing is shared (split 0). Needs a model with
    at least one branch, since branch stages are only defined through one.
    """
    newest_branch(model)
    return list(model.stage_info)


def stage_names(model: MemoNet) -> list[str]:
    """E.g. ["stem", "stage1", "stage2", "stage3"] (CIFAR ResNets), ["stem", "layer1", ..., "layer4"] (ResNet-18)."""
    return [s.name for s in stage_layout(model)]


def stage_kinds(model: MemoNet) -> dict[str, str]:
    """Stage name -> "trunk" (shared by all tasks) or "branch" (one copy per task)."""
    return {s.name: s.part for s in stage_layout(model)}


def _pool_to(x: Tensor, max_features: int | None) -> Tensor:
    """Average-pool a [B, C, H, W] map spatially until C*h*w <= max_features (never below 1x1)."""
    if max_features is None or x.dim() != 4 or x[0].numel() <= max_features:
        return x
    c, h, w = x.shape[1:]
    side = max(1, math.isqrt(max_features // c))
    return F.adaptive_avg_pool2d(x, (min(side, h), min(side, w)))


def used_features(shape: Sequence[int], max_features: int) -> int:
    """Values per image ``_pool_to`` keeps of a [C, H, W] stage output."""
    c, h, w = (int(v) for v in shape)
    if c * h * w <= max_features:
        return c * h * w
    side = max(1, math.isqrt(max_features // c))
    return c * min(side, h) * min(side, w)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def stage_features(
    model: MemoNet,
    images_uint8: np.ndarray | Tensor,
    transform: Callable[[Tensor], Tensor],
    branch: int,
    *,
    batch_size: int = _BATCH,
    max_features: int | None = None,
) -> dict[str, np.ndarray]:
    """Output of every stage for ``images_uint8`` (uint8 [N, H, W, C]): stage name -> float32 [N, features].

    Runs the trunk, then branch ``branch``'s stages, in eval mode; each output is flattened per image
    (after spatial average pooling when it has more than ``max_features`` values). ``transform`` turns
    a uint8 batch into the normalised float NCHW input (``TestTransform(mean, std)``); batches go to
    the device of the model's parameters. The model's train/eval mode is restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for stage in stage_layout(model):
        model.stage_modules(stage, branch)  # a bad branch fails before the images are looked at
    images = images_uint8.cpu() if isinstance(images_uint8, Tensor) else torch.from_numpy(np.array(images_uint8))
    if images.dtype != torch.uint8 or images.dim() != 4 or len(images) == 0:
        raise ValueError(f"expected a non-empty uint8 batch [N, H, W, C], got {images.dtype} {tuple(images.shape)}")
    device = _model_device(model)
    out: dict[str, np.ndarray] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = transform(images[start : start + batch_size]).to(device)
                for stage, y in model.forward_stages(x, branch):
                    feat = _pool_to(y, max_features).flatten(1).to("cpu", torch.float32).numpy()
                    if stage.name not in out:
                        out[stage.name] = np.empty((len(images), feat.shape[1]), np.float32)
                    out[stage.name][start : start + len(feat)] = feat  # a copy: later in-place ops cannot touch it
    finally:
        model.train(was_training)
    return out


def stage_shapes(model: MemoNet, image_shape: Sequence[int],
                 transform: Callable[[Tensor], Tensor]) -> dict[str, list[int]]:
    """Unpooled output shape [C, H, W] of every stage for one image of ``image_shape`` (H, W, C)."""
    h, w, c = (int(v) for v in image_shape)
    shapes: dict[str, list[int]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x = transform(torch.zeros((1, h, w, c), dtype=torch.uint8)).to(_model_device(model))
            for stage, y in model.forward_stages(x, newest_branch(model)):
                shapes[stage.name] = list(y.shape[1:])
    finally:
        model.train(was_training)
    return shapes


def stage_vector(model: MemoNet, stage: StageInfo, branch: int) -> Tensor:
    """All learnable parameters of one stage, flattened and concatenated (float64)."""
    params = [p.detach().reshape(-1).double() for m in model.stage_modules(stage, branch) for p in m.parameters()]
    return torch.cat(params) if params else torch.zeros(0, dtype=torch.float64)
