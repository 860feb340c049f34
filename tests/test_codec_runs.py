"""Exemplar codecs through the product: train, resume, export, the package's catalog, update, compare,
budget and info (small models, built-in digits, CPU)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from conftest import ORDER, invoke, ok, quick_run, write_npz
from memo_edge.memory import ExemplarSet
from memo_edge.runtime.package import open_package

QUICK = [*quick_run(2, batch_size=32, cosine=True, freeze_base=True), "--seed", "7"]
MEMORY_BYTES = 40_000  # 13 raw CIFAR-sized exemplars: under jpeg:75 the shares hold several times more


@pytest.fixture(scope="module")
def jpeg_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("codec")
    data = write_npz(root / "first4", list(ORDER[:4]))
    args = ["train", "--dataset", f"npz:{data}", "--scenario", "B0Inc2", "--no-shuffle", "--memory-bytes", MEMORY_BYTES,
            "--exemplar-codec", "jpeg:75", *QUICK]
    ok(*args, "--out", root / "run")
    return {"root": root, "run": root / "run", "args": args, "task3": write_npz(root / "task3", list(ORDER[4:6]))}


def test_a_codec_run_counts_encoded_bytes_and_stores_more(jpeg_run: dict[str, Path]) -> None:
    results = json.loads((jpeg_run["run"] / "results.json").read_text())
    assert results["memory"] == {"kind": "exemplar_bytes", "value": MEMORY_BYTES, "bytes_per_exemplar": 3072,
                                 "codec": "jpeg:75"}
    assert results["config"]["exemplar_codec"] == "jpeg:75"
    for task in results["tasks"]:
        seen = task["metrics"]["seen_classes"]
        assert task["codec"] == "jpeg:75" and task["class_bytes"] == MEMORY_BYTES // seen
        assert task["exemplar_bytes"] <= task["class_bytes"] * seen <= MEMORY_BYTES
        assert task["exemplars"] >= 3 * (MEMORY_BYTES // 3072)  # raw would hold 13
        exemplars = ExemplarSet.load(jpeg_run["run"] / f"task-{task['task']:02d}" / "exemplars.npz")
        assert exemplars.codec.spec == "jpeg:75" and exemplars.nbytes == task["exemplar_bytes"]
        for c in range(seen):
            assert exemplars.sizes[exemplars.labels == c].sum() <= task["class_bytes"]


def test_resume_honours_the_codec(jpeg_run: dict[str, Path], tmp_path: Path) -> None:
    cut = tmp_path / "cut"
    shutil.copytree(jpeg_run["run"], cut)
    shutil.rmtree(cut / "task-01")
    ok("train", "--resume", cut)
    full, resumed = (json.loads((d / "results.json").read_text()) for d in (jpeg_run["run"], cut))
    assert [t["exemplar_bytes"] for t in resumed["tasks"]] == [t["exemplar_bytes"] for t in full["tasks"]]
    assert ExemplarSet.load(cut / "task-01" / "exemplars.npz") == ExemplarSet.load(jpeg_run["run"] / "task-01" / "exemplars.npz")
    # A run whose recorded codec no longer matches its exemplars is refused, not continued in another codec.
    shutil.rmtree(cut / "task-01")
    header = json.loads((cut / "config.json").read_text())
    header["config"]["exemplar_codec"] = "png"
    (cut / "config.json").write_text(json.dumps(header))
    result = invoke("train", "--resume", cut)
    assert result.exit_code == 2 and "stored as jpeg:75, the run's codec is png" in result.output


@pytest.fixture(scope="module")
def jpeg_package(jpeg_run: dict[str, Path]) -> Path:
    pkg = jpeg_run["root"] / "pkg"
    results = json.loads((jpeg_run["run"] / "results.json").read_text())
    model = results["tasks"][-1]["model_bytes"]
    ok("export", jpeg_run["run"], "--out", pkg, "--total-budget", model * 2 + MEMORY_BYTES)
    return pkg


def test_the_package_stores_the_encoded_rows_and_the_trigger_counts_them(jpeg_run: dict[str, Path],
                                                                         jpeg_package: Path) -> None:
    version = open_package(jpeg_package)
    b = version.manifest.budget
    assert b.codec == "jpeg:75" and b.codec_header
    exemplars, _ = version.exemplars()
    assert exemplars == ExemplarSet.load(jpeg_run["run"] / "task-01" / "exemplars.npz")  # a round trip, bytes and all
    with sqlite3.connect(jpeg_package / "catalog.sqlite") as conn:
        stored = conn.execute("SELECT SUM(length(image)) FROM exemplars WHERE version = 1").fetchone()[0]
        assert stored == b.exemplar_bytes == exemplars.nbytes <= b.total_bytes - b.model_bytes
        room = b.total_bytes - b.model_bytes - stored
        with pytest.raises(sqlite3.IntegrityError, match="exemplar budget exceeded"):
            conn.execute("INSERT INTO exemplars VALUES (1, 99, 0, 0, ?)", (b"x" * (room + 1),))
    info = ok("info", jpeg_package).output
    assert f"stored {b.exemplars} exemplars ({b.exemplar_bytes:,} B" in info and "as jpeg:75" in info


def test_update_keeps_the_package_codec(jpeg_run: dict[str, Path], jpeg_package: Path, tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    shutil.copytree(jpeg_package, pkg)
    ok("update", pkg, "--data", f"npz:{jpeg_run['task3']}", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
       "--codec-mix", "0.5")
    version = open_package(pkg)
    b = version.manifest.budget
    exemplars, tasks = version.exemplars()
    assert version.manifest.version == 2 and b.codec == "jpeg:75" and exemplars.codec.spec == "jpeg:75"
    assert exemplars.nbytes == b.exemplar_bytes <= b.total_bytes - b.model_bytes
    assert set(exemplars.classes().tolist()) == set(range(6)) and 2 in set(tasks.tolist())
    assert version.manifest.source["update"]["codec"] == "jpeg:75"


def test_a_damaged_encoded_exemplar_is_refused_by_class_and_rank(jpeg_run: dict[str, Path], jpeg_package: Path,
                                                                 tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    shutil.copytree(jpeg_package, pkg)
    with sqlite3.connect(pkg / "catalog.sqlite") as conn:
        conn.execute("DROP TRIGGER exemplars_immutable")
        blob = conn.execute("SELECT image FROM exemplars WHERE version = 1 AND label = 3 AND rank = 1").fetchone()[0]
        conn.execute("UPDATE exemplars SET image = ? WHERE version = 1 AND label = 3 AND rank = 1", (blob[:30],))
    name = open_package(pkg).manifest.class_names[3]
    for args in (("info", pkg), ("update", pkg, "--data", f"npz:{jpeg_run['task3']}", "--epochs", "1", "--device", "cpu")):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert "damaged" in result.output and f"exemplar 1 of class {name!r} does not decode as jpeg:75" in result.output
    assert open_package(pkg).manifest.version == 1


def test_codec_mix_needs_a_lossy_codec(base: dict[str, Path], tmp_path: Path) -> None:
    result = invoke("train", "--exemplar-codec", "png", "--codec-mix", "0.5", "--out", tmp_path / "run", *QUICK)
    assert result.exit_code == 2 and "--codec-mix shows new images through a lossy exemplar codec" in result.output
    assert not (tmp_path / "run").exists()
    result = invoke("update", base["pkg"], "--data", f"npz:{base['task4']}", "--codec-mix", "0.5", "--device", "cpu")
    assert result.exit_code == 2 and "stores its exemplars as raw" in result.output, result.output


def test_a_raw_package_manifest_names_its_codec(base: dict[str, Path]) -> None:
    """Format 2 writes every budget field, raw's codec too (format 1 left it out: runtime/formats.py)."""
    with sqlite3.connect(base["pkg"] / "catalog.sqlite") as conn:
        manifest = json.loads(conn.execute("SELECT manifest FROM versions WHERE version = 1").fetchone()[0])
    assert set(manifest["budget"]) == {"total_bytes", "model_bytes", "exemplar_bytes", "bytes_per_exemplar",
                                       "exemplars", "per_class", "codec", "codec_header"}
    assert manifest["budget"]["codec"] == "raw"
    assert open_package(base["pkg"]).manifest.budget.codec == "raw"


