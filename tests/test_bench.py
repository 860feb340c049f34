"""memo-edge bench: one row per backend and batch size, each measured in its own process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from memo_edge.errors import InputError, MemoEdgeError
from memo_edge.export.exporter import package_model
from memo_edge.memory.exemplars import ExemplarSet
from memo_edge.model import MemoNet
from memo_edge.runtime.backends import BACKENDS
from memo_edge.runtime.bench import BenchRow, bench, format_bench, peak_rss_mb
from memo_edge.runtime.package import InputSpec

SPEC = InputSpec(32, 32, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny package: random ResNet-8 MEMO, one task of 4 classes."""
    torch.manual_seed(0)
    model = MemoNet("resnet8")
    model.expand(4)
    model.eval()
    rng = np.random.default_rng(0)
    labels = np.arange(4, dtype=np.int64)
    exemplars = ExemplarSet(rng.integers(0, 256, (4, *SPEC.shape), dtype=np.uint8), labels, np.zeros(4, np.int64))
    out = tmp_path_factory.mktemp("bench") / "pkg"
    package_model(out, model, exemplars, spec=SPEC, class_names=["a", "b", "c", "d"], augment="cifar",
                  total_budget_bytes=model.model_bytes() + exemplars.nbytes,
                  verify_images=rng.integers(0, 256, (4, *SPEC.shape), dtype=np.uint8))
    return out


def test_bench_has_a_row_per_backend_and_batch(package: Path) -> None:
    rows = bench(package, backends=("auto", "ort-cpu"), batches=(1, 3), iterations=4, warmup=1)
    assert [(r.batch) for r in rows] == [1, 3, 1, 3]
    assert all(isinstance(r, BenchRow) and r.backend in BACKENDS for r in rows)
    assert rows[2].backend == rows[3].backend == "ort-cpu"
    for r in rows:
        assert 0 < r.p50_ms <= r.p95_ms
        assert r.images_per_s > 0 and r.peak_rss_mb > 0
    text = format_bench(rows)
    assert text.splitlines()[0].split() == ["backend", "precision", "batch", "p50", "ms", "p95", "ms", "images/s", "peak", "RSS", "MiB"]
    assert len(text.splitlines()) == 2 + len(rows)


def test_peak_memory_is_the_workers_own(package: Path) -> None:
    ballast = np.ones(384 * 2**20 // 8)  # this process now peaks above 384 MiB; a forked worker must not inherit it
    assert peak_rss_mb() > 384
    (row,) = bench(package, backends=("ort-cpu",), batches=(2,), iterations=2, warmup=0)
    assert 0 < row.peak_rss_mb < 384
    del ballast


def test_bad_arguments_are_input_errors(package: Path) -> None:
    with pytest.raises(InputError, match="positive integers"):
        bench(package, batches=(0,))
    with pytest.raises(InputError, match="iterations"):
        bench(package, iterations=0)
    with pytest.raises(InputError, match="at least one backend"):
        bench(package, backends=())


def test_a_failing_backend_is_one_line_naming_it(package: Path) -> None:
    with pytest.raises(MemoEdgeError) as info:
        bench(package, backends=("nope",), batches=(1,), iterations=1)
    message = str(info.value)
    assert message.startswith("bench nope at batch 1 failed: unknown backend 'nope'") and "\n" not in message
