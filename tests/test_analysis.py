"""Layer analysis: linear CKA, the stages of a MemoNet, and analyze-layers on a real (tiny) run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from memo_edge.analysis import (
    analyze_layers,
    centered_gram,
    cka_from_grams,
    format_layers,
    linear_cka,
    stage_features,
    stage_kinds,
    stage_names,
)
from memo_edge.analysis.stages import newest_branch, stage_layout
from memo_edge.data.scenario import Scenario, make_class_order
from memo_edge.errors import InputError
from memo_edge.model import MemoNet
from memo_edge.train.augment import TestTransform
from memo_edge.train.checkpoint import load_checkpoint, save_checkpoint

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _random(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d))


def _feature_form(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook formula, written out independently of the module."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


# -- CKA ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, d", [(100, 20), (30, 200)])  # feature form and Gram form
def test_cka_of_a_representation_with_itself_is_one(n: int, d: int) -> None:
    x = _random(n, d, 0)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-6)
    assert linear_cka(x.astype(np.float32), x.astype(np.float32)) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("n, d", [(200, 50), (40, 120)])
def test_cka_is_invariant_to_rotation_scaling_and_shift(n: int, d: int) -> None:
    x, y = _random(n, d, 1), _random(n, 7, 2) + 0.5 * _random(n, d, 1)[:, :7]
    q, _ = np.linalg.qr(_random(d, d, 3))  # orthogonal
    base = linear_cka(x, y)
    assert 0.05 < base < 0.95
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-6)
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-6)
    assert linear_cka(3.7 * x, y) == pytest.approx(base, abs=1e-6)
    assert linear_cka(x, 1e-3 * y) == pytest.approx(base, abs=1e-6)
    assert linear_cka(x + 5.0, y - 2.0) == pytest.approx(base, abs=1e-6)  # features are centred


def test_cka_of_independent_features_is_small_and_symmetric() -> None:
    x, y = _random(500, 50, 4), _random(500, 50, 5)
    value = linear_cka(x, y)
    assert 0.0 <= value < 0.2
    assert linear_cka(y, x) == pytest.approx(value, abs=1e-12)
    wide = _random(60, 300, 6), _random(60, 90, 7)
    assert linear_cka(*wide) == pytest.approx(linear_cka(*reversed(wide)), abs=1e-12)


def test_gram_and_feature_forms_agree() -> None:
    x, y = _random(40, 30, 8), _random(40, 60, 9)  # d2 > n: the Gram form
    y[:, :30] += x
    expected = _feature_form(x, y)
    assert linear_cka(x, y) == pytest.approx(expected, abs=1e-10)
    assert cka_from_grams(centered_gram(x), centered_gram(y)) == pytest.approx(expected, abs=1e-10)
    images = _random(40, 2 * 3 * 4, 10).reshape(40, 2, 3, 4)  # [n, ...] is flattened per sample
    assert linear_cka(images, y) == pytest.approx(_feature_form(images.reshape(40, -1), y), abs=1e-10)


def test_cka_rejects_bad_input_and_is_nan_without_variance() -> None:
    x = _random(10, 4, 11)
    assert math.isnan(linear_cka(np.ones((10, 4)), x))
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(x, _random(9, 4, 12))
    with pytest.raises(ValueError, match="at least 2 samples"):
        linear_cka(x[:1], x[:1])
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        linear_cka(x[:, 0], x[:, 1])
    with pytest.raises(ValueError, match="NaN"):
        linear_cka(np.full((10, 4), np.nan), x)


# -- stages -------------------------------------------------------------------------------------
def test_stage_names_of_cifar_resnet_and_resnet18() -> None:
    small = MemoNet("resnet8")
    small.expand(2)
    assert stage_names(small) == ["stem", "stage1", "stage2", "stage3"]
    assert stage_kinds(small) == {"stem": "trunk", "stage1": "trunk", "stage2": "trunk", "stage3": "branch"}
    cut = MemoNet("resnet8", split=1)
    cut.expand(2)
    assert stage_kinds(cut) == {"stem": "trunk", "stage1": "trunk", "stage2": "branch", "stage3": "branch"}
    big = MemoNet("resnet18")
    big.expand(2)
    assert stage_names(big) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert [stage_kinds(big)[n] for n in stage_names(big)] == ["trunk"] * 4 + ["branch"]


def test_stages_of_the_baseline_networks() -> None:
    der = MemoNet("resnet8", split=0)  # nothing shared: the stem lives in every branch
    der.expand(2)
    der.expand(2)
    assert stage_kinds(der) == {"stem": "branch", "stage1": "branch", "stage2": "branch", "stage3": "branch"}
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    feats = stage_features(der, images, TestTransform((0.5,) * 3, (0.25,) * 3), 1)
    assert [v.shape for v in feats.values()] == [(3, 16384), (3, 16384), (3, 8192), (3, 4096)]
    single = MemoNet("resnet8", grow=False)  # one branch for every task
    single.expand(2)
    single.expand(2)
    assert newest_branch(single) == 0 and newest_branch(der) == 1
    assert stage_names(single) == ["stem", "stage1", "stage2", "stage3"]
    replay = MemoNet("resnet8", split=0, grow=False)  # the replay baseline: one whole backbone
    replay.expand(2)
    replay.expand(2)
    assert newest_branch(replay) == 0 and stage_kinds(replay) == stage_kinds(der)
    with pytest.raises(ValueError, match="branch 1"):
        stage_features(single, images, TestTransform((0.5,) * 3, (0.25,) * 3), 1)
    with pytest.raises(ValueError, match="no branch yet"):
        stage_names(MemoNet("resnet8"))


def test_stage_features_shapes_and_branch_selection() -> None:
    torch.manual_seed(0)
    model = MemoNet("resnet8")
    model.expand(2)
    model.expand(2)
    with torch.no_grad():  # the new branch is a copy of the old one: make them differ
        for p in model.branches[1].parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.train()
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    transform = TestTransform((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    f0 = stage_features(model, images, transform, 0, batch_size=2)
    f1 = stage_features(model, images, transform, 1, batch_size=2)
    assert model.training  # mode restored
    expected = {"stem": 16 * 32 * 32, "stage1": 16 * 32 * 32, "stage2": 32 * 16 * 16, "stage3": 64 * 8 * 8}
    for feats in (f0, f1):
        assert {k: v.shape for k, v in feats.items()} == {k: (5, d) for k, d in expected.items()}
        assert all(v.dtype == np.float32 for v in feats.values())
    for name in ("stem", "stage1", "stage2"):
        np.testing.assert_array_equal(f0[name], f1[name])  # the trunk does not depend on the branch
    assert not np.allclose(f0["stage3"], f1["stage3"])
    model.eval()
    with torch.no_grad():
        shared = model.trunk(transform(torch.from_numpy(images)))
        for branch, feats in ((0, f0), (1, f1)):
            pooled = feats["stage3"].reshape(5, 64, 8, 8).mean(axis=(2, 3))
            np.testing.assert_allclose(pooled, model.branches[branch](shared).numpy(), rtol=1e-4, atol=1e-5)
    capped = stage_features(model, images, transform, 1, max_features=4096)
    assert {k: v.shape[1] for k, v in capped.items()} == {"stem": 16 * 16 * 16, "stage1": 16 * 16 * 16,
                                                          "stage2": 32 * 11 * 11, "stage3": 64 * 8 * 8}
    with pytest.raises(ValueError, match="branch 2"):
        stage_features(model, images, transform, 2)


# -- analyze_layers on a real run ---------------------------------------------------------------
@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 tasks of digits, trunk frozen after task 0 (the one real training run of this module)."""
    from memo_edge.cli import main

    path = tmp_path_factory.mktemp("analysis") / "run"
    result = CliRunner().invoke(main, [
        "train", "--dataset", "digits", "--scenario", "B0Inc4", "--backbone", "resnet8", "--init-epochs", "2",
        "--epochs", "1", "--batch-size", "64", "--memory", "40", "--device", "cpu", "--freeze-base",
        "--out", str(path),
    ])
    assert result.exit_code == 0, result.output
    return path


