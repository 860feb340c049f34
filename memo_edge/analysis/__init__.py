"""Analyses of finished runs: how the representations of a MEMO model change from task to task."""

from __future__ import annotations

from memo_edge.analysis.cka import centered_gram, cka_from_grams, linear_cka
from memo_edge.analysis.layers import analyze_layers, format_layers
from memo_edge.analysis.stages import stage_features, stage_kinds, stage_names

__all__ = [
    "analyze_layers",
    "centered_gram",
    "cka_from_grams",
    "format_layers",
    "linear_cka",
    "stage_features",
    "stage_kinds",
    "stage_names",
]
