"""int8 full graph (export --int8): checked at export, used by ort-cpu, re-made by every update."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import invoke, ok
from memo_edge.data.datasets import load_dataset
from memo_edge.errors import InputError
from memo_edge.export.quantize import calibration_images
from memo_edge.runtime import load, open_package
from memo_edge.runtime.backends import OrtCpuBackend
from memo_edge.runtime.package import INT8_ROLE

CLASSES = 8  # the run learns 8 of the 10 digits; the device update brings the last 2


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "run"
    ok("train", "--dataset", "digits", "--classes", CLASSES, "--scenario", "B0Inc4", "--backbone", "resnet8",
       "--init-epochs", "6", "--epochs", "4", "--batch-size", "32", "--schedule", "cosine", "--memory", "200",
       "--device", "cpu", "--out", out)
    return out


@pytest.fixture(scope="module")
def package(run: Path) -> Path:
    ok("export", run, "--out", run.parent / "pkg", "--int8")
    return run.parent / "pkg"


def _seen_test_images(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """digits test images of the package's classes, labelled in the package's order."""
    test = load_dataset("digits").test
    ids = [int(n) for n in names]
    keep = np.flatnonzero(np.isin(test.labels, ids))
    return test.take(keep), np.array([ids.index(int(c)) for c in test.labels[keep]])


def test_int8_graph_is_quantized_checked_and_close_to_float(package: Path) -> None:
    pkg = open_package(package)
    entry = pkg.manifest.file(INT8_ROLE)
    assert entry is not None and entry.size < pkg.manifest.file("full").size
    graph = onnx.load(str(pkg.path(entry)))
    ops = {node.op_type for node in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert any(init.data_type == onnx.TensorProto.INT8 for init in graph.graph.initializer)

    check = pkg.manifest.verification["graphs"][INT8_ROLE]
    assert check["top1_agreement"] >= pkg.manifest.verification["min_int8_agreement"]

    images, labels = _seen_test_images(pkg.manifest.class_names)
    fp32, int8 = OrtCpuBackend(pkg, precision="fp32"), OrtCpuBackend(pkg)
    assert (fp32.precision, int8.precision) == ("fp32", "int8")  # auto takes int8 when the package has it
    a, b = fp32.logits(images).argmax(1), int8.logits(images).argmax(1)
    accuracy_fp32, accuracy_int8 = 100 * np.mean(a == labels), 100 * np.mean(b == labels)
    print(f"digits, {len(labels)} test images: fp32 {accuracy_fp32:.1f}%, int8 {accuracy_int8:.1f}%, "
          f"agreement {100 * np.mean(a == b):.1f}%")
    assert np.mean(a == b) >= 0.95
    assert abs(accuracy_int8 - accuracy_fp32) <= 3.0


def test_calibration_images_cover_every_class() -> None:
    labels = np.repeat(np.arange(5), [1, 50, 50, 50, 3])
    images = np.arange(len(labels)).reshape(-1, 1)
    picked = calibration_images(images, labels, count=10)
    assert len(picked) == 10 and set(labels[picked[:, 0]]) == {0, 1, 2, 3, 4}


@pytest.fixture(scope="module")
def new_classes(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two digits the package has not seen, as an npz dataset for `update`."""
    new = [c for c in range(10) if str(c) not in open_package(package).manifest.class_names]
    digits = load_dataset("digits")
    root = tmp_path_factory.mktemp("new")
    for split, source in (("train", digits.train), ("test", digits.test)):
        keep = np.flatnonzero(np.isin(source.labels, new))
        np.savez(root / f"{split}-00.npz", x=source.take(keep), y=np.array([new.index(int(c)) for c in source.labels[keep]]))
    (root / "meta.json").write_text(json.dumps({"class_names": [str(c) for c in new]}))
    return root


UPDATE = ["--epochs", "2", "--batch-size", "32", "--device", "cpu"]


def test_update_remakes_the_int8_graph(package: Path, new_classes: Path, tmp_path: Path) -> None:
    import shutil

    pkg = shutil.copytree(package, tmp_path / "pkg")
    before = open_package(pkg).manifest.file(INT8_ROLE)
    result = ok("update", pkg, "--data", f"npz:{new_classes}", *UPDATE)
    assert "int8 full graph re-made" in result.output
    version = open_package(pkg)
    after = version.manifest.file(INT8_ROLE)
    assert after is not None and after.sha256 != before.sha256
    assert version.manifest.verification["graphs"][INT8_ROLE]["top1_agreement"] >= 0.95
    rt = load(pkg, backend="ort-cpu")
    assert rt.backend.precision == "int8"
    images, labels = _seen_test_images(version.manifest.class_names)
    assert rt.predict(images)[1].shape == (len(images), 10)


def test_update_can_drop_the_int8_graph(package: Path, new_classes: Path, tmp_path: Path) -> None:
    import shutil

    pkg = shutil.copytree(package, tmp_path / "pkg")
    ok("update", pkg, "--data", f"npz:{new_classes}", "--no-int8", *UPDATE)
    version = open_package(pkg)
    assert version.manifest.file(INT8_ROLE) is None and INT8_ROLE not in version.manifest.verification["graphs"]
    assert load(pkg, backend="ort-cpu").backend.precision == "fp32"
    assert open_package(pkg, version=1).manifest.file(INT8_ROLE) is not None  # the previous version keeps it


