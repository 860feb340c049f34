"""The paper's comparison: methods, memory-aligned exemplar counts, AUC, and a tiny compare run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from memo_edge.cli import main
from memo_edge.data.datasets import load_dataset
from memo_edge.experiments.compare import auc, budget_bytes, choose_backbone, method_exemplars
from memo_edge.model.methods import METHODS, aligned_exemplars, method_model_bytes
from memo_edge.memory.alignment import exemplar_bytes
from memo_edge.model import MemoNet, split_parameter_counts


@pytest.mark.parametrize(
    "tasks,expected",
    [(10, {"memo": 3312, "replay": 7431, "der": 2000}),  # CIFAR-100 B0Inc10
     (6, {"memo": 2729, "replay": 5017, "der": 2000})],  # CIFAR-100 B50Inc10
)
def test_aligned_counts_equal_the_reference_table(tasks: int, expected: dict[str, int]) -> None:
    total = budget_bytes("aligned", "resnet32", tasks, 3072)
    for name, count in expected.items():
        assert method_exemplars(name, "resnet32", tasks, total, 3072, 100) == count
        assert aligned_exemplars(METHODS[name], "resnet32", tasks, 3072) == count


def test_methods_are_memonet_settings() -> None:
    assert split_parameter_counts("resnet32", split=0) == (0, 463_504)  # DER/replay: the whole backbone per branch
    der, replay = MemoNet("resnet8", split=0), MemoNet("resnet8", split=0, grow=False)
    for net in (der, replay):
        net.expand(2)
        net.expand(2)
    assert (der.num_branches, replay.num_branches) == (2, 1)
    assert replay.aux_fc is None and der.aux_fc is not None
    assert replay(torch.zeros(1, 3, 32, 32)).logits.shape == der(torch.zeros(1, 3, 32, 32)).logits.shape == (1, 4)
    assert method_model_bytes(METHODS["der"], "resnet32", 10) == 10 * 1_854_016
    assert method_model_bytes(METHODS["replay"], "resnet32", 10) == 1_854_016
    assert method_model_bytes(METHODS["memo"], "resnet32", 10) == 14_507_584


def test_auc_of_a_known_piecewise_linear_curve() -> None:
    # (MiB, accuracy %): trapezoids 2 * (0.5 + 0.7) / 2 + 4 * (0.7 + 0.8) / 2 = 1.2 + 3.0
    assert auc([2, 4, 8], [50, 70, 80]) == pytest.approx(4.2)
    assert auc([8, 2, 4], [80, 50, 70]) == pytest.approx(4.2)  # order of the points does not matter
    with pytest.raises(ValueError):
        auc([1], [50])


def test_small_budgets_get_smaller_backbones() -> None:
    mib = 2**20
    # The largest backbone whose final model leaves 5 exemplars per class (CIFAR-100 B0Inc10).
    assert choose_backbone("memo", int(23.5 * mib), 10, 100, 3072) == "resnet32"
    assert choose_backbone("memo", int(7.6 * mib), 10, 100, 3072) == "resnet14"
    assert choose_backbone("der", int(12.4 * mib), 10, 100, 3072) == "resnet20"
    assert choose_backbone("der", int(7.6 * mib), 10, 100, 3072) is None  # 10 x ResNet-14 = 6.56 MiB


@pytest.mark.slow
def test_a_tiny_compare_run_writes_the_table_and_the_plot(tmp_path: Path) -> None:
    args = ["compare", "--dataset", "digits", "--scenario", "B0Inc4", "--backbone", "resnet8", "--init-epochs", "1",
            "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--methods", "memo,replay", "--out", tmp_path]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "comparison.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["memo", "replay"]
    assert rows[0]["model_bytes"] > rows[1]["model_bytes"] and rows[0]["memory"] < rows[1]["memory"]
    assert (tmp_path / "comparison.csv").read_text().count("\n") == 3
    assert (tmp_path / "comparison.md").read_text().startswith("| method |")
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    # the same command again continues (reuses) the finished runs instead of refusing them
    again = CliRunner().invoke(main, [str(a) for a in args])
    assert again.exit_code == 0 and json.loads((tmp_path / "comparison.json").read_text())["rows"] == rows


@pytest.mark.slow
def test_compare_with_a_split_keeps_every_method_within_the_budget(tmp_path: Path) -> None:
    # --split 1: MEMO's branches take stages 2 and 3, so its model is bigger than at the default cut and
    # leaves fewer exemplars; sizing them at the default cut would train over the stated budget.
    args = ["compare", "--dataset", "digits", "--classes", "4", "--scenario", "B0Inc2", "--backbone", "resnet8",
            "--split", "1", "--init-epochs", "1", "--epochs", "1", "--batch-size", "64", "--device", "cpu",
            "--methods", "memo,der", "--memory", "1", "--out", tmp_path]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    img = exemplar_bytes(load_dataset("digits").image_shape)
    rows = json.loads((tmp_path / "comparison.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["memo", "der"]
    for r in rows:
        assert r["model_bytes"] + r["memory"] * img <= r["budget_bytes"] == 2**20, r
        assert r["budget_bytes"] - r["model_bytes"] - r["memory"] * img < img, r  # and no exemplar slot wasted
    # B0Inc2 on 4 classes: 2 tasks; the trained model is the one the exemplars were sized for
    assert rows[0]["model_bytes"] == method_model_bytes(METHODS["memo"], "resnet8", 2, split=1)
    assert rows[0]["model_bytes"] > method_model_bytes(METHODS["memo"], "resnet8", 2)  # the split was honoured


def test_compare_refuses_a_split_the_backbone_lacks(tmp_path: Path) -> None:
    args = ["compare", "--dataset", "digits", "--scenario", "B0Inc4", "--backbone", "resnet8", "--split", "3",
            "--device", "cpu", "--methods", "memo", "--out", tmp_path]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2 and "split must be" in result.output, result.output


@pytest.mark.slow
def test_a_tiny_curve_run_reports_auc(tmp_path: Path) -> None:
    args = ["curve", "--dataset", "digits", "--scenario", "B0Inc5", "--init-epochs", "1", "--epochs", "1",
            "--batch-size", "64", "--device", "cpu", "--methods", "memo,replay", "--budgets", "1.5,3.0", "--out", tmp_path]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "curve.json").read_text())
    for method in ("memo", "replay"):
        points = report["points"][method]
        assert [p["mib"] for p in points] == [1.5, 3.0]
        assert all(p["budget_bytes"] == int(p["mib"] * 2**20) and p["model_bytes"] <= p["budget_bytes"] for p in points)
        expected = auc([p["mib"] for p in points], [p["average_accuracy"] for p in points])
        assert report["auc"][method]["auc_a"] == pytest.approx(expected)
    # smaller budgets get smaller backbones; MEMO's growing model needs a smaller one than replay's
    assert [p["backbone"] for p in report["points"]["memo"]] == ["resnet14", "resnet26"]
    assert [p["backbone"] for p in report["points"]["replay"]] == ["resnet20", "resnet32"]
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG" and "AUC-A" in (tmp_path / "curve.md").read_text()
