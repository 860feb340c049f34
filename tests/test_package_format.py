"""The package format's version: older packages are migrated in memory, newer ones refused by their number."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from conftest import invoke, ok, rewrite_manifest, tree_digest
from memo_edge.data.datasets import load_dataset
from memo_edge.runtime import PackageError, load, open_package
from memo_edge.runtime.catalog import CATALOG
from memo_edge.runtime.formats import FORMAT_VERSION, MIGRATIONS, migrate_manifest

FAST_UPDATE = ["--epochs", "1", "--batch-size", "32", "--device", "cpu"]


def _set_catalog_format(pkg: Path, value: str) -> None:
    conn = sqlite3.connect(pkg / CATALOG)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'format_version'", (value,))
    conn.commit()
    conn.close()


def _catalog_format(pkg: Path) -> str:
    conn = sqlite3.connect(pkg / CATALOG)
    try:
        return conn.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()[0]
    finally:
        conn.close()


def _as_format_1(pkg: Path) -> None:
    """Down-convert a fresh package to what format 1 wrote: fields added during format 1 left out."""

    def old(m: dict) -> None:
        m["format_version"] = 1
        assert m["model"].pop("augment") == "cifar"
        m["input"].pop("resize_to")
        if m["budget"]["codec"] == "raw":
            del m["budget"]["codec"], m["budget"]["codec_header"]

    rewrite_manifest(pkg, old)
    _set_catalog_format(pkg, "1")


@pytest.fixture()
def old_pkg(base: dict[str, Path], tmp_path: Path) -> Path:
    pkg = shutil.copytree(base["pkg"], tmp_path / "pkg")
    _as_format_1(pkg)
    return pkg


def test_the_migration_table_reaches_the_current_format() -> None:
    assert sorted(MIGRATIONS) == list(range(1, FORMAT_VERSION))
    old = {"format_version": 1, "model": {}, "input": {"height": 32}, "budget": {}, "task_classes": [[0, 2], [2, 5]]}
    new = migrate_manifest(old)
    assert new["format_version"] == FORMAT_VERSION and old["format_version"] == 1  # a copy; the input is kept
    assert new["model"] == {"augment": "cifar", "task_sizes": [2, 3], "trunk_frozen": False}
    assert new["input"]["resize_to"] == 32 and new["budget"] == {"codec": "raw", "codec_header": ""}


def test_a_format_1_package_opens_and_predicts_as_it_did(base: dict[str, Path], old_pkg: Path) -> None:
    fresh = open_package(base["pkg"]).manifest
    before = tree_digest(old_pkg)
    migrated = open_package(old_pkg).manifest
    assert migrated == dataclasses.replace(fresh, format_version=FORMAT_VERSION)  # every left-out field restored
    images = load_dataset("digits").test.take(np.arange(16))
    labels, scores = load(old_pkg, backend="ort-cpu").predict(images)
    expected_labels, expected_scores = load(base["pkg"], backend="ort-cpu").predict(images)
    assert np.array_equal(labels, expected_labels) and np.allclose(scores, expected_scores)
    assert "format 2" in ok("info", old_pkg).output
    assert tree_digest(old_pkg) == before  # read in memory: the old package is not rewritten


@pytest.mark.slow
def test_a_format_1_package_can_be_updated_and_rolled_back(base: dict[str, Path], old_pkg: Path) -> None:
    ok("update", old_pkg, "--data", f"npz:{base['task4']}", *FAST_UPDATE)
    assert _catalog_format(old_pkg) == str(FORMAT_VERSION)  # it holds a manifest of the current format now
    assert open_package(old_pkg).manifest.version == 2
    ok("rollback", old_pkg)
    assert open_package(old_pkg).manifest.model.augment == "cifar"  # the format-1 manifest, migrated again


def test_a_newer_package_is_refused_by_its_format(base: dict[str, Path], tmp_path: Path) -> None:
    line = f"this package is format 3; this memo-edge reads up to {FORMAT_VERSION}: upgrade memo-edge"
    pkg = shutil.copytree(base["pkg"], tmp_path / "pkg")
    rewrite_manifest(pkg, lambda m: m.__setitem__("format_version", 3))
    with pytest.raises(PackageError, match=line):  # a manifest of a newer format in a catalog this reads
        open_package(pkg)
    _set_catalog_format(pkg, "3")
    with pytest.raises(PackageError, match=line):
        open_package(pkg)
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 32, 32, 3), np.uint8))
    for args in (("predict", pkg, tmp_path / "x.npz"), ("info", pkg),
                 ("update", pkg, "--data", f"npz:{base['task4']}", *FAST_UPDATE), ("rollback", pkg)):
        result = invoke(*args)
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert result.exit_code == 2 and len(errors) == 1 and line in errors[0], result.output