def test_int8_needs_an_int8_graph_and_the_full_graph(run: Path, tmp_path: Path) -> None:
    ok("export", run, "--out", tmp_path / "plain")
    result = invoke("predict", tmp_path / "plain", tmp_path, "--precision", "int8", "--backend", "ort-cpu")
    assert result.exit_code == 2 and "--int8" in result.output and "Traceback" not in result.output
    with pytest.raises(InputError, match="full graph"):
        OrtCpuBackend(open_package(tmp_path / "plain"), precision="int8", use_full=False)
    result = invoke("export", run, "--out", tmp_path / "nofull", "--int8", "--no-full")
    assert result.exit_code == 2 and "--no-full" in result.output and not (tmp_path / "nofull").exists()


def test_int8_below_the_agreement_bar_fails_the_export(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import memo_edge.export.verify as verify

    monkeypatch.setattr(verify, "MIN_INT8_AGREEMENT", 1.01)  # no graph can agree on more than all images
    result = invoke("export", run, "--out", tmp_path / "pkg", "--int8")
    assert result.exit_code == 1 and "full-int8: top-1 agreement" in result.output
    assert not (tmp_path / "pkg").exists()


# ---------------------------------------------------------------------------------------------
# How the int8 graph is made: the shortcut rewrite and the quantization options


def _resnet8_full_graph(tasks: int = 2) -> bytes:
    import torch

    from memo_edge.export.graphs import full_graph
    from memo_edge.model import MemoNet

    torch.manual_seed(0)
    model = MemoNet("resnet8")
    for _ in range(tasks):
        model.expand(3)
    return full_graph(model.eval(), (0.5, 0.4, 0.3), (0.25, 0.2, 0.3), (32, 32, 3)).data


def _logits(data: bytes, images: np.ndarray, *, optimize: bool = True) -> np.ndarray:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if not optimize:  # the graph's own arithmetic, not ONNX Runtime's fusions of it
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": images})[0]


def test_option_a_shortcuts_become_exact_1x1_convolutions() -> None:
    from memo_edge.export.quantize import shortcuts_as_convs

    data = _resnet8_full_graph()
    model = onnx.load_from_string(data)
    before_ops = [n.op_type for n in model.graph.node]
    # resnet8: one downsampling block in the trunk's last stage and one per branch (2 tasks)
    assert shortcuts_as_convs(model) == 3
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == before_ops.count("Conv") + 3 and ops.count("Concat") == before_ops.count("Concat") - 3
    assert not {"ConstantOfShape", "Slice", "Shape"} & set(ops)  # the branches' features keep their Concat
    onnx.checker.check_model(model)
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    before, after = _logits(data, images, optimize=False), _logits(model.SerializeToString(), images, optimize=False)
    assert np.array_equal(before, after)  # x * 1 + 0 * the rest: the same floats
    assert shortcuts_as_convs(model) == 0  # nothing left to rewrite


def test_int8_options_are_checked() -> None:
    from memo_edge.export.quantize import Int8Options

    with pytest.raises(InputError, match="choose from qdq, qoperator"):
        Int8Options(format="qint")
    with pytest.raises(InputError, match="choose from minmax, entropy, percentile"):
        Int8Options(calibration="kl")


@pytest.mark.parametrize("options", [
    {},  # export's default
    {"shortcut_conv": False},
    {"format": "qoperator"},
    {"per_channel": False},
    {"reduce_range": False},  # full range: saturates on x86 CPUs without VNNI
    {"calibration": "percentile"},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_every_int8_option_agrees_with_float(options: dict) -> None:
    from memo_edge.export.quantize import DEFAULT_INT8, Int8Options, quantize_full

    data = _resnet8_full_graph()
    rng = np.random.default_rng(0)
    calibration, images = (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for n in (64, 48))
    chosen = Int8Options(**options)
    int8 = quantize_full(data, calibration, options=chosen)
    graph = onnx.load_from_string(int8).graph
    ops = {n.op_type for n in graph.node}
    assert ("QLinearConv" in ops) == (chosen.format == "qoperator") and ("ConstantOfShape" in ops) != chosen.shortcut_conv
    assert chosen.describe() in onnx.load_from_string(int8).doc_string
    reference, quantized = _logits(data, images), _logits(int8, images)
    scale = np.abs(reference).max()
    assert np.abs(quantized - reference).max() <= 0.1 * scale  # random weights: closeness, not accuracy
    assert np.mean(reference.argmax(1) == quantized.argmax(1)) >= 0.8
    if options == {}:
        assert chosen == DEFAULT_INT8


def test_the_default_int8_graph_runs_without_layout_transposes(tmp_path: Path) -> None:
    """The point of the shortcut rewrite: ONNX Runtime keeps the int8 convolutions channels-last end to end."""
    import onnxruntime

    from memo_edge.export.quantize import Int8Options, quantize_full

    data = _resnet8_full_graph()
    calibration = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    transposes = {}
    for rewrite in (False, True):
        options = onnxruntime.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"optimized-{rewrite}.onnx")
        options.log_severity_level = 3
        onnxruntime.InferenceSession(quantize_full(data, calibration, options=Int8Options(shortcut_conv=rewrite)),
                                     sess_options=options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
        transposes[rewrite] = sum(n.op_type == "Transpose" for n in graph.node)
    # left: one in front of each branch's global average pool (and the image's)
    assert transposes[True] < transposes[False]
