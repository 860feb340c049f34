"""The package map of docs/architecture.md, enforced: imports point down the layers, never up or sideways,
and the torch-free layers are torch-free by construction."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "memo_edge"

# Lowest first; a package may import only packages of a lower layer (and itself). Keep in step with
# the "Layers" section of docs/architecture.md.
LAYERS: list[set[str]] = [
    {"errors"},
    {"options"},  # the options' vocabularies and the update-options record: torch-free, click-free
    {"utils"},
    {"memory", "data"},
    {"runtime"},
    {"serve"},
    {"model"},
    {"train"},
    {"export"},
    {"device"},
    {"experiments", "analysis"},
    {"cli_options"},  # the click options of a training run, applied by cli.py
    {"cli"},
    {"__main__"},  # python -m memo_edge: the CLI
]
TORCH_FREE = {"errors", "options", "utils", "memory", "data", "runtime", "serve"}
HEAVY = ("torch", "torchvision", "matplotlib", "sklearn", "onnx")  # onnxruntime is the runtime's, not these


def layer_of(package: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if package in names)


def modules() -> list[tuple[str, Path]]:
    """(top-level package or module name inside memo_edge, file) for every source file."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts == ("__init__.py",):
            continue
        found.append((rel.parts[0].removesuffix(".py"), path))
    return found


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level?) for every import in ``path``, lazy ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "memo_edge":  # from memo_edge import runtime
                found += [(f"memo_edge.{alias.name}", node.lineno, id(node) in top_level) for alias in node.names]
            else:
                found.append((node.module, node.lineno, id(node) in top_level))
    return found


def test_every_package_has_a_layer() -> None:
    unknown = sorted({name for name, _ in modules()} - set().union(*LAYERS))
    assert not unknown, f"add {unknown} to LAYERS here and to docs/architecture.md"


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for package, path in modules():
        for module, line, _ in imports(path):
            parts = module.split(".")
            if parts[0] != "memo_edge" or len(parts) < 2 or parts[1] == package or parts[1] == "__version__":
                continue
            if layer_of(parts[1]) >= layer_of(package):
                wrong.append(f"{path.relative_to(ROOT.parent)}:{line}: {package} imports {module}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_torch_free_layers_import_no_heavy_library_at_module_level() -> None:
    wrong = []
    for package, path in modules():
        if package not in TORCH_FREE:
            continue
        for module, line, top in imports(path):
            if top and module.split(".")[0] in HEAVY:
                wrong.append(f"{path.relative_to(ROOT.parent)}:{line}: {module}")
    assert not wrong, "torch-free layers import at module level:\n" + "\n".join(wrong)


def test_importing_the_runtime_imports_neither_torch_nor_the_exporter() -> None:
    code = ("import sys, memo_edge.runtime as rt\n"
            "rt.load, rt.open_package\n"  # the lazy names too
            "import memo_edge.runtime.check, memo_edge.runtime.versions, memo_edge.runtime.bench\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision') "
            "or m.startswith(('memo_edge.export', 'memo_edge.device', 'memo_edge.train', 'memo_edge.model')))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("package", "path"), modules(), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else None)
def test_no_source_file_is_over_400_lines(package: str, path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= 420, f"{path.relative_to(ROOT.parent)} has {lines} lines: split it by purpose"
