"""Output directories that must stay apart from the inputs they are made from."""

from __future__ import annotations

import os
from pathlib import Path

from memo_edge.errors import InputError

__all__ = ["check_separate"]

PathLike = str | os.PathLike[str]


def _relation(out: Path, inp: Path) -> str | None:
    """How resolved ``out`` overlaps resolved ``inp``, in words; None when they are apart."""
    if out == inp:
        return "is"
    if out.is_relative_to(inp):
        return "lies inside"
    if inp.is_relative_to(out):
        return "contains"
    return None


def check_separate(out: PathLike, *inputs: PathLike | None, what: str = "output") -> None:
    """Refuse an output directory that is one of ``inputs``, lies inside one, or contains one.

    Writing (or ``--force``-replacing) such an output would overwrite or delete the input it is made
    from. Paths are compared after ``Path.resolve()``, so symlinks and ``..`` cannot hide an overlap;
    ``None`` inputs (an optional directory not given) are skipped. Call it before any work.
    """
    target = Path(out).expanduser().resolve()
    for inp in inputs:
        if inp is None:
            continue
        relation = _relation(target, Path(inp).expanduser().resolve())
        if relation is not None:
            raise InputError(f"{what} directory {out} {relation} the input {inp}; choose an --out apart from it "
                             "(nothing was changed)")
