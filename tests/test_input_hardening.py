"""Issue 9, hardening: outputs apart from their inputs, duplicate class names, garbage pixels, no
half-made run directories, and clearer train/predict/update messages. Every refusal changes nothing."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import invoke, quick_run
from memo_edge.cli import _print_task
from memo_edge.data.datasets import load_dataset
from memo_edge.data.sources import ArraySource, FolderSource, warn_resized
from memo_edge.errors import InputError
from memo_edge.utils.paths import check_separate

FAST = quick_run()


def assert_refused(result, *fragments: object) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    for fragment in fragments:
        assert str(fragment) in result.output, result.output


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (links not followed) with its content hash: 'nothing changed' checks."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                entries[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                entries[rel] = "dir"
            else:
                entries[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


def npz_data(root: Path, names: list[str] | None = None, classes: int = 4, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for split in ("train", "test"):
        y = np.repeat(np.arange(classes), per_class)
        np.savez(root / f"{split}-00.npz", x=rng.integers(0, 255, (len(y), 32, 32, 3), dtype=np.uint8), y=y)
    if names is not None:
        (root / "meta.json").write_text(json.dumps({"class_names": names}))
    return root


def png(path: Path, size: tuple[int, int] = (8, 8), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 tasks of digits on resnet8, one epoch each: a finished run to export and analyse."""
    out = tmp_path_factory.mktemp("hardening") / "run"
    result = invoke("train", "--scenario", "B0Inc5", "--memory", "20", "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def package(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pkg") / "pkg"
    result = invoke("export", run, "--out", out, "--verify-images", "16")
    assert result.exit_code == 0, result.output
    return out


# --- 1: an output never overlaps its input --------------------------------------------------------


def test_check_separate_resolves_and_names_both_paths(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "link").symlink_to(data)
    for out, relation in [(data, "is"), (data / "run", "lies inside"), (tmp_path, "contains"),
                          (tmp_path / "link", "is"), (data / ".." / "data" / "x", "lies inside")]:
        with pytest.raises(InputError, match="nothing was changed") as err:
            check_separate(out, None, data, what="run")
        assert f"run directory {out} {relation} the input {data}" in str(err.value)
    check_separate(tmp_path / "out", data, None, tmp_path / "other")  # siblings are fine
    check_separate(tmp_path / "data2", data)  # a shared name prefix is not containment


@pytest.mark.parametrize("where", ["same", "inside", "contains", "symlink"])
def test_export_never_writes_over_or_around_its_run(run: Path, tmp_path: Path, where: str) -> None:
    (tmp_path / "link").symlink_to(run)
    out = {"same": run, "inside": run / "pkg", "contains": run.parent, "symlink": tmp_path / "link"}[where]
    before = tree(run.parent), tree(tmp_path)
    assert_refused(invoke("export", run, "--out", out, "--force"), f"package directory {out}", f"the input {run}")
    assert (tree(run.parent), tree(tmp_path)) == before


def test_export_run_api_refuses_its_own_run_directory(run: Path) -> None:
    from memo_edge.export.exporter import ExportConfig, export_run

    before = tree(run)
    with pytest.raises(InputError, match="is the input"):
        export_run(ExportConfig(run, run, force=True))
    assert tree(run) == before


def _data_dirs(root: Path) -> dict[str, Path]:
    data = npz_data(root / "npz")
    for cls in ("a", "b"):
        for split in ("train", "val"):
            png(root / "folders" / split / cls / "0.png")
    return {"npz": data, "folders": root / "folders"}


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--dataset", "npz:{npz}", "--out", "{npz}", "--force"],
        ["train", "--dataset", "npz:{npz}", "--out", "{npz}/run"],
        ["train", "--dataset", "imagefolder:{folders}", "--out", "{folders}/train/run"],
        ["train", "--dataset", "cifar100", "--data-dir", "{npz}", "--out", "{root}"],
        ["compare", "--dataset", "npz:{npz}", "--out", "{npz}"],
        ["curve", "--dataset", "npz:{npz}", "--out", "{npz}/curve"],
    ],
    ids=["train-same", "train-inside", "train-imagefolder", "train-data-dir", "compare", "curve"],
)
def test_runs_never_write_into_or_around_their_data(tmp_path: Path, command: list[str]) -> None:
    dirs = {**_data_dirs(tmp_path), "root": tmp_path}
    args = [part.format(**dirs) for part in command]
    data = dirs["folders"] if "imagefolder" in args[2] else dirs["npz"]
    before = tree(tmp_path)
    assert_refused(invoke(*args, *FAST), f"directory {args[args.index('--out') + 1]}", f"the input {data}")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("inside", [False, True])