@pytest.mark.slow
def test_compare_takes_codecs_as_a_dimension(tmp_path: Path) -> None:
    data = write_npz(tmp_path / "data", list(ORDER[:4]))
    out = tmp_path / "cmp"
    result = ok("compare", "--dataset", f"npz:{data}", "--scenario", "B0Inc2", "--no-shuffle", "--methods", "replay",
                "--exemplar-codec", "raw,jpeg:50", "--memory", "0.4", "--out", out,
                *[a for a in QUICK if a != "--freeze-base"])
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [(r["method"], r["codec"]) for r in rows] == [("replay", "raw"), ("replay", "jpeg:50")]
    assert (out / "replay").is_dir() and (out / "replay-jpeg50").is_dir()
    raw, jpeg = rows
    assert raw["budget_bytes"] == jpeg["budget_bytes"] and raw["memory"] == jpeg["memory"]
    assert jpeg["exemplar_bytes"] <= raw["memory"] * 3072 and jpeg["exemplars"] > 3 * raw["exemplars"] / 2
    assert "| replay | jpeg:50 |" in result.output
    bad = invoke("compare", "--dataset", f"npz:{data}", "--exemplar-codec", "raw,gif", "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "unknown exemplar codec 'gif'" in bad.output


def test_budget_counts_exemplars_under_a_codec() -> None:
    measured = json.loads(ok("budget", "--exemplar-codec", "jpeg:75", "--codec-data", "digits", "--json").output)
    stated = json.loads(ok("budget", "--exemplar-codec", "jpeg:75", "--codec-bytes", "512", "--json").output)
    assert measured["codec"]["source"].startswith("measured on") and 0 < measured["codec"]["mean_bytes"] < 3072
    assert stated["codec"] == {"codec": "jpeg:75", "raw_bytes": 3072, "mean_bytes": 512,
                               "source": "stated (--codec-bytes 512)"}
    row = stated["aligned"][1]  # B0Inc10: the same bytes at 512 B per exemplar
    assert row["memo_codec_exemplars"] == (row["der_total_bytes"] - 4 * (112_016 + 10 * 351_488)) // 512
    assert row["memo_codec_exemplars"] >= 6 * row["memo_exemplars"]
    text = ok("budget", "--exemplar-codec", "jpeg:75", "--codec-bytes", "512").output
    assert "<- as jpeg:75" in text and "stated (--codec-bytes 512)" in text
    for args, message in ((["--exemplar-codec", "jpeg:75"], "give --codec-data"),
                          (["--exemplar-codec", "zip"], "unknown exemplar codec"),
                          (["--codec-bytes", "100"], "size an --exemplar-codec other than raw")):
        result = invoke("budget", *args)
        assert result.exit_code == 2 and message in result.output, result.output
    assert np.isfinite(measured["codec"]["mean_bytes"])


def test_curve_draws_one_line_per_method_and_codec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from memo_edge.experiments import compare as experiments
    from memo_edge.train.config import TrainConfig

    def fake_compare(config: TrainConfig, methods: list[str], budget: str, out: Path, **_: object) -> list:
        return [experiments.CompareRow(methods[0], config.backbone, int(float(budget) * 2**20), 1, 10, 10 * (i + 1),
                                       50.0 + i, 40.0 + i + float(budget), [50.0], codec, 1000, 0.1)
                for i, codec in enumerate(experiments.codec_specs(config.exemplar_codec))]

    monkeypatch.setattr(experiments, "compare", fake_compare)
    base = TrainConfig(out=str(tmp_path), dataset="digits", scenario="B0Inc5", exemplar_codec="raw,jpeg:75")
    report = experiments.curve(base, ["replay"], [1.5, 3.0], tmp_path / "curve")
    assert set(report["points"]) == {"replay", "replay jpeg:75"}
    assert [p["last_accuracy"] for p in report["points"]["replay jpeg:75"]] == [42.5, 44.0]
    assert report["auc"]["replay jpeg:75"]["auc_l"] > report["auc"]["replay"]["auc_l"]
    assert "| replay jpeg:75 |" in (tmp_path / "curve" / "curve.md").read_text()
