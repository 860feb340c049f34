"""End-to-end runs through the CLI: built-in digits, and a 10-class slice of the real CIFAR-100."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from memo_edge.cli import main

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar100"


def run_cli(*args: object) -> dict:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    out = Path(str(args[args.index("--out") + 1]))
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_digits_run_learns_well_above_chance(digits_run: Path) -> None:
    results = json.loads((digits_run / "results.json").read_text())  # the session's 10-digit run (conftest.py)
    summary = results["summary"]
    # 10 classes: chance is 10%.
    assert summary["last_accuracy"] > 60.0, summary
    assert summary["average_incremental_accuracy"] > 75.0, summary
    assert summary["nme_last_accuracy"] > 60.0, summary
    assert [t["metrics"]["seen_classes"] for t in results["tasks"]] == [2, 4, 6, 8, 10]
    assert len(summary["accuracy_matrix"][-1]) == 5


def _cifar_slice(root: Path, classes: list[int], train_per_class: int, test_per_class: int) -> Path:
    """An npz dataset of a few CIFAR-100 classes, with meta.json and sha256 like the full copy."""
    meta = json.loads((SHARED_CIFAR / "meta.json").read_text())
    root.mkdir()
    files = []
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        parts = [np.load(p) for p in sorted(SHARED_CIFAR.glob(f"{split}-*.npz"))]
        x = np.concatenate([p["x"] for p in parts])
        y = np.concatenate([p["y"] for p in parts])
        keep = np.concatenate([np.flatnonzero(y == c)[:count] for c in classes])
        new_y = np.searchsorted(classes, y[keep])
        path = root / f"{split}-00.npz"
        np.savez(path, x=x[keep], y=new_y)
        files.append({"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    names = [meta["fine_label_names"][c] for c in classes]
    (root / "meta.json").write_text(json.dumps({"class_names": names, "files": files}))
    return root


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason="needs ../shared/datasets/cifar100")
def test_cifar100_slice_run(tmp_path: Path) -> None:
    classes = sorted([68, 56, 78, 8, 23, 84, 90, 65, 74, 76])  # the first ten of the reference order
    data = _cifar_slice(tmp_path / "c10", classes, train_per_class=150, test_per_class=50)
    results = run_cli("train", "--dataset", f"npz:{data}", "--scenario", "B0Inc5", "--backbone", "resnet8",
                      "--init-epochs", "6", "--epochs", "4", "--batch-size", "64", "--schedule", "cosine",
                      "--memory", "100", "--device", "cpu", "--out", tmp_path / "run")
    assert results["scenario"]["task_sizes"] == [5, 5]
    assert set(results["class_names"]) == {json.loads((data / "meta.json").read_text())["class_names"][i] for i in range(10)}
    # Chance on 10 classes is 10%; a few epochs of a tiny network on 1,500 images gets well past it.
    assert results["summary"]["last_accuracy"] > 20.0, results["summary"]
    assert results["tasks"][-1]["exemplars"] == 100
