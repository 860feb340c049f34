"""Checking a whole package: what a later ``update`` or ``rollback`` would need, read and verified.

``open_package`` verifies one version (its manifest and files) because that is what a reader uses.
This module checks everything a package keeps, and says what is damaged:

- the catalog's SQLite structure (``PRAGMA integrity_check``; ``quick_check`` for the cheap level),
- the format (a package of a newer format is refused, not reported as damaged), the current-version
  pointer and the parent links,
- every kept version's manifest (sha256 and internal consistency),
- full level: every kept version's exemplar rows against their digest, every file by sha256;
  cheap level: every file's presence and size.

``memo-edge info`` runs the full level; every write command runs the cheap level first, under the
writer lock, so a damaged catalog is answered with one line before any work. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from memo_edge.runtime.catalog import CATALOG, connect, current_version
from memo_edge.runtime.formats import FORMAT_VERSION, format_number, format_problem
from memo_edge.runtime.manifest import FileEntry, Manifest, PackageError, read_manifest
from memo_edge.runtime.package import PackageVersion, verify_file

__all__ = ["PackageCheck", "check_package", "require_intact"]

_SHOWN = 3  # SQLite integrity messages quoted in a report


@dataclass(frozen=True)
class PackageCheck:
    root: Path
    full: bool
    problems: tuple[str, ...]
    versions: tuple[int, ...]  # the versions the catalog keeps
    files: int  # distinct files checked
    exemplars: int  # exemplar rows checked against their digests (full level only)
    current: int | None = None  # the current version
    manifests: tuple[Manifest, ...] = ()  # those of the kept versions that could be read

    def manifest(self, version: int | None) -> Manifest:
        """A kept version's manifest, as read by the check."""
        found = next((m for m in self.manifests if m.version == version), None)
        if found is None:
            raise PackageError(f"{self.root}: version {version} is not in the catalog")
        return found

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if not self.ok:
            return f"{self.root} is damaged: " + "; ".join(self.problems)
        if not self.full:
            return (f"quick check passed: SQLite structure, {len(self.versions)} versions' manifests, "
                    f"{self.files} files present")
        return (f"passed: SQLite integrity, versions {', '.join(map(str, self.versions))} (manifests, "
                f"{self.exemplars:,} exemplar rows and {self.files} files by sha256)")


def check_package(root: Path, *, full: bool = True) -> PackageCheck:
    """Check everything ``root`` keeps; problems are collected, not raised (a PackageError only when
    ``root`` is no package at all, or one of a format newer than this memo-edge reads)."""
    root = Path(root)
    problems: list[str] = []
    level = "integrity" if full else "quick"
    if not (root / CATALOG).is_file():
        raise PackageError(f"{root} is not a memo-edge package ({CATALOG} missing)")
    try:
        with contextlib.closing(connect(root / CATALOG, readonly=True)) as conn:
            try:
                messages = [str(r[0]) for r in conn.execute(f"PRAGMA {level}_check").fetchall()]
            except sqlite3.DatabaseError as exc:  # SQLite may give up on the first malformed page
                messages = [str(exc)]
            if messages != ["ok"]:
                more = f" (+{len(messages) - _SHOWN} more)" if len(messages) > _SHOWN else ""
                problems.append(f"{CATALOG} fails SQLite's {level} check: " + "; ".join(messages[:_SHOWN]) + more)
            fmt = conn.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()
            head = current_version(conn)
            stored = conn.execute("SELECT version, parent, manifest, manifest_sha256 FROM versions ORDER BY version").fetchall()
    except sqlite3.DatabaseError as exc:  # not a database, or pages too damaged to read the versions
        problems.append(f"{CATALOG}: the versions cannot be read ({exc})")
        return PackageCheck(root, full, tuple(problems), (), 0, 0)
    found = None if fmt is None else fmt[0]
    unreadable = format_problem(found)
    if (format_number(found) or 0) > FORMAT_VERSION:
        raise PackageError(f"{root / CATALOG}: {unreadable}")  # not damaged: written by a newer memo-edge
    if unreadable is not None:
        problems.append(f"{CATALOG}: {unreadable}")
    kept = {int(v) for v, *_ in stored}
    if head not in kept:
        problems.append(f"{CATALOG}: the current version {head} is not in the catalog")

    manifests: list[Manifest] = []
    for version, parent, text, digest in stored:
        if parent is not None and parent not in kept:
            problems.append(f"version {version}: its parent {parent} is not in the catalog")
        try:
            manifests.append(read_manifest(root / CATALOG, int(version), text, digest))
        except PackageError as exc:
            problems.append(str(exc))

    rows = 0
    checked: dict[str, FileEntry] = {}
    for manifest in manifests:
        if full:
            try:
                exemplars, _ = PackageVersion(root, manifest).exemplars()
                rows += len(exemplars)
            except PackageError as exc:
                problems.append(str(exc))
        for entry in manifest.files:
            if entry.name in checked:
                continue
            checked[entry.name] = entry
            try:
                if full:
                    verify_file(root, entry)
                else:
                    _present(root, entry)
            except PackageError as exc:
                problems.append(str(exc))
    return PackageCheck(root, full, tuple(problems), tuple(sorted(kept)), len(checked), rows, head, tuple(manifests))


def _present(root: Path, entry: FileEntry) -> None:
    path = root / entry.name
    if path.is_symlink() or not path.is_file() or path.stat().st_size != entry.size:
        raise PackageError(f"{path}: missing or of the wrong size ({entry.role} file listed in the manifest)")


def require_intact(root: Path, *, full: bool = False) -> PackageCheck:
    """Check ``root`` and refuse a damaged package with one line naming what is damaged."""
    report = check_package(root, full=full)
    if not report.ok:
        raise PackageError(report.summary())
    return report