def _stage(report: dict, name: str) -> dict:
    return next(s for s in report["stages"] if s["name"] == name)


@pytest.mark.slow
def test_analyze_layers_on_a_frozen_trunk_run(frozen_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "layers"
    report = analyze_layers(frozen_run, out)
    on_disk = json.loads((out / "layers.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert on_disk == report
    assert (out / "layers.png").read_bytes()[:8] == PNG_MAGIC
    assert report["schema_version"] == 1 and report["tasks"] == 3
    assert 100 < report["images"]["count"] <= 500  # every digits test image of the 4 first classes
    assert [(t["from_task"], t["to_task"]) for t in report["transitions"]] == [(0, 1), (1, 2)]
    assert all(t["trunk_frozen"] for t in report["transitions"])
    assert [t["branches"] for t in report["transitions"]] == [[0, 1], [1, 2]]  # newest branch of each model
    assert [(s["name"], s["kind"]) for s in report["stages"]] == [
        ("stem", "trunk"), ("stage1", "trunk"), ("stage2", "trunk"), ("stage3", "branch")]
    for stage in report["stages"]:
        assert len(stage["cka"]) == len(stage["movement"]) == 2
        for value in [*stage["cka"], stage["first_last"]["cka"]]:
            assert -1e-6 <= value <= 1 + 1e-6
        assert all(m >= 0 for m in stage["movement"])
        if stage["kind"] == "trunk":  # frozen: the same weights, so the same features
            assert stage["movement"] == [0.0, 0.0] and stage["first_last"]["movement"] == 0.0
            assert stage["cka"] == pytest.approx([1.0, 1.0], abs=1e-6)
            assert stage["first_last"]["cka"] == pytest.approx(1.0, abs=1e-6)
    branch = _stage(report, "stage3")  # the new branch was trained: it moved away from its copy
    assert all(m > 1e-4 for m in branch["movement"]) and branch["first_last"]["movement"] > 1e-4
    assert branch["mean_cka"] == pytest.approx(sum(branch["cka"]) / 2)
    table = format_layers(report)
    assert "stage3" in table and "branch" in table and "frozen in 2/2" in table
    assert len(table.splitlines()) == 2 + len(report["stages"]) + 1


@pytest.mark.slow
def test_analyze_layers_pairs_the_right_weights(frozen_run: Path, tmp_path: Path) -> None:
    """Scale stage1 of task 1's checkpoint by 1.1: only that stage moves, by exactly 0.1 then 0.1/1.1."""
    run = tmp_path / "run"
    shutil.copytree(frozen_run, run)
    ckpt = load_checkpoint(run, 1)
    stage1 = next(s for s in stage_layout(ckpt.model) if s.name == "stage1")
    assert stage1.part == "trunk"
    with torch.no_grad():
        for module in ckpt.model.stage_modules(stage1, 0):
            for p in module.parameters():
                p.mul_(1.1)
    save_checkpoint(run, 1, ckpt.model, ckpt.exemplars, ckpt.state)
    report = analyze_layers(run, tmp_path / "out", images=64)
    assert report["images"]["count"] == 64
    stem, stage1, stage2 = (_stage(report, n) for n in ("stem", "stage1", "stage2"))
    assert stem["movement"] == [0.0, 0.0] and stem["cka"] == pytest.approx([1.0, 1.0], abs=1e-6)
    assert stage1["movement"] == pytest.approx([0.1, 0.1 / 1.1], rel=1e-6)
    assert stage1["first_last"]["movement"] == 0.0  # tasks 0 and 2 still share the trunk
    assert stage2["movement"] == [0.0, 0.0]
    for value in stage1["cka"] + stage2["cka"]:
        assert 0.0 <= value <= 1.0 + 1e-6


@pytest.mark.slow
def test_analyze_layers_needs_two_tasks(frozen_run: Path, tmp_path: Path) -> None:
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(frozen_run / "config.json", one / "config.json")
    shutil.copytree(frozen_run / "task-00", one / "task-00")
    with pytest.raises(InputError, match="needs at least 2 tasks"):
        analyze_layers(one, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_images_come_from_task_0_of_a_run_on_a_class_slice() -> None:
    """A run on the first 6 classes of the order (config "classes"): labels 0..5 are order[0..5]."""
    from memo_edge.data.datasets import load_dataset
    from memo_edge.train.config import TrainConfig
    from memo_edge.train.rundir import run_test_split

    config = TrainConfig(out="unused", dataset="digits", classes=6, seed=1993)
    test = run_test_split(config, Scenario("B0Inc3", tuple(range(6)), (3, 3)), 0)
    digits = load_dataset("digits").test
    first = make_class_order(10, seed=1993)[:3]
    assert len(test) == int(np.isin(digits.labels, first).sum())
    for label, original in enumerate(first):  # label j of the slice is class order[j] of the dataset
        np.testing.assert_array_equal(test.take(np.flatnonzero(test.labels == label)),
                                      digits.take(np.flatnonzero(digits.labels == original)))


def test_analyze_layers_rejects_missing_runs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        analyze_layers(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(InputError, match="config.json"):
        analyze_layers(tmp_path, tmp_path / "out")
    with pytest.raises(InputError, match="unknown device"):
        analyze_layers(tmp_path, tmp_path / "out", device="gpu7")
