"""Frozen old branches stacked into one grouped-convolution network (the frozen-branch fast path).

While a task trains, the old branches are frozen (no gradient to their weights, BatchNorm in eval) and
all read the same trunk output. ``StackedBranches`` runs K of them as one network:

- the first convolution (shared input) is one convolution with the K weight sets concatenated;
- every later convolution is one grouped convolution (``groups=K``), each group one branch;
- every eval-mode BatchNorm is folded into the convolution before it (scale and bias), so it costs
  nothing; ReLU, the option-A shortcuts and the pooling act on each group's channels as before.

The result equals ``torch.cat([b(x) for b in branches], 1)`` up to float rounding (folding reorders
the arithmetic), and gradients still flow to ``x`` when it needs them (a trained trunk); the stack's
own tensors are derived copies that never need a gradient. Only CIFAR-ResNet branches (conv / BN /
ReLU stems and option-A basic blocks) can be stacked (``can_stack``); the rest keep the plain loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memo_edge.model.backbones import Branch, CifarBasicBlock, ShortcutA

__all__ = ["StackedBranches", "can_stack"]


def _flat(branch: nn.Module) -> list[nn.Module] | None:
    """A CIFAR branch's layers in order (Conv2d, BatchNorm2d, ReLU, CifarBasicBlock); None if not one."""
    if not isinstance(branch, Branch) or not isinstance(branch.pool, nn.AdaptiveAvgPool2d):
        return None
    layers: list[nn.Module] = []
    for module in branch.stages:
        children = list(module) if isinstance(module, nn.Sequential) else [module]
        for child in children:
            if not isinstance(child, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, CifarBasicBlock)):
                return None
            if isinstance(child, CifarBasicBlock) and not isinstance(child.shortcut, (ShortcutA, nn.Identity)):
                return None
            layers.append(child)
    return layers


def can_stack(branches: list[nn.Module]) -> bool:
    """Whether ``branches`` (at least one, same architecture) can run as one grouped network."""
    flats = [_flat(b) for b in branches]
    if not branches or any(f is None for f in flats):
        return False
    shapes = [[type(m) for m in f] for f in flats]  # type: ignore[union-attr]
    return all(s == shapes[0] for s in shapes)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[Tensor, Tensor]:
    """(weight, bias) of ``conv`` followed by eval-mode ``bn``, computed in float64, returned in the weight's dtype."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                               device=w.device)
    if bn is not None:
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("a frozen branch's BatchNorm needs running statistics to be folded")
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        w = w * scale[:, None, None, None]
        b = (b - bn.running_mean.double()) * scale + bn.bias.detach().double()
    return w.to(conv.weight.dtype), b.to(conv.weight.dtype)


def _is_channels_last(weight: Tensor) -> bool:
    """Whether a convolution weight is stored NHWC (and not also plain contiguous, as 1x1 kernels can be)."""
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


class _Conv:
    """One stacked convolution: (weight, bias) of K folded convs, as one dense or grouped conv. The weight
    keeps the layout of the convolutions it comes from (``torch.cat`` would not keep NHWC for it)."""

    def __init__(self, convs: list[nn.Conv2d], bns: list[nn.BatchNorm2d | None], shared_input: bool) -> None:
        folded = [_fold(c, bn) for c, bn in zip(convs, bns)]
        layout = torch.channels_last if _is_channels_last(convs[0].weight) else torch.contiguous_format
        self.weight = torch.cat([w for w, _ in folded]).contiguous(memory_format=layout)
        self.bias = torch.cat([b for _, b in folded])
        first = convs[0]
        self.stride, self.padding, self.dilation = first.stride, first.padding, first.dilation
        self.groups = 1 if shared_input else len(convs)
        if first.groups != 1:
            raise ValueError("grouped convolutions inside a branch cannot be stacked")

    def __call__(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class StackedBranches:
    """K frozen branches as one grouped network; ``__call__(x)`` -> [B, K * feature_dim].

    Not an ``nn.Module`` on purpose: it holds derived copies that must never enter a state dict, an
    optimizer or DDP. Build it after the branches are frozen and put in their memory format (its weights
    take that layout); it does not follow later weight or layout changes.
    """

    def __init__(self, branches: list[nn.Module]) -> None:
        if not can_stack(branches):
            raise ValueError("these branches cannot be stacked")
        self.k = len(branches)
        flats = [_flat(b) for b in branches]
        self._ops: list[tuple[str, object]] = []
        shared = True  # the input is the trunk output, the same for every branch
        layers = list(zip(*flats))  # type: ignore[call-overload]
        i = 0
        while i < len(layers):
            group = layers[i]
            if isinstance(group[0], nn.Conv2d):
                bns = list(layers[i + 1]) if i + 1 < len(layers) and isinstance(layers[i + 1][0], nn.BatchNorm2d) else None
                self._ops.append(("conv", _Conv(list(group), bns or [None] * self.k, shared)))
                shared = False
                i += 2 if bns else 1
                continue
            if isinstance(group[0], nn.ReLU):
                self._ops.append(("relu", None))
            elif isinstance(group[0], CifarBasicBlock):
                self._ops.append(("block", self._block(list(group), shared)))
                shared = False
            else:  # a BatchNorm without a conv before it
                raise ValueError(f"cannot stack a lone {type(group[0]).__name__}")
            i += 1

    def _block(self, blocks: list[CifarBasicBlock], shared: bool) -> tuple[_Conv, _Conv, int | None, bool]:
        conv_a = _Conv([b.conv_a for b in blocks], [b.bn_a for b in blocks], shared)
        conv_b = _Conv([b.conv_b for b in blocks], [b.bn_b for b in blocks], False)
        shortcut = blocks[0].shortcut
        return conv_a, conv_b, shortcut.stride if isinstance(shortcut, ShortcutA) else None, shared

    def _shortcut(self, x: Tensor, stride: int | None, shared: bool) -> Tensor:
        if stride is not None:  # option A: subsample, then as many zero channels appended, per branch
            x = x[:, :, ::stride, ::stride]
            if shared:
                return torch.cat((x, torch.zeros_like(x)), dim=1).repeat(1, self.k, 1, 1)
            b, c, h, w = x.shape
            x = x.reshape(b, self.k, c // self.k, h, w)
            return torch.cat((x, torch.zeros_like(x)), dim=2).reshape(b, 2 * c, h, w)
        return x.repeat(1, self.k, 1, 1) if shared else x

    def __call__(self, x: Tensor) -> Tensor:
        for kind, op in self._ops:
            if kind == "conv":
                x = op(x)  # type: ignore[operator]
            elif kind == "relu":
                x = F.relu(x)
            else:
                conv_a, conv_b, stride, shared = op  # type: ignore[misc]
                out = conv_b(F.relu(conv_a(x)))
                x = F.relu(out + self._shortcut(x, stride, shared))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
