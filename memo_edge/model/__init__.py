"""Backbones split into trunk + branch, and the growing MEMO network."""

from __future__ import annotations

from memo_edge.model.backbones import BACKBONES, Backbone, backbone_names, create_backbone
from memo_edge.model.memonet import MemoNet, MemoOutput

__all__ = ["BACKBONES", "Backbone", "MemoNet", "MemoOutput", "backbone_names", "create_backbone", "split_parameter_counts"]


def split_parameter_counts(backbone: str, *, split: int | None = None) -> tuple[int, int]:
    """(trunk, branch) learnable parameters, counted on freshly built modules."""
    spec = create_backbone(backbone, split=split)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return count(spec.trunk), count(spec.new_branch())
