"""The npz dataset format on disk: ``train-*.npz`` / ``test-*.npz`` with uint8 ``x`` and integer ``y``,
and a ``meta.json`` (class names, pixel statistics, the files with their sha256). Pickle-free:
arrays are loaded with ``allow_pickle=False``, and every listed file is checked before it is read.
"""

from __future__ import annotations

import json
import logging
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from memo_edge.errors import InputError
from memo_edge.utils.io import sha256_file

__all__ = ["read_meta", "listed_files", "split_files", "verify_listed", "read_parts", "read_npz", "meta_class_names",
           "meta_stats"]

log = logging.getLogger(__name__)
Stats = tuple[float, float, float]


def _stats3(values: Any) -> Stats:
    a, b, c = (float(v) for v in values)
    return (a, b, c)


def read_meta(root: Path, where: str) -> dict[str, Any]:
    file = root / "meta.json"
    if not file.exists():
        return {}
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{where}: meta.json is not readable JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise InputError(f"{where}: meta.json must hold a JSON object")
    return meta


def listed_files(meta: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """meta.json "files": [{"file": name, "sha256": hex, "bytes": n}, ...] keyed by file name."""
    entries = meta.get("files", [])
    valid = isinstance(entries, list) and all(isinstance(e, dict) and isinstance(e.get("file"), str) for e in entries)
    if not valid:
        raise InputError(f'{where}: meta.json "files" must be a list of {{"file": name, "sha256": hex}}')
    return {e["file"]: e for e in entries}


def split_files(root: Path, split: str, listed: dict[str, dict[str, Any]], where: str) -> list[Path]:
    files = sorted(root.glob(f"{split}-*.npz"))
    present = {f.name for f in files}
    for name in sorted(listed):
        if name.startswith(f"{split}-") and name.endswith(".npz") and name not in present:
            raise InputError(f"{where}: {name} is listed in meta.json but missing")
    if not files:
        raise InputError(f"{where}: no {split}-*.npz files")
    return files


def verify_listed(file: Path, entry: dict[str, Any] | None, where: str) -> None:
    """Size first (a cheap, clear message for a truncated copy), then the sha256 from meta.json."""
    if entry is None:
        return
    expected_bytes, found_bytes = entry.get("bytes"), file.stat().st_size
    if isinstance(expected_bytes, int) and found_bytes != expected_bytes:
        raise InputError(f"{where}: {file.name} size mismatch: expected {expected_bytes} bytes, found {found_bytes}")
    expected = entry.get("sha256")
    if isinstance(expected, str):
        found = sha256_file(file)
        if found != expected.lower():
            raise InputError(f"{where}: {file.name} sha256 mismatch: expected {expected}, found {found}")
        log.debug("%s: %s sha256 ok", where, file.name)


def read_parts(
    files: list[Path], listed: dict[str, dict[str, Any]], num_classes: int | None, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Verify, read and check each file on its own, so every error names the file to fix."""
    xs, ys = [], []
    for file in files:
        verify_listed(file, listed.get(file.name), where)
        x, y = read_npz(file, where)
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise InputError(f"{where}: {file.name} has images of shape {x.shape[1:]}, others {xs[0].shape[1:]}")
        bad = (y < 0) | (y >= num_classes) if num_classes is not None else y < 0
        if bad.any():
            limit = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            raise InputError(f"{where}: {file.name}: label {y[bad][0]} out of range {limit}")
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def read_npz(file: Path, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(file, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise InputError(f"{where}: {file.name} is a single array, expected an npz with x and y")
            missing = {"x", "y"} - set(data.files)
            if missing:
                raise InputError(f"{where}: {file.name} lacks key(s) {sorted(missing)}; expected x and y")
            x, y = data["x"], data["y"]
    except InputError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(f"{where}: {file.name} is corrupted or not an npz file ({exc})") from exc
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise InputError(f"{where}: {file.name}: x must be uint8 [N,H,W,3], got {x.dtype} {x.shape}")
    if y.dtype.kind not in "iu" or y.shape != (len(x),):
        raise InputError(f"{where}: {file.name}: y must be {len(x)} integer labels, got {y.dtype} {y.shape}")
    return x, y.astype(np.int64)


def meta_class_names(meta: dict[str, Any], where: str) -> tuple[str, ...] | None:
    for key in ("class_names", "fine_label_names"):
        if key in meta:
            names = meta[key]
            if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
                raise InputError(f"{where}: meta.json '{key}' must be a non-empty list of strings")
            # A repeated name would make two labels print (and update-match) as one class.
            repeated = sorted(name for name, count in Counter(names).items() if count > 1)
            if repeated:
                shown = ", ".join(repr(n) for n in repeated[:10])
                raise InputError(f"{where}: meta.json '{key}' repeats class name(s) {shown}; every class needs its own name")
            return tuple(names)
    return None


def meta_stats(meta: dict[str, Any], where: str) -> tuple[Stats, Stats] | None:
    stats = meta.get("pixel_stats_train")
    if stats is None:
        return None
    try:
        return _stats3(stats["mean"]), _stats3(stats["std"])
    except (TypeError, ValueError, KeyError) as exc:
        raise InputError(f'{where}: meta.json "pixel_stats_train" needs "mean" and "std" of 3 numbers') from exc
