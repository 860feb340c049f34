"""``memo-edge budget``: the memory-alignment figures of a backbone, computed from live modules.

Under an exemplar codec (``memory/codec.py``) the same bytes hold more exemplars: the tables add the
counts at the codec's mean encoded size, measured on a dataset (``--codec-data``) or stated
(``--codec-bytes``), and say which.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from memo_edge.data.datasets import load_dataset
from memo_edge.data.scenario import build_scenario, parse_scenario
from memo_edge.errors import InvalidValue
from memo_edge.memory.alignment import exemplar_bytes, exemplars_that_fit, param_bytes
from memo_edge.memory.codec import Codec, parse_codec
from memo_edge.memory.policy import MemoryPolicy
from memo_edge.model import split_parameter_counts
from memo_edge.model.methods import METHODS, aligned_budget_bytes, method_model_bytes

__all__ = ["BudgetRequest", "budget_report", "format_budget_report", "STANDARD_SCENARIOS"]

# The reference's table rows (on a 100-class dataset).
STANDARD_SCENARIOS = ("B0Inc5", "B0Inc10", "B0Inc20", "B50Inc5", "B50Inc10", "B50Inc25")
# The aligned table's columns: the paper's names for the methods of the comparison.
_COLUMNS = (("memo", "memo"), ("single_backbone", "replay"), ("der", "der"))


@dataclass(frozen=True)
class BudgetRequest:
    backbone: str = "resnet32"
    split: int | None = None
    image_size: int = 32
    channels: int = 3
    classes: int = 100
    base_exemplars: int = 2000
    scenario: str = "B0Inc10"
    exemplar_codec: str = "raw"
    codec_data: str | None = None  # a dataset spec to measure the codec's mean size on (its train split)
    codec_bytes: int | None = None  # or the mean encoded size, stated
    codec_samples: int = 1000  # images measured, at random (seed 0)


def codec_mean_bytes(req: BudgetRequest, codec: Codec) -> dict[str, Any] | None:
    """The codec's mean encoded size per exemplar, and where the figure comes from; None for raw."""
    raw = req.image_size * req.image_size * req.channels
    if codec.fixed_size(raw) is not None:  # nothing to measure
        if req.codec_data or req.codec_bytes:
            raise InvalidValue("--codec-data and --codec-bytes size an --exemplar-codec other than raw")
        return None
    if (req.codec_data is None) == (req.codec_bytes is None):
        raise InvalidValue(f"--exemplar-codec {codec}: give --codec-data DATASET to measure its mean size, or "
                         f"--codec-bytes B to state it (raw is {raw:,} B)")
    if req.codec_bytes is not None:
        return {"mean_bytes": req.codec_bytes, "source": f"stated (--codec-bytes {req.codec_bytes})"}
    data = load_dataset(req.codec_data, image_size=req.image_size if req.codec_data.startswith("imagefolder:") else None)
    shape = (req.image_size, req.image_size, req.channels)
    if data.image_shape != shape:
        raise InvalidValue(f"--codec-data {req.codec_data}: images are {data.image_shape}, the budget is for {shape}")
    pick = np.sort(np.random.default_rng(0).permutation(len(data.train))[: req.codec_samples])
    sizes = [len(blob) for blob in codec.encode_many(data.train.take(pick))]
    mean = int(np.ceil(np.mean(sizes)))
    return {"mean_bytes": mean, "source": f"measured on {len(sizes):,} training images of {req.codec_data} "
                                          f"(min {min(sizes):,} B, max {max(sizes):,} B)"}


def _num_tasks(spec: str, classes: int) -> int:
    return build_scenario(spec, classes, shuffle=False).num_tasks


def _aligned_row(req: BudgetRequest, spec: str, img: int, mean: int | None) -> dict[str, Any]:
    """One scenario of the aligned table: each method's exemplars at DER's bytes (and at the codec's size)."""
    tasks = _num_tasks(spec, req.classes)
    total = aligned_budget_bytes(req.backbone, tasks, img, req.base_exemplars)
    row: dict[str, Any] = {"scenario": spec, "num_tasks": tasks}
    for key, name in _COLUMNS:
        row[f"{key}_exemplars"] = exemplars_that_fit(total - _model_bytes(req, name, tasks), img)
    row["der_total_bytes"] = total
    for key, name in _COLUMNS if mean is not None else ():
        row[f"{key}_codec_exemplars"] = exemplars_that_fit(total - _model_bytes(req, name, tasks), mean)
    return row