def test_analyze_layers_never_writes_into_its_run(run: Path, inside: bool) -> None:
    out = run / "layers" if inside else run
    before = tree(run)
    assert_refused(invoke("analyze-layers", run, "--out", out), f"layer analysis directory {out}", f"the input {run}")
    assert tree(run) == before


# --- 3: duplicate class names ---------------------------------------------------------------------


def test_duplicate_class_names_are_refused_before_training(tmp_path: Path) -> None:
    data = npz_data(tmp_path / "data", names=["cat", "dog", "cat", "emu"])
    with pytest.raises(InputError, match=r"repeats class name\(s\) 'cat'"):
        load_dataset(f"npz:{data}")
    before = tree(tmp_path)
    assert_refused(invoke("train", "--dataset", f"npz:{data}", "--scenario", "B0Inc2", "--out", tmp_path / "run", *FAST),
                   "repeats class name(s) 'cat'")
    assert tree(tmp_path) == before


def test_update_refuses_duplicate_class_names(package: Path, tmp_path: Path) -> None:
    data = npz_data(tmp_path / "new", names=["x", "x"], classes=2)
    before = tree(package)
    assert_refused(invoke("update", package, "--data", f"npz:{data}", "--epochs", "1", "--device", "cpu"),
                   "repeats class name(s) 'x'")
    assert tree(package) == before


# --- 4: garbage pixels ----------------------------------------------------------------------------


def test_float_pixels_must_be_finite_and_in_0_1(package: Path) -> None:
    from memo_edge.runtime import load

    rt = load(package, backend="ort-cpu")
    images = load_dataset("digits").test.take(np.arange(3))
    floats = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    np.testing.assert_array_equal(rt.predict(floats)[1], rt.predict(images)[1])  # the documented form still works
    bad = floats.copy()
    bad[1, 2, 3, 4], bad[2, 0, 0, 0] = np.nan, np.inf
    with pytest.raises(InputError, match="2 value.s. are NaN or infinite, first at image 1, channel 2, row 3, column 4"):
        rt.predict(bad)
    with pytest.raises(InputError, match=r"value.s. lie outside \(min 0, max 2\d\d\), first at image 0"):
        rt.predict(floats * 255.0)  # 0..255 data where 0..1 is documented
    bad = floats.copy()
    bad[2, 1, 0, 5] = -0.5
    with pytest.raises(InputError, match="1 value.s. lie outside .*first at image 2, channel 1, row 0, column 5"):
        rt.predict(bad)


@pytest.mark.parametrize("garbage", ["nan", "0..255"])
def test_predict_cli_refuses_garbage_float_npz(package: Path, tmp_path: Path, garbage: str) -> None:
    x = load_dataset("digits").test.take(np.arange(2)).transpose(0, 3, 1, 2).astype(np.float32)
    if garbage == "nan":
        x = x / 255.0
        x[0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "batch.npz", x=x)
    before = tree(tmp_path), tree(package)
    result = invoke("predict", package, tmp_path / "batch.npz")
    assert_refused(result, "NaN or infinite" if garbage == "nan" else "must be in [0, 1]", "first at image 0")
    assert (tree(tmp_path), tree(package)) == before


# --- 7: a refused train leaves nothing behind -----------------------------------------------------


def _folders_with_a_truncated_png(root: Path) -> Path:
    for split, count in (("train", 4), ("val", 2)):
        for cls in ("a", "b"):
            for i in range(count):
                png(root / split / cls / f"{i}.png", seed=i)
    broken = root / "train" / "b" / "1.png"
    broken.write_bytes(broken.read_bytes()[:60])
    return broken


@pytest.mark.parametrize("out_dir", ["new", "nested", "existing"])
def test_train_on_a_truncated_png_names_it_and_leaves_no_out_dir(tmp_path: Path, out_dir: str) -> None:
    broken = _folders_with_a_truncated_png(tmp_path / "data")
    out = {"new": tmp_path / "run", "nested": tmp_path / "a" / "b" / "run", "existing": tmp_path / "empty"}[out_dir]
    if out_dir == "existing":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    result = invoke("train", "--dataset", f"imagefolder:{tmp_path / 'data'}", "--image-size", "8", "--scenario",
                    "B0Inc2", "--out", out, *FAST)
    assert_refused(result, broken, "cannot read image")
    if out_dir == "existing":  # a directory that was there before keeps what it held
        assert (out / "keep.txt").read_text() == "mine"
    else:
        assert not out.exists() and not (tmp_path / "a").exists()


