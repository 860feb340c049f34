"""``memo-edge info``: a package version as text."""

from __future__ import annotations

from memo_edge.runtime.check import PackageCheck
from memo_edge.runtime.package import CATALOG, INT8_ROLE, PackageVersion

__all__ = ["format_info"]


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def format_info(pkg: PackageVersion, check: PackageCheck | None = None) -> str:
    m = pkg.manifest
    b, inp = m.budget, m.input
    lines = [
        f"package {pkg.root}  (format {m.format_version}, version {m.version}, created {m.created})",
        f"model: {m.model.backbone} (split {m.model.split}), {len(m.task_classes)} tasks, "
        f"{len(m.class_names)} classes, opset {m.opset}",
        f"input: uint8 {inp.layout} {inp.height}x{inp.width}x{inp.channels}, "
        f"mean {[round(x, 4) for x in inp.mean]}, std {[round(x, 4) for x in inp.std]} (applied in the graphs)",
        "tasks: " + ", ".join(f"{t}: classes {a}-{e - 1}" for t, (a, e) in enumerate(m.task_classes)),
        f"budget: total {b.total_bytes:,} B ({_mib(b.total_bytes)}) = model {b.model_bytes:,} B + exemplar memory "
        f"{b.total_bytes - b.model_bytes:,} B; stored {b.exemplars} exemplars ({b.exemplar_bytes:,} B, " + (
            f"{b.per_class}/class at {b.bytes_per_exemplar:,} B each)" if b.codec == "raw" else
            f"at least {b.per_class}/class, {b.exemplar_bytes / max(b.exemplars, 1):,.0f} B each on average as {b.codec}; "
            f"{b.bytes_per_exemplar:,} B raw)"),
    ]
    v = m.verification
    if v:
        figures = ", ".join(f"{name} {g['max_abs_diff']:.1e}" for name, g in v["graphs"].items())
        agree = v["graphs"]["end_to_end"]["top1_agreement"]
        int8 = v["graphs"].get(INT8_ROLE)
        lines.append(f"verification: {'passed' if v.get('passed') else 'FAILED'} on {v['images']} images "
                     f"({v.get('images_from', '?')}); max |difference| {figures}; top-1 agreement {100 * agree:.1f}%"
                     + (f" (int8: {100 * int8['top1_agreement']:.1f}%)" if int8 else ""))
    if check is not None:
        lines.append(f"package check: {check.summary()}")
    lines.append(f"files ({len(m.files)}, {_mib(sum(f.size for f in m.files))}):")
    for f in m.files:
        role = f.role if f.task is None else f"{f.role}-{f.task}"
        lines.append(f"  {role:<10} {f.size:>12,} B  {f.name}")
    catalog = pkg.root / CATALOG
    lines.append(f"  {'catalog':<10} {catalog.stat().st_size:>12,} B  {CATALOG} (versions, manifests, exemplars)")
    return "\n".join(lines)