def _quota_rows(req: BudgetRequest, total: int, boundaries: list[int], img: int, mean: int | None) -> list[dict[str, Any]]:
    """MEMO on a device with ``total`` fixed: each new branch shrinks the exemplar memory (the device's rule)."""
    policy, rows = MemoryPolicy("bytes", total), []
    for tasks, seen in enumerate(boundaries, start=1):
        model = _model_bytes(req, "memo", tasks)
        row = {"tasks": tasks, "model_bytes": model, "exemplar_bytes": total - model,
               "exemplars": exemplars_that_fit(total - model, img),
               "per_class": policy.per_class(seen, model_bytes=model, bytes_per_exemplar=img)}
        if mean is not None:
            row |= {"codec_exemplars": exemplars_that_fit(total - model, mean),
                    "codec_per_class": policy.class_bytes(seen, model_bytes=model, bytes_per_exemplar=img) // mean}
        rows.append(row)
    return rows


def _model_bytes(req: BudgetRequest, method: str, tasks: int) -> int:
    return method_model_bytes(METHODS[method], req.backbone, tasks, split=req.split)


def budget_report(req: BudgetRequest) -> dict[str, Any]:
    trunk, branch = split_parameter_counts(req.backbone, split=req.split)
    img = exemplar_bytes((req.image_size, req.image_size, req.channels))
    codec = parse_codec(req.exemplar_codec)
    sized = codec_mean_bytes(req, codec)
    mean = None if sized is None else sized["mean_bytes"]  # the same bytes at the codec's mean size
    specs = [s for s in STANDARD_SCENARIOS if parse_scenario(s)[0] < req.classes]
    scenario = build_scenario(req.scenario, req.classes, shuffle=False)
    total = aligned_budget_bytes(req.backbone, scenario.num_tasks, img, req.base_exemplars)
    model = param_bytes(trunk + branch)
    return {
        "request": asdict(req),
        "trunk_parameters": trunk,
        "branch_parameters": branch,
        "model_parameters": trunk + branch,
        "model_bytes": model,
        "bytes_per_exemplar": img,
        "exemplars_per_model": exemplars_that_fit(model, img),
        "aligned": [_aligned_row(req, spec, img, mean) for spec in specs],
        "quota": {"scenario": req.scenario, "total_bytes": total,
                  "rows": _quota_rows(req, total, scenario.boundaries(), img, mean)},
        "codec": None if sized is None else {"codec": codec.spec, "raw_bytes": img, **sized},  # None under raw
    }


def format_budget_report(r: dict[str, Any]) -> str:
    req = r["request"]
    size = f"{req['image_size']}x{req['image_size']}x{req['channels']}"
    lines = [
        f"{req['backbone']}: trunk {r['trunk_parameters']:,} + branch {r['branch_parameters']:,} = "
        f"{r['model_parameters']:,} parameters = {r['model_bytes']:,} B",
        f"1 model = {r['exemplars_per_model']} exemplars of {r['bytes_per_exemplar']:,} B ({size}; "
        f"ratio {r['model_bytes'] / r['bytes_per_exemplar']:.2f})",
        "",
        f"Memory-aligned exemplars ({req['classes']} classes; every method gets the bytes of DER: "
        f"T backbones + {req['base_exemplars']} exemplars):",
        f"{'scenario':<10} {'T':>3} {'MEMO':>7} {'single-backbone':>16} {'DER':>6} {'total MiB':>10}",
    ]
    c = r.get("codec")
    if c is not None:
        lines[-1] += f" {'MEMO':>7} {'single-backbone':>16} {'DER':>6}  <- as {c['codec']}"
    for row in r["aligned"]:
        lines.append(
            f"{row['scenario']:<10} {row['num_tasks']:>3} {row['memo_exemplars']:>7} "
            f"{row['single_backbone_exemplars']:>16} {row['der_exemplars']:>6} {row['der_total_bytes'] / 2**20:>10.2f}"
            + ("" if c is None else f" {row['memo_codec_exemplars']:>7} {row['single_backbone_codec_exemplars']:>16} "
                                    f"{row['der_codec_exemplars']:>6}")
        )
    q = r["quota"]
    lines += [
        "",
        f"On a device with the {q['scenario']} budget fixed at {q['total_bytes']:,} B "
        f"({q['total_bytes'] / 2**20:.2f} MiB), each new branch shrinks the exemplar memory:",
        f"{'tasks':>5} {'model B':>12} {'exemplar B':>12} {'exemplars':>10} {'per class':>10}"
        + ("" if c is None else f" {'exemplars':>10} {'per class':>10}  <- as {c['codec']}"),
    ]
    for row in q["rows"]:
        lines.append(f"{row['tasks']:>5} {row['model_bytes']:>12,} {row['exemplar_bytes']:>12,} "
                     f"{row['exemplars']:>10} {row['per_class']:>10}"
                     + ("" if c is None else f" {row['codec_exemplars']:>10} {row['codec_per_class']:>10}"))
    if c is not None:
        lines += ["", f"{c['codec']}: {c['mean_bytes']:,} B per exemplar on average ({c['raw_bytes'] / c['mean_bytes']:.1f}x "
                      f"smaller than raw's {c['raw_bytes']:,} B), {c['source']}. Counts are the bytes over that mean; "
                      "a run stores what fits in each class's share."]
    return "\n".join(lines)
