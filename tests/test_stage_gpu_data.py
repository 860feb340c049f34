"""benchmarks/stage_gpu_data.py: a class subset is the same run as ``--classes``; synthetic data is reproducible."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from memo_edge.data.datasets import load_dataset, pixel_stats
from memo_edge.data.scenario import make_class_order
from memo_edge.train.config import TrainConfig
from memo_edge.train.rundir import load_run_data
from memo_edge.train.run import train

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "stage_gpu_data.py"
SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar100"
CLASSES, SEED = 30, 1993


def _load_script():
    spec = importlib.util.spec_from_file_location("stage_gpu_data", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["stage_gpu_data"] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


stage = _load_script()


def _write_source(root: Path, *, stats: bool) -> Path:
    """30 CIFAR-shaped classes (10 train / 4 test images each, shuffled like CIFAR's files): two train
    files and one test file, with CIFAR-100's extra per-image arrays (y_coarse, index)."""
    rng = np.random.default_rng(7)
    root.mkdir(parents=True)
    colour = rng.integers(30, 226, size=(CLASSES, 1, 1, 3))
    files, train_x = [], []
    for split, per_class, parts in (("train", 10, 2), ("test", 4, 1)):
        y = rng.permutation(np.repeat(np.arange(CLASSES), per_class))
        x = np.clip(colour[y] + rng.integers(-30, 31, size=(len(y), 32, 32, 3)), 0, 255).astype(np.uint8)
        train_x += [x] if split == "train" else []
        for i, idx in enumerate(np.array_split(np.arange(len(y)), parts)):
            name = f"{split}-{i:02d}.npz"
            np.savez_compressed(root / name, x=x[idx], y=y[idx], y_coarse=y[idx] // 5, index=idx)
            data = (root / name).read_bytes()
            files.append({"file": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
    meta = {"dataset": "tiny", "fine_label_names": [f"class-{c}" for c in range(CLASSES)], "files": files}
    if stats:  # deliberately not the pixels' own statistics: they must be copied, not recomputed
        meta["pixel_stats_train"] = {"mean": [0.41, 0.42, 0.43], "std": [0.21, 0.22, 0.23]}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def _subset(source: Path, out: Path, classes: int = 20, *extra: str) -> None:
    assert stage.main(["subset", "--source", str(source), "--out", str(out), "--classes", str(classes),
                       "--seed", str(SEED), *extra]) == 0


def _arrays(dataset) -> list[np.ndarray]:
    return [dataset.train.images, dataset.train.labels, dataset.test.images, dataset.test.labels]


def _run_data(spec: str, **kw):
    return load_run_data(TrainConfig(out="unused", dataset=spec, seed=SEED, **kw))


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stage")
    source = _write_source(root / "full", stats=True)
    _subset(source, root / "sub")
    return {"root": root, "full": source, "sub": root / "sub"}


def test_subset_holds_what_classes_20_loads(staged: dict[str, Path]) -> None:
    full, full_order = _run_data(f"npz:{staged['full']}", classes=20)
    sub, sub_order = _run_data(f"npz:{staged['sub']}", shuffle=False)
    assert full_order == sub_order == tuple(range(20))
    for a, b in zip(_arrays(full), _arrays(sub), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert sub.class_names == full.class_names
    assert (sub.mean, sub.std) == (full.mean, full.std) == ((0.41, 0.42, 0.43), (0.21, 0.22, 0.23))

    meta = json.loads((staged["sub"] / "meta.json").read_text())
    order = make_class_order(CLASSES, seed=SEED)[:20]
    assert meta["provenance"]["class_order"] == list(order)
    assert meta["class_names"] == [f"class-{c}" for c in order]
    assert [e["file"] for e in meta["files"]] == ["train-00.npz", "train-01.npz", "test-00.npz"]
    for entry in meta["files"]:  # the checksums the npz loader verifies are those of the files
        data = (staged["sub"] / entry["file"]).read_bytes()
        assert (entry["sha256"], entry["bytes"]) == (hashlib.sha256(data).hexdigest(), len(data))
    # The extra per-image arrays travel with their images (index: position in the source split).
    with np.load(staged["sub"] / "test-00.npz") as data, np.load(staged["full"] / "test-00.npz") as src:
        assert np.array_equal(src["x"][data["index"]], data["x"])
        assert np.array_equal(src["y_coarse"][data["index"]], data["y_coarse"])
        assert np.array_equal(np.asarray(order)[data["y"]], src["y"][data["index"]])


def test_training_the_subset_is_the_classes_20_run(staged: dict[str, Path]) -> None:
    common = dict(scenario="B0Inc10", backbone="resnet8", init_epochs=1, epochs=1, batch_size=32, memory="40",
                  device="cpu", seed=SEED)
    runs = staged["root"] / "runs"
    a = train(TrainConfig(out=str(runs / "full"), dataset=f"npz:{staged['full']}", classes=20, **common))
    b = train(TrainConfig(out=str(runs / "sub"), dataset=f"npz:{staged['sub']}", shuffle=False, **common))
    assert len(a["tasks"]) == len(b["tasks"]) == 2
    for key in ("metrics", "exemplars", "per_class"):
        assert [t[key] for t in a["tasks"]] == [t[key] for t in b["tasks"]]
    for task in ("task-00", "task-01"):
        wa, wb = (load_file(str(runs / r / task / "model.safetensors")) for r in ("full", "sub"))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        with np.load(runs / "full" / task / "exemplars.npz") as ea, np.load(runs / "sub" / task / "exemplars.npz") as eb:
            assert ea.files == eb.files and all(np.array_equal(ea[k], eb[k]) for k in ea.files)


def test_subset_is_idempotent_and_redone_for_another_request(staged: dict[str, Path], capsys) -> None:
    out = staged["root"] / "again"
    _subset(staged["full"], out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    _subset(staged["full"], out)
    assert "up to date" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    (out / "train-01.npz").write_bytes(b"damaged")  # a damaged copy is rebuilt, whole
    _subset(staged["full"], out)
    assert "wrote" in capsys.readouterr().out
    assert np.array_equal(_run_data(f"npz:{out}", shuffle=False)[0].train.labels,
                          _run_data(f"npz:{staged['full']}", classes=20)[0].train.labels)
    _subset(staged["full"], out, 10)  # other classes: another request, not "up to date"
    assert "wrote" in capsys.readouterr().out
    assert load_dataset(f"npz:{out}").num_classes == 10
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".again")]  # no temp or old trees left


def test_subset_without_stored_stats_keeps_those_of_the_whole_source(tmp_path: Path) -> None:
    source = _write_source(tmp_path / "full", stats=False)
    _subset(source, tmp_path / "sub", 20, "--compression", "store")
    full, _ = _run_data(f"npz:{source}", classes=20)
    sub, _ = _run_data(f"npz:{tmp_path / 'sub'}", shuffle=False)
    whole = pixel_stats(load_dataset(f"npz:{source}").train.images)
    assert (sub.mean, sub.std) == (full.mean, full.std) == whole
    assert (sub.mean, sub.std) != pixel_stats(sub.train.images)  # not the subset's own statistics


def test_synthetic_is_deterministic_learnable_and_loads(tmp_path: Path) -> None:
    args = ["--classes", "5", "--train-per-class", "30", "--test-per-class", "6", "--part-size", "64"]
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert stage.main(["synthetic", "--out", str(tmp_path / name), *args, "--seed", seed]) == 0
    files = {name: json.loads((tmp_path / name / "meta.json").read_text())["files"] for name in "abc"}
    assert files["a"] == files["b"] != files["c"]  # same seed, same bytes (sha256 of every file)
    assert [e["file"] for e in files["a"]] == ["train-00.npz", "train-01.npz", "train-02.npz", "test-00.npz"]
    data = load_dataset(f"npz:{tmp_path / 'a'}")
    assert (len(data.train), len(data.test), data.image_shape) == (150, 30, (32, 32, 3))
    assert np.bincount(data.train.labels).tolist() == [30] * 5
    assert (data.mean, data.std) == pixel_stats(data.train.images)
    # Class structure: the nearest training-class mean names most test images.
    x = data.train.images.reshape(150, -1).astype(np.float64)
    means = np.stack([x[data.train.labels == c].mean(0) for c in range(5)])
    test = data.test.images.reshape(30, -1).astype(np.float64)
    predicted = np.argmin(((test[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (predicted == data.test.labels).mean() > 0.8


@pytest.mark.skipif(not (SHARED_CIFAR / "meta.json").is_file(), reason=f"no real CIFAR-100 at {SHARED_CIFAR}")
def test_real_cifar100_subset(tmp_path: Path) -> None:
    out = tmp_path / "cifar100-20"
    _subset(SHARED_CIFAR, out)
    meta = json.loads((out / "meta.json").read_text())
    # The reference protocol's (PyCIL, seed 1993) first 20 CIFAR-100 classes.
    order = [68, 56, 78, 8, 23, 84, 90, 65, 74, 76, 40, 89, 3, 92, 55, 9, 26, 80, 43, 38]
    assert meta["provenance"]["class_order"] == order == list(make_class_order(100, seed=SEED)[:20])
    assert meta["class_names"][:3] == ["road", "palm_tree", "snake"]
    assert (meta["counts"]["train"], meta["counts"]["test"]) == (10_000, 2_000)
    assert set(meta["counts"]["train_per_class"]) == {500} and set(meta["counts"]["test_per_class"]) == {100}
    source = json.loads((SHARED_CIFAR / "meta.json").read_text())
    assert meta["pixel_stats_train"] == source["pixel_stats_train"]
    size = sum(p.stat().st_size for p in out.iterdir())
    assert 30e6 < size < 38e6  # carried to the GPU machine: under its 64 MiB per call
    full, _ = _run_data(f"npz:{SHARED_CIFAR}", classes=20)
    sub, _ = _run_data(f"npz:{out}", shuffle=False)
    assert all(np.array_equal(a, b) for a, b in zip(_arrays(full), _arrays(sub), strict=True))