def test_interrupted_train_removes_only_a_run_without_a_finished_task(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import memo_edge.train.run as run_module
    from memo_edge.train.config import TrainConfig

    real = run_module._run_task

    def interrupted_at(task: int):
        def fake(setup, t, *args):
            if t == task:
                raise KeyboardInterrupt
            return real(setup, t, *args)
        return fake

    config = TrainConfig(out=str(tmp_path / "run"), scenario="B0Inc5", memory="20", backbone="resnet8",
                         init_epochs=1, epochs=1, batch_size=64, device="cpu")
    monkeypatch.setattr(run_module, "_run_task", interrupted_at(0))
    with pytest.raises(KeyboardInterrupt):
        run_module.train(config)
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(run_module, "_run_task", interrupted_at(1))
    with pytest.raises(KeyboardInterrupt):
        run_module.train(config)
    assert (tmp_path / "run" / "task-00").is_dir()  # a finished task is kept


# --- 9: messages ----------------------------------------------------------------------------------


def _record(exemplars: int, per_class: int, seen: int, codec: str = "raw") -> SimpleNamespace:
    return SimpleNamespace(task=0, metrics={"seen_classes": seen, "top1": 90.0, "nme_top1": 91.0},
                           exemplars=exemplars, per_class=per_class, exemplar_bytes=1_101_004, model_bytes=2**20,
                           wall_time_s=3.0, codec=codec, class_bytes=per_class * 3072)


def test_task_line_shows_what_is_stored_beside_the_quota(capsys: pytest.CaptureFixture[str]) -> None:
    _print_task(_record(360, 1000, 2), 1)  # --memory 2000 on 2 classes of 180 images
    assert "exemplars 360 (180/class stored, quota 1000/class, 1.05 MiB)" in capsys.readouterr().out
    _print_task(_record(361, 1000, 2), 1)
    assert "exemplars 361 (avg 180.5/class stored, quota 1000/class, 1.05 MiB)" in capsys.readouterr().out
    _print_task(_record(40, 20, 2), 1)  # every class filled its quota: as before
    assert "exemplars 40 (20/class, 1.05 MiB)" in capsys.readouterr().out
    _print_task(_record(301, 20, 2, "jpeg:75"), 1)  # a byte share per class: the counts vary with the images
    assert "exemplars 301 (avg 150.5/class in 61,440 B each, jpeg:75, 1.05 MiB)" in capsys.readouterr().out


def test_predict_on_a_directory_without_images_says_so(package: Path, tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    png(tmp_path / "one.png", (32, 32))
    result = invoke("predict", package, tmp_path / "one.png", tmp_path / "empty")
    assert_refused(result, f"{tmp_path / 'empty'}: no images found", ".png", ".jpg")  # and no line for one.png


def test_verbose_logs_memo_edge_debug_but_not_third_party(package: Path, tmp_path: Path) -> None:
    image = png(tmp_path / "one.png", (32, 32))
    code = ("import sys, logging; from memo_edge.cli import main\n"
            "try:\n    main(sys.argv[1:])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "logging.getLogger('memo_edge.x').debug('own debug line')\n"
            "logging.getLogger('PIL.x').debug('third-party debug line')\n")
    for verbose in (True, False):
        args = [sys.executable, "-c", code, *(["-v"] if verbose else []), "predict", str(package), str(image)]
        proc = subprocess.run(args, capture_output=True, text=True, check=True)
        assert "package version 1" in proc.stderr  # memo_edge's INFO lines show either way
        assert ("own debug line" in proc.stderr) == verbose
        assert "third-party debug line" not in proc.stderr and "STREAM" not in proc.stderr  # PIL's PNG chunks
        assert json.loads(proc.stdout)["input"] == str(image)


def test_resized_class_folder_images_are_counted_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = [png(tmp_path / f"{i}.png", (16, 16), seed=i) for i in range(3)]
    paths += [png(tmp_path / "wide.png", (40, 20)), png(tmp_path / "fits.png", (32, 32))]
    source = FolderSource(paths, np.zeros(len(paths), np.int64), image_size=32, resize_to=32)
    with caplog.at_level(logging.WARNING, logger="memo_edge.data.sources"):
        assert warn_resized(source, "new/") == 4
    (message,) = [r.getMessage() for r in caplog.records]
    assert "new/: 4 of 5 images are not 32x32" in message and "16x16 (3), 40x20 (1)" in message
    assert "shorter side to 32, centre crop 32x32" in message
    caplog.clear()
    assert warn_resized(source.subset(np.array([4])), "new/") == 0 and not caplog.records
    assert warn_resized(ArraySource(np.zeros((2, 16, 16, 3), np.uint8), np.zeros(2, np.int64)), "npz") == 0
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"bad\.png: cannot read image"):
        warn_resized(FolderSource([tmp_path / "bad.png"], np.zeros(1, np.int64), 32, 32), "new/")
