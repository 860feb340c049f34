"""Atomic directory replacement: a writer killed at any point leaves the old tree or the new one, whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from memo_edge.utils.io import atomic_directory, recover_directory

# The child replaces DIR (holding the "old" tree) by the "new" tree, and SIGKILLs itself on the Nth
# call of os.FUNC, before that call runs: the crash points are the renames and deletions themselves.
CHILD = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from test_io import write_tree
from memo_edge.utils.io import atomic_directory

path, func, nth = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
real, calls = getattr(os, func), 0

def hook(*args, **kwargs):
    global calls
    calls += 1
    if calls == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

setattr(os, func, hook)
with atomic_directory(path) as tmp:
    write_tree(tmp, b"new")
sys.exit(3)  # never reached when the kill point is hit
"""


def write_tree(root: Path, tag: bytes) -> None:
    (root / "sub").mkdir()
    (root / "a.txt").write_bytes(tag)
    (root / "sub" / "b.bin").write_bytes(tag * 1000)
    (root / "sub" / "c").write_bytes(tag + b"!")


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def tree(tag: bytes) -> dict[str, bytes]:
    return {"a.txt": tag, "sub/b.bin": tag * 1000, "sub/c": tag + b"!"}


def _leftovers(parent: Path) -> set[str]:
    """Names beside the path other than a killed writer's temp directory (left alone on purpose)."""
    return {p.name for p in parent.iterdir() if not p.name.endswith(".tmp")}


@pytest.mark.parametrize(
    "func,nth,after_kill,expected",
    [
        ("replace", 1, "old at the path", b"old"),  # before the first rename (old -> .NAME.old)
        ("replace", 2, "path missing, old aside", b"old"),  # between the two renames
        ("replace", 3, "new at the path, old aside", b"new"),  # after both, before the old tree is deleted
        ("unlink", 2, "new at the path, old half deleted", b"new"),  # while the old tree is deleted
    ],
)
def test_a_writer_killed_at_each_point_leaves_one_whole_tree(tmp_path: Path, func: str, nth: int, after_kill: str,
                                                             expected: bytes) -> None:
    path = tmp_path / "d"
    with atomic_directory(path) as tmp:
        write_tree(tmp, b"old")
    child = subprocess.run([sys.executable, "-c", CHILD, str(path), func, str(nth), str(Path(__file__).parent)],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr

    # The kill landed where it was meant to (else the test proves nothing).
    old_aside, trash = tmp_path / ".d.old", [p for p in tmp_path.iterdir() if p.name.endswith(".trash")]
    state = {
        "old at the path": path.is_dir() and read_tree(path) == tree(b"old") and not old_aside.exists(),
        "path missing, old aside": not path.exists() and read_tree(old_aside) == tree(b"old"),
        "new at the path, old aside": read_tree(path) == tree(b"new") and read_tree(old_aside) == tree(b"old"),
        "new at the path, old half deleted": read_tree(path) == tree(b"new") and not old_aside.exists()
        and len(trash) == 1 and 0 < len(read_tree(trash[0])) < 3,
    }
    assert state[after_kill], (after_kill, sorted(os.listdir(tmp_path)))

    # The next writer repairs first, even when it then fails itself.
    with pytest.raises(RuntimeError), atomic_directory(path) as tmp:
        write_tree(tmp, b"failed")
        raise RuntimeError("this writer fails")
    assert read_tree(path) == tree(expected)
    assert _leftovers(tmp_path) == {"d"}

    with atomic_directory(path) as tmp:
        write_tree(tmp, b"v3")
    assert read_tree(path) == tree(b"v3") and _leftovers(tmp_path) == {"d"}


def test_recover_directory_alone_puts_the_old_tree_back(tmp_path: Path) -> None:
    path = tmp_path / "d"
    (tmp_path / ".d.old").mkdir()
    write_tree(tmp_path / ".d.old", b"old")
    recover_directory(path)
    assert read_tree(path) == tree(b"old") and _leftovers(tmp_path) == {"d"}
    recover_directory(path)  # nothing left to do
    assert read_tree(path) == tree(b"old")


def test_a_failed_second_rename_puts_the_old_tree_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d"
    with atomic_directory(path) as tmp:
        write_tree(tmp, b"old")
    real, calls = os.replace, []

    def replace(src: object, dst: object) -> None:
        calls.append((src, dst))
        if len(calls) == 2:  # the new tree onto the path
            raise OSError("disk trouble")
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk trouble"), atomic_directory(path) as tmp:
        write_tree(tmp, b"new")
    monkeypatch.undo()
    assert read_tree(path) == tree(b"old") and {p.name for p in tmp_path.iterdir()} == {"d"}


def test_names_that_share_a_prefix_are_not_touched(tmp_path: Path) -> None:
    (tmp_path / ".d.x.12345678.trash").mkdir()  # trash of "d.x", not of "d"
    (tmp_path / ".d.oldish").mkdir()
    with atomic_directory(tmp_path / "d") as tmp:
        write_tree(tmp, b"new")
    assert {p.name for p in tmp_path.iterdir()} == {"d", ".d.x.12345678.trash", ".d.oldish"}
