"""The memo-edge command line: help everywhere, the budget report, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import numpy as np
import pytest

from conftest import invoke, quick_run
from memo_edge.cli import main

FAST = quick_run()


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


@pytest.mark.parametrize("command", [[], *([name] for name in main.commands)])
def test_every_command_has_help(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output
    for param in (main.commands[command[0]].params if command else []):
        if isinstance(param, click.Option):  # every option says what it does
            assert param.help, f"{command[0]} {param.opts} has no help"


def test_budget_reports_603_and_the_aligned_table() -> None:
    result = invoke("budget", "--backbone", "resnet32", "--image-size", "32", "--json")
    report = json.loads(result.output)
    assert report["model_bytes"] == 1_854_016 and report["exemplars_per_model"] == 603
    rows = {r["scenario"]: r for r in report["aligned"]}
    assert (rows["B0Inc10"]["memo_exemplars"], rows["B0Inc10"]["single_backbone_exemplars"]) == (3312, 7431)
    assert (rows["B50Inc10"]["memo_exemplars"], rows["B50Inc10"]["single_backbone_exemplars"]) == (2729, 5017)
    quota = {r["tasks"]: r["exemplars"] for r in report["quota"]["rows"]}
    assert (quota[1], quota[10]) == (7431, 3312)
    text = invoke("budget").output
    assert "1 model = 603 exemplars" in text and "3312" in text


def _npz_dataset(root: Path, classes: int = 4, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    for split in ("train", "test"):
        y = np.repeat(np.arange(classes), per_class)
        x = rng.integers(0, 255, (len(y), 32, 32, 3), dtype=np.uint8)
        np.savez(root / f"{split}-00.npz", x=x, y=y)
    return root


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--dataset", "mnist"], ["mnist", "digits"]),
        (["--backbone", "vgg16"], ["vgg16", "resnet32"]),
        (["--dataset", "cifar100"], ["--data-dir"]),
        (["--scenario", "B20Inc2"], ["B20Inc2"]),
        (["--scenario", "B0Inc1"], ["2"]),
        (["--scenario", "B0Inc3"], ["task"]),  # 3, 3, 3 and a last task of 1 class
        (["--memory", "5"], ["one exemplar per class"]),
        (["--memory", "lots"], ["aligned"]),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    assert_user_error(invoke("train", "--out", tmp_path / "run", *FAST, *args), *fragments)


def test_missing_cifar_dir_without_download(tmp_path: Path) -> None:
    result = invoke("train", "--dataset", "cifar100", "--data-dir", tmp_path / "nothing", "--out", tmp_path / "r", *FAST)
    assert_user_error(result, "--download")


def test_corrupted_npz_is_named(tmp_path: Path) -> None:
    data = _npz_dataset(tmp_path / "data")
    (data / "train-00.npz").write_bytes((data / "train-00.npz").read_bytes()[:500])
    result = invoke("train", "--dataset", f"npz:{data}", "--scenario", "B0Inc2", "--out", tmp_path / "r", *FAST)
    assert_user_error(result, "train-00.npz")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    result = invoke("train", "--scenario", "B0Inc5", "--memory", "20", "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    assert "(2/2)" in result.output and "results:" in result.output
    return out


def test_out_dir_holding_a_run_needs_resume_or_force(finished_run: Path) -> None:
    assert_user_error(invoke("train", "--scenario", "B0Inc2", "--out", finished_run, *FAST), "different run", "--force")
    assert_user_error(invoke("train", "--scenario", "B0Inc5", "--memory", "20", "--out", finished_run, *FAST),
                      "this run", "--resume")


def test_resume_of_a_finished_run_changes_nothing(finished_run: Path) -> None:
    before = (finished_run / "results.json").read_text()
    result = invoke("train", "--resume", finished_run)
    assert result.exit_code == 0, result.output
    assert json.loads((finished_run / "results.json").read_text())["tasks"] == json.loads(before)["tasks"]


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_resume_names_the_missing_or_damaged_checkpoint_file(finished_run: Path, tmp_path: Path, damage: str) -> None:
    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    target = run / "task-01" / "exemplars.npz"
    if damage == "delete":
        target.unlink()
    else:
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    assert_user_error(invoke("train", "--resume", run), "task-01", "exemplars.npz")


def test_resume_of_a_non_run_directory(tmp_path: Path) -> None:
    assert_user_error(invoke("train", "--resume", tmp_path), "config.json")
