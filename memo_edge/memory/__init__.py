"""Exemplar memory: herding selection, the exemplar set, and the byte budget shared by all stages.

Nothing here imports torch, so the runtime can size and shrink its exemplar store without it.
"""

from __future__ import annotations

from memo_edge.memory.alignment import (
    BASE_EXEMPLARS,
    BYTES_PER_PARAM,
    count_parameters,
    exemplar_bytes,
    exemplars_that_fit,
    model_bytes,
    param_bytes,
)
from memo_edge.memory.exemplars import ExemplarSet, select_exemplars
from memo_edge.memory.herding import herding_order, l2_normalize

__all__ = [
    "BASE_EXEMPLARS",
    "BYTES_PER_PARAM",
    "ExemplarSet",
    "count_parameters",
    "exemplar_bytes",
    "exemplars_that_fit",
    "herding_order",
    "l2_normalize",
    "model_bytes",
    "param_bytes",
    "select_exemplars",
]
