"""One writer at a time per package: an advisory lock on ``<package>/writer.lock``.

``update``, ``rollback`` and ``export --force`` over a package take it before any work; a second
writer is refused at once, with a line naming the holder. The lock is ``flock(2)``: the kernel drops it when its process ends, however
it ends, so a lock left by a killed process never blocks. The file only says who holds the lock;
its presence means nothing (a killed writer leaves it; the next writer removes it when it ends).
Readers never take it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from memo_edge.runtime.package import PackageError, ReadOnlyPackageError, open_package

__all__ = ["LOCK_FILE", "PackageBusyError", "writer_lock", "lock_holder"]

LOCK_FILE = "writer.lock"


class PackageBusyError(PackageError):
    """Another process is writing the package."""

    code = "busy"


def lock_holder(root: Path) -> str:
    """Who holds (or last held) the lock, as words: pid, command, since when."""
    try:
        info = json.loads((Path(root) / LOCK_FILE).read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    return f"pid {info['pid']} on {info.get('host', '?')} ({info.get('command', '?')}, since {info.get('since', '?')})"


@contextlib.contextmanager
def writer_lock(root: Path, command: str, *, check_package: bool = True) -> Iterator[None]:
    """Hold ``root``'s writer lock for the block; refuse at once if another process holds it.

    ``check_package=False``: lock without reading the package first (``export --force`` replaces a
    package whole, a damaged one too).
    """
    root = Path(root)
    if check_package:
        open_package(root, verify=False)  # a package at all, before a lock file appears in a stray directory
    fd = _acquire(root, command)
    try:
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": since})
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode() + b"\n", 0)
        yield
    finally:
        # Removed while still locked, so a package at rest holds no lock file; a contender that
        # opened this file meanwhile sees it is no longer the one at the path and tries again.
        with contextlib.suppress(OSError):
            os.unlink(root / LOCK_FILE)
        os.close(fd)  # releases the lock


def _acquire(root: Path, command: str) -> int:
    path = root / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise ReadOnlyPackageError(f"{root} is read-only ({exc.strerror}); {command} changes the package: "
                                           "copy it to writable storage first") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PackageBusyError(f"{root} is being changed by {lock_holder(root)}; wait for it to finish "
                                   f"(one writer at a time), then run {command} again") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder removed this file as we locked it: lock the new one
