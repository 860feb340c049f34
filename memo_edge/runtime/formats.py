"""The package format: its version, and how a manifest of an older format is read.

A package's catalog records the format it was written in (``meta.format_version``), and so does each
manifest. A reader accepts every format up to ``FORMAT_VERSION``: an older manifest is migrated in
memory, step by step, by the functions of ``MIGRATIONS``; the file is never rewritten (a package on
read-only media opens as it is). A newer format is refused by its number. A writer commits manifests
of the current format and raises the catalog's number with them.

The catalog's SQLite schema is the same in formats 1 and 2. Torch-free.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from memo_edge.data.sources import DEFAULT_AUGMENT, eval_resize

__all__ = ["FORMAT_VERSION", "MIGRATIONS", "DEFAULT_AUGMENT", "format_number", "format_problem", "migrate_manifest"]

FORMAT_VERSION = 2

Step = Callable[[dict[str, Any]], None]  # edits a manifest's JSON in place


def _augment(data: dict[str, Any]) -> None:
    data["model"].setdefault("augment", DEFAULT_AUGMENT)


def _resize_to(data: dict[str, Any]) -> None:
    # Before resize_to was recorded, the runtime applied the augmentation's rule (after _augment).
    inp = data["input"]
    inp.setdefault("resize_to", eval_resize(inp["height"], data["model"]["augment"]))


def _raw_codec(data: dict[str, Any]) -> None:
    # Format 1 left the codec out of a raw package's budget: raw rows, no tables to check.
    data["budget"].setdefault("codec", "raw")
    data["budget"].setdefault("codec_header", "")


def _task_sizes(data: dict[str, Any]) -> None:
    data["model"].setdefault("task_sizes", [int(end) - int(first) for first, end in data["task_classes"]])
    data["model"].setdefault("trunk_frozen", False)


# MIGRATIONS[n]: the steps that turn a format-n manifest into format n + 1, in order. Format 1 added
# the augmentation, resize_to and the exemplar codec over time, each optional in what it had written.
MIGRATIONS: dict[int, tuple[Step, ...]] = {
    1: (_augment, _resize_to, _raw_codec, _task_sizes),
}


def format_number(found: object) -> int | None:
    """The format a catalog (text) or manifest (a number) says it is in; None if it says no number."""
    text = str(found)
    return int(text) if isinstance(found, (int, str)) and text.isascii() and text.isdigit() else None


def format_problem(found: object) -> str | None:
    """Why a catalog or manifest that says it is in format ``found`` cannot be read; None if it can."""
    number = format_number(found)
    if number is not None and number > FORMAT_VERSION:
        return f"this package is format {number}; this memo-edge reads up to {FORMAT_VERSION}: upgrade memo-edge"
    if number is None or number < 1:
        return f"package format {found!r}, expected 1 to {FORMAT_VERSION}"
    return None


def migrate_manifest(data: dict[str, Any]) -> dict[str, Any]:
    """A readable manifest's JSON (``format_problem`` found none) in the current format: a migrated copy."""
    number = int(data["format_version"])
    if number == FORMAT_VERSION:
        return data
    data = copy.deepcopy(data)
    for n in range(number, FORMAT_VERSION):
        for step in MIGRATIONS[n]:
            step(data)
        data["format_version"] = n + 1
    return data
