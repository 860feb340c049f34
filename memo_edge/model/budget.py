"""``memo-edge budget``: the memory-alignment figures of a backbone, computed from live modules."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from memo_edge.data.scenario import build_scenario, parse_scenario
from memo_edge.memory.alignment import (
    aligned_table,
    der_total_bytes,
    exemplar_bytes,
    exemplars_that_fit,
    quota_table,
)
from memo_edge.model import split_parameter_counts

__all__ = ["BudgetRequest", "budget_report", "format_budget_report", "STANDARD_SCENARIOS"]

# The reference's table rows (on a 100-class dataset).
STANDARD_SCENARIOS = ("B0Inc5", "B0Inc10", "B0Inc20", "B50Inc5", "B50Inc10", "B50Inc25")


@dataclass(frozen=True)
class BudgetRequest:
    backbone: str = "resnet32"
    split: int | None = None
    image_size: int = 32
    channels: int = 3
    classes: int = 100
    base_exemplars: int = 2000
    scenario: str = "B0Inc10"


def _num_tasks(spec: str, classes: int) -> int:
    return build_scenario(spec, classes, shuffle=False).num_tasks


def budget_report(req: BudgetRequest) -> dict[str, Any]:
    trunk, branch = split_parameter_counts(req.backbone, split=req.split)
    img = exemplar_bytes((req.image_size, req.image_size, req.channels))
    specs = [s for s in STANDARD_SCENARIOS if parse_scenario(s)[0] < req.classes]
    rows = aligned_table(trunk, branch, img, [(s, _num_tasks(s, req.classes)) for s in specs], req.base_exemplars)
    scenario = build_scenario(req.scenario, req.classes, shuffle=False)
    tasks = scenario.num_tasks
    total = der_total_bytes(tasks, trunk + branch, img, req.base_exemplars)
    quota = quota_table(total, trunk, branch, img, list(range(1, tasks + 1)), scenario.boundaries())
    return {
        "request": asdict(req),
        "trunk_parameters": trunk,
        "branch_parameters": branch,
        "model_parameters": trunk + branch,
        "model_bytes": 4 * (trunk + branch),
        "bytes_per_exemplar": img,
        "exemplars_per_model": exemplars_that_fit(4 * (trunk + branch), img),
        "aligned": [asdict(r) for r in rows],
        "quota": {"scenario": req.scenario, "total_bytes": total, "rows": [asdict(r) for r in quota]},
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
    for row in r["aligned"]:
        lines.append(
            f"{row['scenario']:<10} {row['num_tasks']:>3} {row['memo_exemplars']:>7} "
            f"{row['single_backbone_exemplars']:>16} {row['der_exemplars']:>6} {row['der_total_bytes'] / 2**20:>10.2f}"
        )
    q = r["quota"]
    lines += [
        "",
        f"On a device with the {q['scenario']} budget fixed at {q['total_bytes']:,} B "
        f"({q['total_bytes'] / 2**20:.2f} MiB), each new branch shrinks the exemplar memory:",
        f"{'tasks':>5} {'model B':>12} {'exemplar B':>12} {'exemplars':>10} {'per class':>10}",
    ]
    for row in q["rows"]:
        lines.append(f"{row['tasks']:>5} {row['model_bytes']:>12,} {row['exemplar_bytes']:>12,} "
                     f"{row['exemplars']:>10} {row['per_class']:>10}")
    return "\n".join(lines)
