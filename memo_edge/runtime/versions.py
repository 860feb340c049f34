"""Package versions on the device: list them, roll back, collect garbage.

A new version is written by ``runtime/writer.py`` (its commit protocol is described there), which
calls the garbage collection here after each commit.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from memo_edge.runtime.check import require_intact
from memo_edge.runtime.lock import writer_lock
from memo_edge.runtime.catalog import catalog, current_version, transaction
from memo_edge.runtime.manifest import Manifest, PackageError
from memo_edge.runtime.package import open_package
from memo_edge.utils.phases import timed

__all__ = ["VersionInfo", "list_versions", "rollback", "collect_garbage", "remove_orphans", "KEEP_VERSIONS"]

log = logging.getLogger(__name__)
KEEP_VERSIONS = 2
_PACKAGE_SUFFIXES = (".onnx", ".safetensors")


@dataclass(frozen=True)
class VersionInfo:
    version: int
    parent: int | None
    created: str
    current: bool


def list_versions(root: Path) -> list[VersionInfo]:
    with catalog(root) as conn:
        head = current_version(conn)
        rows = conn.execute("SELECT version, parent, created FROM versions ORDER BY version").fetchall()
    return [VersionInfo(v, p, c, v == head) for v, p, c in rows]


def _current(root: Path, versions: Sequence[VersionInfo]) -> VersionInfo:
    current = next((v for v in versions if v.current), None)
    if current is None:
        raise PackageError(f"{root}: the catalog names no current version that it keeps")
    return current


def rollback(root: Path) -> int:
    """Make the current version's parent current again (under the writer lock); returns it."""
    with writer_lock(root, "rollback"):
        require_intact(root)
        current = _current(root, list_versions(root))  # the catalog's parent survives garbage collection
        if current.parent is None:
            raise PackageError(f"{root}: version {current.version} has no earlier version kept; nothing to roll back to",
                               code="conflict")
        target = open_package(root, version=current.parent)  # its files must still be there and intact ...
        target.exemplars()  # ... and its exemplars, which the next update learns from
        with catalog(root, readonly=False) as conn, transaction(conn):
            conn.execute("UPDATE head SET version = ? WHERE id = 0", (current.parent,))
    return current.parent


@timed("collect_garbage")
def collect_garbage(root: Path, *, keep: int = KEEP_VERSIONS, manifests: Sequence[Manifest] | None = None) -> list[str]:
    """Drop versions beyond the newest ``keep`` (never the current one or its parent) and unused files.

    ``manifests``: those of every version the catalog keeps, if the caller holds them (else read).
    """
    versions = list_versions(root)
    current = _current(root, versions)
    keep_set = {v.version for v in versions[-keep:]} | {current.version}
    if current.parent is not None:
        keep_set.add(current.parent)
    drop = [v.version for v in versions if v.version not in keep_set]
    with catalog(root, readonly=False) as conn, transaction(conn):
        for version in drop:
            for table in ("exemplars", "exemplar_usage", "budgets"):
                conn.execute(f"DELETE FROM {table} WHERE version = ?", (version,))
            conn.execute("UPDATE versions SET parent = NULL WHERE parent = ?", (version,))
            conn.execute("DELETE FROM versions WHERE version = ?", (version,))
    kept = None if manifests is None else [m for m in manifests if m.version not in drop]
    removed = remove_orphans(root, kept)
    if drop or removed:
        log.info("%s: dropped versions %s, removed %d unused files", root, drop, len(removed))
    return removed


def remove_orphans(root: Path, manifests: Sequence[Manifest] | None = None) -> list[str]:
    """Remove files that no kept version references: what a failed or killed writer left behind.

    Only for the holder of the writer lock: another writer's new files are orphans until it commits.
    ``manifests``: those of every version the catalog keeps, if the caller holds them (else read).
    """
    if manifests is None:
        manifests = [open_package(root, version=v.version, verify=False).manifest for v in list_versions(root)]
    entries = [f for m in manifests for f in m.files]
    used, used_sha = {f.name for f in entries}, {f.sha256 for f in entries}
    removed = []
    for path in root.iterdir():
        if path.is_file() and path.suffix in _PACKAGE_SUFFIXES and path.name not in used:
            path.unlink()
            removed.append(path.name)
    for meta in root.glob("engines/*/engine.json"):  # TensorRT engines of graphs no version uses
        if json.loads(meta.read_text()).get("parts", {}).get("onnx_sha256") not in used_sha:
            shutil.rmtree(meta.parent)
            removed.append(f"engines/{meta.parent.name}")
    for stale in root.glob(".*.tmp"):  # temp files of an interrupted write
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
    return removed
