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


def test_update_takes_the_options_of_the_one_record() -> None:
    """``update``'s click options are generated from memo_edge.options.UpdateOptions (as POST /update's query)."""
    from memo_edge.options import UpdateOptions, option_specs

    params = {p.name: p for p in main.commands["update"].params}
    for spec in option_specs(UpdateOptions):
        assert (params[spec.name].default, params[spec.name].help) == (spec.default, spec.help), spec.name
    assert_user_error(invoke("update", ".", "--data", "x", "--seed", "-1"), "-1")  # the record's bound, as over HTTP


@pytest.mark.parametrize("command,new,old", [("train", "--train-precision", "--precision"),
                                             ("update", "--train-precision", "--precision"),
                                             ("predict", "--graph-precision", "--precision"),
                                             ("serve", "--graph-precision", "--precision"),
                                             ("export", "--engine-precision", "--fp16")])
def test_each_precision_is_named_for_what_it_sets(command: str, new: str, old: str) -> None:
    text = invoke(command, "--help").output
    assert new in text and f"{old} " not in text  # the old name works, unlisted


def test_a_renamed_option_keeps_its_old_name_with_one_warning() -> None:
    from click.testing import CliRunner

    from memo_edge.utils.click_options import renamed_option

    @click.command()
    @renamed_option("--graph-precision", "precision", old="--precision", type=click.Choice(["auto", "fp32"]),
                    default="auto", help="graph")
    @renamed_option("--engine-precision", old="--fp16", old_value="fp16", type=click.Choice(["fp32", "fp16"]),
                    default="fp32", help="engine")
    def command(precision: str, engine_precision: str) -> None:
        click.echo(f"{precision} {engine_precision}")

    result = CliRunner().invoke(command, ["--precision", "fp32", "--fp16"])
    assert result.exit_code == 0 and result.stdout == "fp32 fp16\n", result.output
    assert result.stderr.splitlines() == ["warning: --precision is deprecated; use --graph-precision fp32",
                                          "warning: --fp16 is deprecated; use --engine-precision fp16"]
    assert CliRunner().invoke(command, ["--graph-precision", "fp32"]).stdout == "fp32 fp32\n"
    both = CliRunner().invoke(command, ["--precision", "fp32", "--graph-precision", "auto"])
    assert both.exit_code == 2 and "give one of them" in both.output


def test_the_error_contract_is_one_table() -> None:
    import errno

    from memo_edge.errors import CODES, BudgetError, InputError, InvalidValue, MemoEdgeError, as_error, code_of
    from memo_edge.runtime.lock import PackageBusyError
    from memo_edge.runtime.manifest import PackageError, ReadOnlyPackageError
    from memo_edge.serve.inputs import RequestError

    declared = {MemoEdgeError: "failed", InputError: "bad_input", InvalidValue: "bad_input", BudgetError: "budget",
                PackageError: "corrupt", ReadOnlyPackageError: "read_only", PackageBusyError: "busy"}
    for cls, code in declared.items():
        assert cls.code == code and code in CODES
        # What the user can fix exits 2 (click's code for bad invocations), a failure 1: as before the codes.
        assert CODES[code].exit_status == (2 if issubclass(cls, InputError) else 1)
    assert issubclass(InvalidValue, ValueError)  # the house style of argument checks, still caught as one
    assert RequestError("too_large", "x").status == 413 and PackageError("x", code="conflict").code == "conflict"
    with pytest.raises(ValueError, match="unknown error code"):
        MemoEdgeError("x", code="oops")
    assert as_error(ModuleNotFoundError("no torch", name="torch"), "update").code == "missing_extra"
    assert code_of(OSError(errno.EROFS, "Read-only file system", "/pkg")) == "read_only"
    assert code_of(OSError(errno.ENOSPC, "No space left on device")) == "no_space"
    assert code_of(RuntimeError("a bug")) == "internal" and as_error(KeyError("x")) is None
