"""The docs that name code, checked against it: docs/serve.md's endpoints are the service's routes, and
docs/architecture.md's package map names every module file that exists and no other."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.testclient import TestClient

from conftest import make_package
from memo_edge.serve.app import create_app

REPO = Path(__file__).parents[1]
PACKAGE = REPO / "memo_edge"


def _endpoint(method: str, path: str) -> tuple[str, str]:
    """``POST /jobs/{id}?x=1`` and ``/jobs/{job_id}`` alike: the method and the path, parameters unnamed."""
    return method.upper(), re.sub(r"\{[^}]*\}", "{}", path.split("?", 1)[0])


def test_serve_md_lists_exactly_the_routes(tmp_path: Path) -> None:
    documented = {_endpoint(m, p) for m, p in re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s]*)`",
                                                         (REPO / "docs" / "serve.md").read_text())}
    app = create_app(make_package(tmp_path / "pkg")[1].root, backend="ort-cpu")
    with TestClient(app):  # start and stop it cleanly
        routes = {_endpoint(m, route.path) for route in app.routes for m in route.methods or () if m != "HEAD"}
    assert documented == routes, (f"in docs/serve.md, not served: {sorted(documented - routes)}; "
                                  f"served, not in docs/serve.md: {sorted(routes - documented)}")


def mapped_files(text: str) -> set[str]:
    """The module files the package map names: ``dir/file.py`` in a row's first column, or for a row of a
    whole directory (``serve/``), the bare ``file.py (...)`` entries its purpose column lists."""
    section = text.split("## Package map", 1)[1].split("\n## ", 1)[0]
    found = set()
    for row in re.findall(r"^\|([^|]*)\|(.*)\|\s*$", section, re.M):
        for name in re.findall(r"`([^`]+)`", row[0]):
            if name.endswith("/"):
                found |= {name + file for file in re.findall(r"`(\w+\.py)` \(", row[1])}
            else:
                found.add(name)
    return found


def test_the_package_map_names_every_module_file() -> None:
    named = mapped_files((REPO / "docs" / "architecture.md").read_text())
    files = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert named == files, (f"in docs/architecture.md's package map, no such file: {sorted(named - files)}; "
                            f"not in the map: {sorted(files - named)}")


def test_no_tracker_numbers_in_the_code_or_the_user_docs() -> None:
    """"since issue 13" means nothing to a reader of the code; docs/benchmarks.md may keep its dated log, and a
    citation of another project's tracker (a github.com address on the line) is a source, not ours."""
    files = [*PACKAGE.rglob("*.py"), *(REPO / "docs").glob("*.md"), REPO / "README.md"]
    found = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
             for path in files if path.name != "benchmarks.md"
             for n, line in enumerate(path.read_text().splitlines(), start=1)
             if re.search(r"\bissues? #?\d+|\(#\d+\)", line, re.I) and "github.com" not in line]
    assert not found, "tracker numbers:\n" + "\n".join(found)
