"""Atomic file and directory writes: a crash leaves either the old version or the new one, never half of one.

Files: pattern from pip's ``utils/filesystem.py``: temp file in the same directory, write, flush,
fsync, ``os.replace``, fsync the directory; the temp file is removed if anything fails.

Directories (``atomic_directory``): a directory cannot be replaced by a non-empty one in one
rename, so an old tree is moved aside and deleted only once the new one is in place; a crash
between the two renames is repaired by the next ``atomic_directory`` on that path
(``recover_directory``). Details in their docstrings.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

# mkstemp/mkdtemp create private (0600/0700) entries; give the final ones the usual umask-based
# modes, so results and packages are readable like any other file the user writes.
_UMASK = os.umask(0)
os.umask(_UMASK)

__all__ = [
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_directory",
    "recover_directory",
    "fsync_dir",
    "sha256_file",
]


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def _aside(path: Path) -> Path:
    """Where the old tree waits while a new one takes its place."""
    return path.with_name(f".{path.name}.old")


def _is_trash(entry: str, name: str) -> bool:
    """``.NAME.<8 hex>.trash``: a tree being deleted, never read (``_discard`` makes these names)."""
    prefix, suffix = f".{name}.", ".trash"
    token = entry[len(prefix) : -len(suffix)]
    is_hex = len(token) == 8 and all(c in "0123456789abcdef" for c in token)
    return entry.startswith(prefix) and entry.endswith(suffix) and is_hex


def _discard(path: Path, tree: Path) -> None:
    """Delete ``tree`` so that a crash midway never leaves part of it under a name recovery trusts.

    It is renamed to ``.NAME.<hex>.trash`` first: ``.NAME.old`` is then always whole or absent.
    """
    trash = path.with_name(f".{path.name}.{secrets.token_hex(4)}.trash")
    os.replace(tree, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def recover_directory(path: str | os.PathLike[str]) -> None:
    """Finish or undo what a killed ``atomic_directory(path)`` left, so ``path`` is one whole tree or absent.

    - killed before its first rename: ``path`` is the old tree, nothing to do;
    - killed between its two renames: ``path`` is missing and the old tree waits whole in
      ``.NAME.old``: it is put back;
    - killed after them: ``path`` is the new tree and ``.NAME.old`` is obsolete: it is deleted;
    - killed while deleting an obsolete tree: what is left of it (``.NAME.<hex>.trash``) is deleted.

    A killed writer's temp directory (``.NAME.<random>.tmp``) is left alone: it may be a live
    writer's. Renames are not coordinated between processes: one writer per path at a time.
    """
    path = Path(path)
    old = _aside(path)
    if old.is_dir():
        if os.path.lexists(path):
            _discard(path, old)
        else:
            os.replace(old, path)
            fsync_dir(path.parent)
    if path.parent.is_dir():
        for entry in os.listdir(path.parent):
            if _is_trash(entry, path.name):
                shutil.rmtree(path.parent / entry, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp directory; on success it becomes ``path``, replacing an old tree, crash-safely.

    Files written inside must be complete when the block ends; they are fsynced here before any
    rename. A new ``path`` takes one rename. Replacing one takes two, so the old tree is moved
    aside to ``.NAME.old`` first and deleted only after the new one is in place; a crash between
    the two renames leaves ``path`` missing for a moment, and ``recover_directory`` (run first
    by every ``atomic_directory`` on the same path) puts the old tree back. Readers of ``path``
    therefore see the old tree, the new tree or, after a crash mid-swap, nothing until the next
    writer: never a mixture.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
    old = _aside(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    moved_aside = False
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
            elif child.is_dir():
                fsync_dir(child)
        fsync_dir(tmp)
        if os.path.lexists(path):
            os.replace(path, old)
            moved_aside = True  # from here until the next rename, path is missing: recover_directory's case
        os.replace(tmp, path)
        moved_aside = False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved_aside:  # the new tree could not land: the old one goes back (else the next call puts it back)
            with contextlib.suppress(OSError):
                os.replace(old, path)
        raise
    fsync_dir(path.parent)  # the new tree is durably in place before the old one is deleted
    if old.is_dir():
        _discard(path, old)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
