"""Backbones split into a shared trunk (generalized blocks) and a per-task branch (specialized blocks).

MEMO (Zhou et al., ICLR 2023, Sec. 4) keeps the shallow stages shared and grows only the deep ones.
``split`` is the number of stages that go into the trunk; the remaining stages plus global average
pooling form a branch that maps trunk features to a flat feature vector.

- CIFAR ResNets (depth 6n+2, option-A shortcuts, no conv bias), as in the reference implementation.
- ImageNet ResNet-18: torchvision's modules, cut after ``layer{split}``.
- ``resnet8``: a tiny registered variant (one block per stage) so tests run in milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Backbone", "BACKBONES", "create_backbone", "backbone_names"]


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
class Backbone:
    """A trunk instance plus a factory for fresh branches that fit it."""

    name: str
    split: int
    trunk: nn.Module
    new_branch: Callable[[], nn.Module]
    feature_dim: int
    trunk_channels: int


_CIFAR_WIDTHS = (16, 32, 64)


def _cifar_resnet(name: str, depth: int, split: int | None) -> Backbone:
    blocks = (depth - 2) // 6
    split = 2 if split is None else split
    if not 0 <= split <= 2:
        raise ValueError(f"{name}: split must be 0, 1 or 2 (stages in the trunk; 0 shares nothing), got {split}")

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

    trunk_channels = _CIFAR_WIDTHS[split - 1] if split else 3
    return Backbone(name, split, trunk, new_branch, _CIFAR_WIDTHS[-1], trunk_channels)


def _resnet18(name: str, split: int | None) -> Backbone:
    from torchvision.models import resnet18  # torchvision's init: kaiming normal, fan_out

    split = 3 if split is None else split
    if not 0 <= split <= 3:
        raise ValueError(f"{name}: split must be 0, 1, 2 or 3 (layers in the trunk; 0 shares nothing), got {split}")
    layers = [f"layer{i}" for i in range(1, 5)]

    def stem(net: nn.Module) -> list[nn.Module]:
        return [net.conv1, net.bn1, net.relu, net.maxpool]

    net = resnet18(weights=None)
    trunk = nn.Sequential(*stem(net), *(getattr(net, n) for n in layers[:split])) if split else nn.Sequential()

    def new_branch() -> nn.Module:
        fresh = resnet18(weights=None)
        return Branch(nn.Sequential(*([] if split else stem(fresh)), *(getattr(fresh, n) for n in layers[split:])))

    trunk_channels = (3, 64, 128, 256)[split]
    return Backbone(name, split, trunk, new_branch, 512, trunk_channels)


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
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}") from None
    return factory(split)
