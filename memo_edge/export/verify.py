"""Numerical verification of an exported package: ONNX Runtime (CPU) against PyTorch.

Each graph is compared on the same inputs (branches get PyTorch's trunk output, so a difference is
that graph's own), then end to end: the split path (trunk -> branches -> numpy head) and the full
graph. Tolerance: the largest absolute difference, relative to the largest reference magnitude
(at least 1), must stay within ``REL_TOLERANCE``; and every top-1 decision must agree, except a
near-tie whose PyTorch margin is within twice the observed logit difference (counted and recorded).

An int8 full graph (``full-int8``) is a deliberate approximation, so its bar is different: its
top-1 decisions must agree with PyTorch's on at least ``MIN_INT8_AGREEMENT`` of the images (its
logit difference is recorded, not checked).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch

from memo_edge.errors import MemoEdgeError
from memo_edge.export.graphs import Preprocess
from memo_edge.model import MemoNet
from memo_edge.runtime.backends import OrtCpuBackend
from memo_edge.runtime.package import INT8_ROLE, PackageVersion
from memo_edge.utils.phases import phase, timed

__all__ = ["REL_TOLERANCE", "MIN_INT8_AGREEMENT", "verify_package", "compare"]

REL_TOLERANCE = 1e-3  # float32 BN folding and kernel choice differ far less (each package's manifest records it); 1e-3 flags real errors
MIN_INT8_AGREEMENT = 0.95  # a trained CIFAR-100 run measured 96.5-98.1% (docs/benchmarks.md)


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    diff = float(np.abs(reference - candidate).max()) if reference.size else 0.0
    scale = max(1.0, float(np.abs(reference).max()) if reference.size else 1.0)
    return {"max_abs_diff": diff, "relative_diff": diff / scale}


def _agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    ref_top, cand_top = reference.argmax(1), candidate.argmax(1)
    differ = np.flatnonzero(ref_top != cand_top)
    slack = 2.0 * float(np.abs(reference - candidate).max()) if reference.size else 0.0
    rows = np.arange(len(reference))
    margins = reference[rows, ref_top] - reference[rows, cand_top]
    near_ties = int(np.sum(margins[differ] <= slack))
    return {"top1_agreement": float(1.0 - len(differ) / max(1, len(reference))), "disagreements": int(len(differ)),
            "near_ties": near_ties}


@timed("verify_package")
@torch.inference_mode()
def verify_package(version: PackageVersion, model: MemoNet, images: np.ndarray, *, batch_size: int = 128,
                   graphs: Collection[str] | None = None) -> dict[str, Any]:
    """Compare the graphs of ``version`` with ``model`` on uint8 ``images``; raise when out of tolerance.

    ``graphs``: the split graphs (``trunk``, ``branch-K``) to compare one by one; None: all of them
    (export). An update passes only the graphs it wrote: a kept graph's file is the one verified when
    it was written (its sha256 is checked on every load). The end-to-end checks (the split path
    through every branch and the head, full, full-int8) always run.
    """
    model = model.eval().cpu()
    spec = version.manifest.input
    preprocess = Preprocess(spec.mean, spec.std)
    # PyTorch runs between the ORT calls: ORT's threads must not busy-wait for a next run meanwhile.
    backend = OrtCpuBackend(version, precision="fp32", spinning=False)
    has_int8 = version.manifest.file(INT8_ROLE) is not None
    int8 = OrtCpuBackend(version, precision="int8", spinning=False) if has_int8 else None
    every = ["trunk", *(f"branch-{t}" for t in range(len(model.branches)))]
    checked = every if graphs is None else [g for g in every if g in set(graphs)]
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def add(name: str, ref: torch.Tensor | np.ndarray, cand: np.ndarray) -> None:
        ref = ref.numpy() if isinstance(ref, torch.Tensor) else ref
        parts.setdefault(name, []).append((ref, cand))

    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start : start + batch_size])
        with phase("torch_reference"):  # PyTorch runs each part once
            shared = model.trunk(preprocess(torch.from_numpy(batch)))
            features = [branch(shared) for branch in model.branches]
            logits = model.forward_head(torch.cat(features, dim=1)).logits
        if "trunk" in checked:
            add("trunk", shared, backend.trunk(batch))
        for t, feature in enumerate(features):
            if f"branch-{t}" in checked:
                add(f"branch-{t}", feature, backend.branch(t, shared.numpy()))
        add("end_to_end", logits, backend.head(backend.features(batch)))
        full = backend.full_logits(batch)
        if full is not None:
            add("full", logits, full)
        if int8 is not None:
            add(INT8_ROLE, logits, int8.logits(batch))

    report: dict[str, Any] = {"images": int(len(images)), "relative_tolerance": REL_TOLERANCE, "graphs": {}}
    if len(checked) < len(every):  # verified when they were written; their files checked by sha256
        report["kept_graphs"] = [g for g in every if g not in checked]
    if int8 is not None:
        report["min_int8_agreement"] = MIN_INT8_AGREEMENT
    for name, pairs in parts.items():
        ref, cand = (np.concatenate([p[i] for p in pairs]) for i in (0, 1))
        figures = compare(ref, cand)
        if name in ("end_to_end", "full", INT8_ROLE):
            figures |= _agreement(ref, cand)
        report["graphs"][name] = figures
    _check(report["graphs"], version)
    report["passed"] = True
    return report


def _check(graphs: dict[str, dict[str, float]], version: PackageVersion) -> None:
    exact = {name: g for name, g in graphs.items() if name != INT8_ROLE}
    problems: Sequence[str] = [
        f"{name}: relative difference {g['relative_diff']:.2e} > {REL_TOLERANCE:.0e}"
        for name, g in exact.items() if g["relative_diff"] > REL_TOLERANCE
    ] + [
        f"{name}: {g['disagreements'] - g['near_ties']} top-1 disagreements beyond near-ties"
        for name, g in exact.items() if "disagreements" in g and g["disagreements"] > g["near_ties"]
    ] + [
        f"{name}: top-1 agreement with float32 {g['top1_agreement']:.1%} < {MIN_INT8_AGREEMENT:.0%} "
        "(int8 is optional: export without --int8, or update with --no-int8)"
        for name, g in graphs.items() if name == INT8_ROLE and g["top1_agreement"] < MIN_INT8_AGREEMENT
    ]
    if problems:
        raise MemoEdgeError(f"export verification failed for {version.root.name}: " + "; ".join(problems))
