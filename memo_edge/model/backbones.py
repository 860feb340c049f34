"""Backbones split into a shared trunk (generalized blocks) and a per-task branch (specialized blocks).

MEMO (Zhou et al., ICLR 2023, Sec. 4) keeps the shallow stages shared and grows only the deep ones.
``split`` is the number of stages that go into the trunk; the remaining stages plus global average
pooling form a branch that maps trunk features to a flat feature vector.

- CIFAR ResNets (depth 6n+2, option-A shortcuts, no conv bias), as in the reference implementation.
- ImageNet ResNet-18: torchvision's modules, cut after ``layer{split}``.
- ``resnet8``: a tiny registered variant (one block per stage) so tests run in milliseconds.

Every backbone declares its stages (``Backbone.stages``, in the spirit of timm's ``feature_info``):
name, the part it lives in, the submodules that compute it, output channels and reduction. Analyses
read the declaration instead of guessing stages from the module tree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from memo_edge.errors import InvalidValue

__all__ = ["Backbone", "BACKBONES", "Part", "StageInfo", "create_backbone", "backbone_names"]

Part = Literal["trunk", "branch"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class ShortcutA(nn.Module):
    """Parameter-free "option A" shortcut: stride-2 subsample, then zero channels appended.

    Same as the reference's DownsampleA (AvgPool2d(1, stride) + cat with zeros), so weights and
    outputs match it exactly.
    """

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return torch.cat((x, torch.zeros_like(x)), dim=1)


class CifarBasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv_a = conv3x3(in_planes, planes, stride)
        self.bn_a = nn.BatchNorm2d(planes)
        self.conv_b = conv3x3(planes, planes)
        self.bn_b = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = ShortcutA(stride) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn_a(self.conv_a(x)))
        out = self.bn_b(self.conv_b(out))
        return self.relu(out + self.shortcut(x))


def _cifar_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [CifarBasicBlock(in_planes, planes, stride)]
    layers += [CifarBasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _init_cifar(module: nn.Module) -> None:
    # Reference init: conv weights ~ N(0, sqrt(2 / (k*k*C_out))), BN weight 1 and bias 0.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Branch(nn.Module):
    """Specialized blocks: the deep stages and global average pooling -> [B, feature_dim]."""

    def __init__(self, stages: nn.Sequential) -> None:
        super().__init__()
        self.stages = stages
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.pool(self.stages(x)), 1)


@dataclass(frozen=True)
class StageInfo:
    """One stage of a backbone, declared by the code that builds it (like an entry of timm's ``feature_info``).

    ``modules`` are submodule paths (``nn.Module.get_submodule``) inside the part the stage lives in:
    the trunk (shared by all tasks) or a branch (one copy per task). Run in order, they map the previous
    stage's output (the image, for the first stage) to this stage's output. Paths, not modules, so one
    declaration describes the trunk and every branch of every model built from the same backbone.
    """

    name: str  # "stem", then "stage1".. (CIFAR ResNets) or torchvision's "layer1".. (ResNet-18)
    part: Part
    modules: tuple[str, ...]
    channels: int  # of the output
    reduction: int  # input side / output side


def _declare(rows: Sequence[tuple[str, int, int, int]], split: int) -> tuple[StageInfo, ...]:
    """Stages for (name, module count, channels, reduction) rows, stem first, laid out as the builders cut them:
    trunk = Sequential(*stem, *stages[:split]) (nothing when split is 0), branch ``stages`` = the rest."""
    in_trunk = split + 1 if split else 0
    infos: list[StageInfo] = []
    used = {"trunk": 0, "branch": 0}
    for i, (name, count, channels, reduction) in enumerate(rows):
        part: Part = "trunk" if i < in_trunk else "branch"
        prefix = "" if part == "trunk" else "stages."  # a branch holds its modules in Branch.stages
        paths = tuple(f"{prefix}{used[part] + k}" for k in range(count))
        used[part] += count
        infos.append(StageInfo(name, part, paths, channels, reduction))
    return tuple(infos)


@dataclass(frozen=True)
class Backbone:
    """A trunk instance plus a factory for fresh branches that fit it, and the stages of both."""

    name: str
    split: int
    trunk: nn.Module
    new_branch: Callable[[], nn.Module]
    stages: tuple[StageInfo, ...]  # forward order: trunk stages, then branch stages

    @property
    def feature_dim(self) -> int:
        """Width of a branch's (pooled) output."""
        return self.stages[-1].channels

    @property
    def trunk_channels(self) -> int:
        """Channels of the trunk's output (3, the image, when the trunk is empty)."""
        return next((s.channels for s in reversed(self.stages) if s.part == "trunk"), 3)


_CIFAR_WIDTHS = (16, 32, 64)


def _cifar_resnet(name: str, depth: int, split: int | None) -> Backbone:
    blocks = (depth - 2) // 6
    split = 2 if split is None else split
    if not 0 <= split <= 2:
        raise InvalidValue(f"{name}: split must be 0, 1 or 2 (stages in the trunk; 0 shares nothing), got {split}")

    def stage(i: int) -> nn.Sequential:
        in_planes = _CIFAR_WIDTHS[max(i - 1, 0)]
        return _cifar_stage(in_planes, _CIFAR_WIDTHS[i], blocks, stride=1 if i == 0 else 2)

    def stem() -> list[nn.Module]:
        return [conv3x3(3, 16), nn.BatchNorm2d(16), nn.ReLU(inplace=True)]

    # split 0 (DER-style): the whole backbone, stem included, is the per-task branch.
    trunk = nn.Sequential(*stem(), *(stage(i) for i in range(split))) if split else nn.Sequential()
    _init_cifar(trunk)

    def new_branch() -> nn.Module:
        branch = Branch(nn.Sequential(*([] if split else stem()), *(stage(i) for i in range(split, 3))))
        _init_cifar(branch)
        return branch

    # stem: conv, bn, relu; stage i: one nn.Sequential of blocks, stride 2 from stage2 on.
    rows = [("stem", 3, 16, 1)] + [(f"stage{i + 1}", 1, _CIFAR_WIDTHS[i], 2**i) for i in range(3)]
    return Backbone(name, split, trunk, new_branch, _declare(rows, split))


def _resnet18(name: str, split: int | None) -> Backbone:
    from torchvision.models import resnet18  # torchvision's init: kaiming normal, fan_out

    split = 3 if split is None else split
    if not 0 <= split <= 3:
        raise InvalidValue(f"{name}: split must be 0, 1, 2 or 3 (layers in the trunk; 0 shares nothing), got {split}")
    layers = [f"layer{i}" for i in range(1, 5)]

    def stem(net: nn.Module) -> list[nn.Module]:
        return [net.conv1, net.bn1, net.relu, net.maxpool]

    net = resnet18(weights=None)
    trunk = nn.Sequential(*stem(net), *(getattr(net, n) for n in layers[:split])) if split else nn.Sequential()

    def new_branch() -> nn.Module:
        fresh = resnet18(weights=None)
        return Branch(nn.Sequential(*([] if split else stem(fresh)), *(getattr(fresh, n) for n in layers[split:])))

    # stem: conv1 (stride 2), bn1, relu, maxpool (stride 2); layer i: torchvision's nn.Sequential.
    rows = [("stem", 4, 64, 4)] + [(layers[i], 1, 64 * 2**i, 4 * 2**i) for i in range(4)]
    return Backbone(name, split, trunk, new_branch, _declare(rows, split))


def _cifar_factory(depth: int) -> Callable[..., Backbone]:
    def factory(split: int | None = None) -> Backbone:
        return _cifar_resnet(f"resnet{depth}", depth, split)

    return factory


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "resnet8": _cifar_factory(8),  # tiny test variant
    "resnet14": _cifar_factory(14),
    "resnet20": _cifar_factory(20),
    "resnet26": _cifar_factory(26),
    "resnet32": _cifar_factory(32),
    "resnet18": lambda split=None: _resnet18("resnet18", split),
}


def backbone_names() -> list[str]:
    return list(BACKBONES)


def create_backbone(name: str, *, split: int | None = None) -> Backbone:
    """Build a backbone by registry name; ``split`` = stages in the trunk (None: the paper's cut)."""
    try:
        factory = BACKBONES[name]
    except KeyError:
        raise InvalidValue(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}") from None
    return factory(split)
