"""Exemplar memory: herding selection, the exemplar set, and the byte budget shared by all stages.

Nothing here imports torch, so the runtime can size and shrink its exemplar store without it.
"""

from __future__ import annotations

from memo_edge.memory.alignment import (
    BASE_EXEMPLARS,
    BYTES_PER_PARAM,
    AlignedRow,
    Quota,
    QuotaRow,
    aligned_table,
    count_parameters,
    der_total_bytes,
    exemplar_bytes,
    exemplar_quota,
    exemplars_that_fit,
    memo_aligned_exemplars,
    memo_model_bytes,
    model_bytes,
    per_class_quota,
    quota_table,
    single_backbone_aligned_exemplars,
)
from memo_edge.memory.exemplars import ExemplarSet, select_exemplars
from memo_edge.memory.herding import herding_order, l2_normalize

__all__ = [
    "BASE_EXEMPLARS",
    "BYTES_PER_PARAM",
    "AlignedRow",
    "ExemplarSet",
    "Quota",
    "QuotaRow",
    "aligned_table",
    "count_parameters",
    "der_total_bytes",
    "exemplar_bytes",
    "exemplar_quota",
    "exemplars_that_fit",
    "herding_order",
    "l2_normalize",
    "memo_aligned_exemplars",
    "memo_model_bytes",
    "model_bytes",
    "per_class_quota",
    "quota_table",
    "select_exemplars",
    "single_backbone_aligned_exemplars",
]
